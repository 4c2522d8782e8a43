"""One OpenAPI document for the whole public API: the gateway's routes plus every proxied
route of the services behind it, fetched from them and cached."""

import asyncio
import copy
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fastapi_offline
import httpx
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from loguru import logger

from gateway.proxy.access import required_scope
from gateway.upstreams import Upstream
from servicekit import PROBLEM_MEDIA_TYPE

Document = dict[str, Any]

FETCH_TIMEOUT = 2.0
# A complete document is refreshed now and then to pick up redeployed services; an
# incomplete one (a service was unreachable) as soon as someone asks again after a pause.
COMPLETE_TTL = 300.0
INCOMPLETE_TTL = 2.0
# Swagger UI's files ship in fastapi-offline's wheel; the gateway serves them itself.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs/assets"

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_GATEWAY_ERRORS = {
    "502": "The service behind the gateway cannot be reached",
    "504": "The service behind the gateway did not answer in time",
}


# With access control on: a key as a bearer token (what the openai SDK sends) or in X-API-Key.
SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `python -m gateway.keys new`, as "
        "`Authorization: Bearer <key>`. Each operation names the scope its key needs.",
    },
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
_ACCESS_ERRORS = {
    "401": "No API key, or one that is not valid (`WWW-Authenticate: Bearer`)",
    "403": "The API key lacks this operation's scope",
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}


def _rewrite_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            key: renames.get(value, value)
            if key == "$ref" and isinstance(value, str)
            else _rewrite_refs(value, renames)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item, renames) for item in node]
    return node


def merge_documents(
    gateway: Document, downstream: Mapping[str, tuple[Upstream, Document]], secured: bool = False
) -> Document:
    """The gateway's document plus each service's routes under its prefix.

    Components with the same name and content are shared; a name that two services use for
    different things is prefixed with the service's name in that service's part. Each
    service's own health routes stay internal. `secured`: every proxied operation needs an
    API key with its scope (the gateway's own routes stay public).
    """
    merged = copy.deepcopy(gateway)
    paths: dict[str, Any] = merged.setdefault("paths", {})
    components: dict[str, dict[str, Any]] = merged.setdefault("components", {})
    tags: list[dict[str, Any]] = merged.setdefault("tags", [])
    for name, (upstream, document) in downstream.items():
        renames: dict[str, str] = {}
        for section, entries in document.get("components", {}).items():
            existing = components.get(section, {})
            for key, value in entries.items():
                if key in existing and existing[key] != value:
                    renames[f"#/components/{section}/{key}"] = (
                        f"#/components/{section}/{name.capitalize()}{key}"
                    )
        document = _rewrite_refs(document, renames)
        for section, entries in document.get("components", {}).items():
            target = components.setdefault(section, {})
            for key, value in entries.items():
                new_ref = renames.get(f"#/components/{section}/{key}")
                target[new_ref.rsplit("/", 1)[1] if new_ref else key] = value
        for path, item in document.get("paths", {}).items():
            if path in paths or not upstream.matches(path):
                continue
            paths[path] = _with_gateway_errors(item, upstream, secured)
        known = {tag["name"] for tag in tags}
        tags.extend(tag for tag in document.get("tags", []) if tag["name"] not in known)
    if not tags:
        del merged["tags"]
    if secured:
        components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEMES))
    _drop_unused_schemas(merged)
    return merged


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _drop_unused_schemas(document: Document) -> None:
    """Schemas only the services' internal routes used (their health checks) go."""
    components: dict[str, Any] = document.get("components", {})
    schemas: dict[str, Any] = components.get("schemas", {})
    prefix = "#/components/schemas/"
    used: set[str] = set()
    # Everything but the schemas themselves may refer to one: paths, other components.
    pending = list(_refs({**document, "components": {**components, "schemas": {}}}))
    while pending:
        ref = pending.pop()
        if ref.startswith(prefix) and ref not in used:
            used.add(ref)
            pending.extend(_refs(schemas.get(ref.removeprefix(prefix))))
    for name in [name for name in schemas if prefix + name not in used]:
        del schemas[name]


def _with_gateway_errors(item: dict[str, Any], upstream: Upstream, secured: bool) -> dict[str, Any]:
    """Proxied operations can also fail at the gateway; document how (and, `secured`, the
    key and scope they need)."""
    item = copy.deepcopy(item)
    for method, operation in item.items():
        if method not in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}:
            continue
        responses = operation.setdefault("responses", {})
        extra = dict(_GATEWAY_ERRORS)
        if "requestBody" in operation:
            limit = "LLM_MAX_BODY_BYTES" if upstream.name == "llm" else "MAX_BODY_BYTES"
            extra["413"] = f"The request body exceeds {limit}"
        if upstream.rate_limited:
            extra["429"] = "Over RATE_LIMIT_LLM_PER_MINUTE for this client; see Retry-After"
        if secured:
            scope = required_scope(upstream.name, method.upper())
            operation["security"] = [{"ApiKey": [scope.value]}, {"ApiKeyHeader": [scope.value]}]
            extra |= _ACCESS_ERRORS
            extra["429"] = (
                "Over a limit of the key (see RateLimit-*) or of this client; see Retry-After"
            )
        for status, description in extra.items():
            responses.setdefault(status, _problem(description))
    return item


class OpenAPICache:
    """The merged document, rebuilt when stale; concurrent readers share one rebuild."""

    def __init__(
        self,
        gateway_document: Callable[[], Document],
        upstreams: Mapping[str, Upstream],
        complete_ttl: float = COMPLETE_TTL,
        incomplete_ttl: float = INCOMPLETE_TTL,
        *,
        secured: bool = False,
    ) -> None:
        self._gateway_document = gateway_document
        self._upstreams = upstreams
        self._secured = secured
        self._ttl = {True: complete_ttl, False: incomplete_ttl}
        self._document: Document | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> Document:
        if self._document is not None and time.monotonic() < self._expires:
            return self._document
        async with self._lock:
            if self._document is None or time.monotonic() >= self._expires:
                await self._rebuild()
        assert self._document is not None
        return self._document

    async def _rebuild(self) -> None:
        names = list(self._upstreams)
        fetched = await asyncio.gather(*(self._fetch(self._upstreams[name]) for name in names))
        downstream = {
            name: (self._upstreams[name], document)
            for name, document in zip(names, fetched, strict=True)
            if document is not None
        }
        self._document = merge_documents(self._gateway_document(), downstream, self._secured)
        self._expires = time.monotonic() + self._ttl[len(downstream) == len(names)]

    @staticmethod
    async def _fetch(upstream: Upstream) -> Document | None:
        try:
            response = await upstream.client.get("/openapi.json", timeout=FETCH_TIMEOUT)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning(
                "service OpenAPI document unavailable",
                upstream=upstream.name,
                error=type(exc).__name__,
            )
            return None
        return document if isinstance(document, dict) else None


def docs_router(title: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi_document(request: Request) -> JSONResponse:
        cache: OpenAPICache = request.state.openapi
        return JSONResponse(await cache.get())

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )

    return router


def docs_assets() -> StaticFiles:
    return StaticFiles(directory=DOCS_ASSETS)
