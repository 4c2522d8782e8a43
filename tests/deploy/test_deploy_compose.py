"""docker-compose.yml against the Compose Specification schema, its gates, and the env contract."""

import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import TypeAdapter

from tests.deploy.deploy_support import (
    REPO,
    SERVICES,
    parse_dockerfile,
    settings_env_names,
    settings_fields,
)

# Every variable of the platform's documented configuration (README.md, Configuration).
DOCUMENTED_VARIABLES = {
    "GATEWAY_PORT",
    "AUDITS_PORT",
    "LLM_PORT",
    "AUDITS_SERVICE_URL",
    "LLM_SERVICE_URL",
    "DATABASE_URL",
    "DB_POOL_SIZE",
    "DB_MAX_OVERFLOW",
    "DB_POOL_TIMEOUT",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "OPENAI_ALLOWED_MODELS",
    "OPENAI_MAX_TOKENS",
    "OPENAI_MAX_N",
    "OPENAI_TIMEOUT",
    "OPENAI_MAX_RETRIES",
    "OPENAI_RETRY_MAX_TIME",
    "OPENAI_VALIDATE_ON_STARTUP",
    "AUDITS_TIMEOUT",
    "LLM_TIMEOUT",
    "MAX_BODY_BYTES",
    "LLM_MAX_BODY_BYTES",
    "RATE_LIMIT_LLM_PER_MINUTE",
    "TRUSTED_PROXIES",
    "REDIS_URL",
    "IDEMPOTENCY_TTL",
    "LOG_LEVEL",
}
# Read by compose itself (interpolation) or by `make run`, not by a service.
DEPLOYMENT_VARIABLES = {
    "GATEWAY_PORT",
    "AUDITS_PORT",
    "LLM_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "AUDITS_DB_USER",
    "AUDITS_DB_PASSWORD",
    "IMAGE_TAG",
    "GATEWAY_BIND_ADDRESS",
    "API_KEYS_DIR",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
}
# Read by the OpenTelemetry SDK in every service, not by their settings.
SDK_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
}
APP_SERVICES = {"gateway": "gateway", "audits": "audits-service", "llm": "llm-service"}
_ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def env_example() -> dict[str, str | None]:
    """Variable -> default, None for the ones documented but unset by default."""
    lines = (REPO / ".env.example").read_text().splitlines()
    variables: dict[str, str | None] = {}
    for number, line in enumerate(lines):
        if match := _ASSIGNMENT.match(line):
            commented, name, value = match.groups()
            previous = lines[number - 1]
            assert previous.startswith("#"), f"{name} has no comment"
            assert not _ASSIGNMENT.match(previous), f"{name} has no comment of its own"
            assert name not in variables, f"{name} listed twice"
            variables[name] = None if commented else value
    return variables


def compose_schema() -> dict[str, Any]:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    schema = json.loads(text)
    assert isinstance(schema, dict)
    return schema


