"""The error catalogue and its one renderer, used from pure ASGI code."""

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from servicekit import (
    RateLimited,
    ServiceError,
    ServiceSettings,
    ValidationFailed,
    error_response,
    install_servicekit,
)
from servicekit import errors as catalogue
from servicekit.errors import BY_STATUS
from testkit.checks import assert_problem


def _catalogue() -> list[type[ServiceError]]:
    return [
        value
        for value in vars(catalogue).values()
        if isinstance(value, type) and issubclass(value, ServiceError)
    ]


def test_each_problem_code_has_one_class() -> None:
    codes = [error.code for error in _catalogue() if error is not ServiceError]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert all(code.isidentifier() and code.islower() for code in codes)
    assert {error.status for error in BY_STATUS.values()} == set(BY_STATUS)


class _RefusingApp:
    """Pure ASGI: refuses every request with a catalogue error, as the gateway's proxy does."""

    def __init__(self, error: ServiceError) -> None:
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(self.error, scope["path"])(scope, receive, send)


@pytest.mark.parametrize(
    "error",
    [
        RateLimited("Too many.", headers={"Retry-After": "7"}),
        ValidationFailed(
            "body.x: bad", errors=[{"loc": ["body", "x"], "message": "bad", "type": "t"}]
        ),
    ],
)
async def test_error_response_renders_a_problem_from_asgi_code(error: ServiceError) -> None:
    app = FastAPI()
    install_servicekit(app, service="kit", settings=ServiceSettings())
    app.mount("/refused", _RefusingApp(error))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://kit.test"
    ) as client:
        response = await client.get("/refused/here")
    body = assert_problem(response, error.status, error.code)
    assert body["title"] == error.title
    assert body["detail"] == error.detail
    assert body["instance"] == "/refused/here"
    assert body.get("errors") == error.errors
    for name, value in error.headers.items():
        assert response.headers[name] == value
