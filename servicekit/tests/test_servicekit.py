import functools
import json
import operator
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from loguru import logger
from pydantic import BaseModel

from servicekit import (
    ReadinessCheck,
    ServiceError,
    ServiceSettings,
    current_client_id,
    health_router,
    install_servicekit,
)
from servicekit.context import new_request_id
from servicekit.jsonbody import strict_loads
from testkit.checks import assert_problem


class Thing(BaseModel):
    name: str


things_router = APIRouter()


@things_router.get("/things")
async def list_things() -> list[Thing]:
    return [Thing(name="a")]


@things_router.post("/things")
async def add_thing(thing: Thing) -> Thing:
    return thing


class Gone(ServiceError):
    status, code, title = 410, "gone", "Gone for good"


def make_app(ready: bool = True) -> FastAPI:
    app = FastAPI()
    app.include_router(things_router, prefix="/api")
    install_servicekit(app, service="kit", settings=ServiceSettings())

    async def probe(_: Request) -> ReadinessCheck:
        return ReadinessCheck(ready=ready, detail=None if ready else "nope", code="not_ready")

    app.include_router(health_router("kit", probe))

    @app.post("/things")
    async def create(thing: Thing) -> Thing:
        return thing

    @app.get("/gone")
    async def gone() -> None:
        raise Gone("It left.", headers={"X-Why": "because"})

    @app.get("/echoes-request-id")
    async def echoes_request_id() -> Response:
        return Response(headers={"X-Request-ID": "upstream-echo"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as c:
        yield c


async def test_valid_request_id_is_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "abc.DEF:1-2_3"})
    assert response.headers["x-request-id"] == "abc.DEF:1-2_3"


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "line\\nforged", "é", "<script>"])
async def test_invalid_request_id_is_replaced(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.get("/health", headers={b"X-Request-ID": bad.encode("utf-8")})
    assert response.headers["x-request-id"] != bad
    assigned = uuid.UUID(response.headers["x-request-id"])
    assert str(assigned) == response.headers["x-request-id"]
    assert (assigned.version, assigned.variant) == (4, uuid.RFC_4122)


def test_new_request_ids_are_random_version_4_uuids() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    # Every bit outside the version and variant varies.
    random_bits = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
    values = [uuid.UUID(v).int for v in ids]
    assert functools.reduce(operator.or_, values) & random_bits == random_bits
    assert functools.reduce(operator.and_, values) & random_bits == 0


async def test_an_upstream_request_id_header_is_replaced_by_the_one_assigned(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/echoes-request-id", headers={"X-Request-ID": "mine-1"})
    assert response.headers.get_list("x-request-id") == ["mine-1"]


async def test_service_error_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/gone")
    body = assert_problem(response, 410, "gone")
    assert body["title"] == "Gone for good"
    assert body["detail"] == "It left."
    assert body["instance"] == "/gone"
    assert response.headers["x-why"] == "because"


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nope"), 404, "not_found")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.delete("/things")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_a_405_allows_every_method_of_the_path_through_included_routers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.patch("/api/things")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD, POST"


async def test_head_is_get_without_a_body(client: httpx.AsyncClient) -> None:
    get = await client.get("/api/things")
    head = await client.head("/api/things", headers={"X-Request-ID": "head-1"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["x-request-id"] == "head-1"


async def test_validation_error_lists_each_issue(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={"name": 3})
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"] == [
        {
            "loc": ["body", "name"],
            "message": "Input should be a valid string",
            "type": "string_type",
        }
    ]


async def test_malformed_json_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/things", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation_error")


async def test_a_body_that_is_not_utf8_is_malformed_json_too(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/things", content=b'{"name": "\xff\xfe"}', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"] == [
        {"loc": ["body"], "message": "The body is not UTF-8, so not JSON.", "type": "json_invalid"}
    ]


async def test_unhandled_error_is_a_bland_500(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    body = assert_problem(response, 500, "internal_error")
    assert "secret internals" not in response.text
    assert body["request_id"] == "boom-1"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    error = next(line for line in lines if line["level"] == "ERROR")
    assert error["request_id"] == "boom-1"
    assert "secret internals" in error["exception"]


async def test_access_line_is_one_json_object(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.get("/health", headers={"X-Request-ID": "log-1"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    access = [line for line in lines if line.get("path") == "/health"]
    assert len(access) == 1
    assert access[0] | {"time": None, "duration_ms": None} == {
        "time": None,
        "level": "INFO",
        "message": "request",
        "service": "kit",
        "request_id": "log-1",
        "method": "GET",
        "path": "/health",
        "status": 200,
        "duration_ms": None,
    }


@pytest.mark.parametrize(("behind_gateway", "logged"), [(True, "ci-bot"), (False, None)])
async def test_client_id_is_logged_only_from_a_service_behind_the_gateway(
    behind_gateway: bool, logged: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    app = FastAPI()
    install_servicekit(
        app, service="kit", settings=ServiceSettings(), behind_gateway=behind_gateway
    )

    @app.get("/who")
    async def who() -> dict[str, str | None]:
        logger.info("inside")
        return {"client_id": current_client_id()}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as c:
        answer = await c.get("/who", headers={"X-Client-ID": "ci-bot"})
        malformed = await c.get("/who", headers={"X-Client-ID": "ci bot"})
    assert answer.json() == {"client_id": logged}
    assert malformed.json() == {"client_id": None}
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("client_id") for line in lines] == [logged, logged, None, None]
    assert all("client_id" in line for line in lines[:2]) is (logged is not None)


async def test_liveness_and_readiness() -> None:
    transport = httpx.ASGITransport(app=make_app(ready=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://kit") as c:
        assert (await c.get("/health")).json() == {"status": "ok", "service": "kit"}
        ready = await c.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "service": "kit",
        "detail": "nope",
        "code": "not_ready",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"a":{"b":1,"c":2,"b":3}}', "duplicate key 'b'"),
        (b"[" * 5000 + b"]" * 5000, "nesting too deep"),
        (b'{"n":' + b"9" * 5000 + b"}", "4300 digits"),
        (b'{"a":"\xff"}', "utf-8"),
        (b'{"a":1', "Expecting"),
    ],
)
def test_strict_loads_refusals_are_json_decode_errors(text: bytes, message: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=message):
        strict_loads(text)


def test_strict_loads_reads_what_json_loads_reads() -> None:
    document = {"a": [1, {"b": 2.5, "c": None}], "d": "\u00e9", "e": 10**40}
    for encoding in ("utf-8", "utf-16", "utf-32"):
        assert strict_loads(json.dumps(document).encode(encoding)) == document
    assert strict_loads(json.dumps(document)) == document