def test_validates_against_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_schema_is_strict_enough_to_catch_typos(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["depends_on"]["audits"]["conditon"] = "service_healthy"
    assert not jsonschema.Draft202012Validator(compose_schema()).is_valid(broken)


def test_only_the_gateway_publishes_a_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    product = {name for name, service in services.items() if "profiles" not in service}
    assert product == {"postgres", "migrations", "audits-role", "audits", "llm", "gateway"}
    publishing = {name for name in product if services[name].get("ports")}
    assert publishing == {"gateway"}
    assert services["gateway"]["ports"] == [
        "${GATEWAY_BIND_ADDRESS:-0.0.0.0}:${GATEWAY_PORT:-8000}:8000"
    ]
    # The observability profile's tools publish on this machine only.
    for name in set(services) - product:
        assert services[name]["profiles"] == ["observability"]
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    for service in services.values():
        assert "network_mode" not in service


def test_database_and_internal_services_stay_off_the_public_network(
    compose: dict[str, Any],
) -> None:
    services, networks = compose["services"], compose["networks"]
    assert networks["data"]["internal"] is True
    assert networks["services"]["internal"] is True
    assert set(services["postgres"]["networks"]) == {"data"}
    assert set(services["migrations"]["networks"]) == {"data"}
    assert set(services["audits-role"]["networks"]) == {"data"}
    assert set(services["audits"]["networks"]) == {"data", "services"}
    # The gateway and llm share no network with PostgreSQL.
    for name in ("gateway", "llm"):
        assert "data" not in services[name]["networks"]
    assert "egress" in services["gateway"]["networks"]


def test_postgres_is_official_pinned_persistent_and_checked(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+(-alpine)?", postgres["image"])
    (volume,) = postgres["volumes"]
    name, _, mount = volume.partition(":")
    assert name in compose["volumes"]
    assert mount == "/var/lib/postgresql"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_start_order_gates(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def gates(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert gates("migrations") == {"postgres": "service_healthy"}
    assert gates("audits-role") == {"migrations": "service_completed_successfully"}
    assert gates("audits") == {
        "postgres": "service_healthy",
        "audits-role": "service_completed_successfully",
    }
    assert gates("gateway") == {"audits": "service_healthy", "llm": "service_healthy"}
    assert "depends_on" not in services["llm"]
    assert services["migrations"]["restart"] == "no"
    assert services["audits-role"]["restart"] == "no"


def test_migrations_run_once_from_the_audits_image(compose: dict[str, Any]) -> None:
    migrations = compose["services"]["migrations"]
    audits = compose["services"]["audits"]
    assert migrations["image"] == audits["image"]
    assert migrations["build"] == audits["build"]
    assert migrations["command"] == ["alembic", "-c", "migrations/alembic.ini", "upgrade", "head"]
    role = compose["services"]["audits-role"]
    assert role["image"] == audits["image"]
    assert role["command"] == ["python", "-m", "audits_service.roles"]
    # The owner migrates and creates the login role; the service logs in as that role.
    assert migrations["environment"]["DATABASE_URL"] == role["environment"]["DATABASE_URL"]
    login = role["environment"]["AUDITS_DB_USER"]
    assert audits["environment"]["DATABASE_URL"].startswith(f"postgresql+asyncpg://{login}:")


def test_each_app_service_builds_its_own_dockerfile_and_reads_env_file(
    compose: dict[str, Any],
) -> None:
    for name, directory in APP_SERVICES.items():
        service = compose["services"][name]
        assert service["build"] == {"context": ".", "dockerfile": f"{directory}/Dockerfile"}
        assert (REPO / directory / "Dockerfile").exists()
        assert service["env_file"] == [{"path": ".env", "required": False}]
        # The image's own HEALTHCHECK is what the gates wait for.
        assert "healthcheck" not in service
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
    assert "OPENAI_API_KEY" not in compose["services"]["llm"].get("environment", {})


def test_env_example_lists_every_documented_variable(env_example: dict[str, str | None]) -> None:
    assert not DOCUMENTED_VARIABLES - set(env_example)
    assert env_example["OPENAI_API_KEY"] is None, "the key is optional and unset by default"
    assert env_example["LOG_LEVEL"] == "INFO"
    assert env_example["OPENAI_MODEL"] == "gpt-4o-mini"
    assert env_example["MAX_BODY_BYTES"] == "1048576"
    assert env_example["LLM_MAX_BODY_BYTES"] == str(20 * 1024 * 1024)


def test_compose_interpolations_are_documented(env_example: dict[str, str | None]) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert interpolated
    assert not interpolated - set(env_example)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_variable_a_service_reads_is_documented_or_wired(
    name: str, compose: dict[str, Any], env_example: dict[str, str | None]
) -> None:
    directory = APP_SERVICES[name]
    read = settings_env_names(SERVICES[directory])
    image_env = parse_dockerfile(REPO / directory / "Dockerfile").final.env()
    wired = set(compose["services"][name].get("environment", {})) | set(image_env)
    undocumented = read - set(env_example) - wired
    assert not undocumented, f"add to .env.example: {sorted(undocumented)}"
    # And what compose and the image set is something the service reads.
    assert set(compose["services"][name].get("environment", {})) <= read
    app_env = {k for k in image_env if not k.startswith(("UVICORN_", "PYTHON")) and k != "PATH"}
    assert app_env <= read


def test_env_example_documents_nothing_stale(env_example: dict[str, str | None]) -> None:
    read: set[str] = set()
    for package in SERVICES.values():
        read |= settings_env_names(package)
    stale = set(env_example) - read - DEPLOYMENT_VARIABLES - DOCUMENTED_VARIABLES - SDK_VARIABLES
    assert not stale, f"no service reads {sorted(stale)}"


@pytest.mark.parametrize("package", SERVICES.values())
def test_env_example_shows_the_real_defaults(
    package: str, env_example: dict[str, str | None]
) -> None:
    fields = settings_fields(package)
    for name, info in fields.items():
        documented = env_example.get(name)
        if documented is None or info.is_required():
            continue
        assert info.annotation is not None
        parsed = TypeAdapter(info.annotation).validate_strings(documented)
        assert parsed == info.get_default(call_default_factory=True), name
