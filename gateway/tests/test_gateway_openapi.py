import json
import re
from typing import Any

import httpx
from fastapi import FastAPI
from gateway_harness import Recorder, running_gateway
from openapi_spec_validator import validate
from pydantic import BaseModel

from gateway.config import Settings
from gateway.openapi import OpenAPICache
from gateway.upstreams import build_upstreams
from servicekit import problem_responses


def service_document(prefix: str, field: str) -> dict[str, Any]:
    """A service's document, with an `Item` schema whose shape differs per service."""
    model = type("Item", (BaseModel,), {"__annotations__": {field: str}})
    health_model = type("ServiceHealth", (BaseModel,), {"__annotations__": {"status": str}})
    app = FastAPI(title=prefix)

    @app.get("/health", summary="Liveness", response_model=health_model)
    async def health() -> Any:
        return {"status": "ok"}

    @app.post(
        f"/api/v1/{prefix}",
        summary="Create",
        response_model=model,
        responses=problem_responses(422),
    )
    async def create(item: model) -> Any:  # type: ignore[valid-type]
        return item

    @app.get(
        f"/api/v1/{prefix}/{{item_id}}",
        summary="Read",
        response_model=model,
        responses=problem_responses(404),
    )
    async def read(item_id: str) -> Any:
        return {field: item_id}

    @app.get("/api/v1/elsewhere", summary="Outside this service's prefix", response_model=model)
    async def elsewhere() -> Any:
        return {field: "x"}

    return app.openapi()


def serving(document: dict[str, Any]) -> Recorder:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/openapi.json":
            return httpx.Response(200, json=document)
        return httpx.Response(404)

    return Recorder(handler)


def down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


async def test_merged_document_covers_the_whole_public_api_and_is_valid() -> None:
    audits = serving(service_document("audits", "name"))
    llm = serving(service_document("openai", "prompt"))
    async with running_gateway(audits, llm) as gateway:
        document = (await gateway.get("/openapi.json")).json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for path in ("/", "/health", "/health/ready", "/health/db"):
        assert path in paths, path
    for path in ("/api/v1/audits", "/api/v1/audits/{item_id}", "/api/v1/openai"):
        assert path in paths, path
    assert "/api/v1/elsewhere" not in paths
    assert "/docs" not in paths
    assert "/openapi.json" not in paths
    # The services' own /health stays internal; the gateway's is documented.
    assert paths["/health"]["get"]["summary"].startswith("Liveness: the gateway")
    schemas = document["components"]["schemas"]
    assert set(schemas["Item"]["properties"]) == {"name"}
    assert set(schemas["LlmItem"]["properties"]) == {"prompt"}
    create_llm = paths["/api/v1/openai"]["post"]
    body_ref = create_llm["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/LlmItem"
    assert {"413", "429", "502", "504"} <= set(create_llm["responses"])
    assert "429" not in paths["/api/v1/audits"]["post"]["responses"]
    # Used only by the services' internal /health: not part of the public API.
    assert not {"ServiceHealth", "LlmServiceHealth"} & set(schemas)
    text = json.dumps(paths) + json.dumps(schemas)
    for name in schemas:
        assert f'"#/components/schemas/{name}"' in text, f"{name} is not used"


async def test_services_down_leave_the_gateway_routes_and_are_picked_up_later() -> None:
    async with running_gateway(Recorder(down), Recorder(down)) as gateway:
        alone = (await gateway.get("/openapi.json")).json()
    validate(alone)
    assert "/health/ready" in alone["paths"]
    assert not any(path.startswith("/api/v1/") for path in alone["paths"])

    audits = Recorder(down)
    upstreams = build_upstreams(Settings(), {"audits": audits, "llm": Recorder(down)})
    cache = OpenAPICache(lambda: alone, upstreams, incomplete_ttl=0)
    assert "/api/v1/audits" not in (await cache.get())["paths"]
    audits.handler = serving(service_document("audits", "name")).handler
    merged = await cache.get()
    validate(merged)
    assert "/api/v1/audits" in merged["paths"]
    fetches = len(audits.requests)
    await cache.get()
    assert len(audits.requests) == fetches + 1  # llm is still down: keep trying


async def test_docs_page_and_its_assets_are_served_locally() -> None:
    async with running_gateway(Recorder(down), Recorder(down)) as gateway:
        page = await gateway.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        urls += re.findall(r"""url: ?['"]([^'"]+)['"]""", page.text)
        assert urls
        assert not [url for url in urls if "://" in url or url.startswith("//")], urls
        assert "/openapi.json" in urls
        for url in urls:
            response = await gateway.get(url)
            assert response.status_code == 200, url
            assert len(response.content) > 0
