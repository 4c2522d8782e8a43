"""Hostile input at the public edge: each a clear 4xx problem, never a 500 or a hang.

Oversized headers and URLs, bodies trickled in or never finished, request IDs crafted to
forge log lines, absurdly nested JSON, huge numbers, invalid UTF-8, NULs and the wrong
media type, all sent to the session stack's gateway.
"""

import asyncio
import socket
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e_stack import STACK_CLIENT_BODY_TIMEOUT_S, Stack

PROBLEM = "application/problem+json"
AUDIT = {"action": "create", "actor": "hostile", "resource_type": "edge"}
CHAT = "/api/v1/openai/chat"
AUDITS = "/api/v1/audits"
FORGED = "forged-by-a-client"


def _assert_client_problem(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == PROBLEM, response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == response.status_code
    assert problem["code"]
    return problem


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _audit_with(metadata_json: bytes) -> bytes:
    return orjson.dumps(AUDIT)[:-1] + b',"metadata":' + metadata_json + b"}"


JSON = {"content-type": "application/json"}

BODY_CASES = {
    "nesting-10000-in-metadata": (AUDITS, _audit_with(_nested(10_000)), JSON),
    "nesting-10000-top-level": (AUDITS, b"[" * 10_000 + b"]" * 10_000, JSON),
    "nesting-10000-in-chat": (
        CHAT,
        b'{"messages":[{"role":"user","content":' + _nested(10_000) + b"}]}",
        JSON,
    ),
    "float-overflow-in-metadata": (AUDITS, _audit_with(b'{"n":1e400}'), JSON),
    "integer-of-5000-digits": (AUDITS, _audit_with(b'{"n":' + b"9" * 5000 + b"}"), JSON),
    "temperature-1e400": (
        CHAT,
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":1e400}',
        JSON,
    ),
    "max-tokens-10e30": (
        CHAT,
        b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":' + b"1" + b"0" * 30 + b"}",
        JSON,
    ),
    "invalid-utf8": (AUDITS, b'{"action":"create","actor":"\xff\xfe","resource_type":"r"}', JSON),
    "nul-in-string": (AUDITS, orjson.dumps({**AUDIT, "actor": "a\u0000b"}), JSON),
    "text-plain": (AUDITS, orjson.dumps(AUDIT), {"content-type": "text/plain"}),
    "form-urlencoded-chat": (
        CHAT,
        b"messages=hi",
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    "xml": (AUDITS, b"<audit/>", {"content-type": "application/xml"}),
}
EXPECTED_BODY_STATUS = {
    "text-plain": (415,),
    "form-urlencoded-chat": (415,),
    "xml": (415,),
}


@pytest.mark.parametrize("case", BODY_CASES)
async def test_hostile_bodies_are_4xx_problems(stack: Stack, case: str) -> None:
    path, body, headers = BODY_CASES[case]
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        response = await client.post(path, content=body, headers=headers)
    _assert_client_problem(response, *EXPECTED_BODY_STATUS.get(case, (422,)))


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "1" + "0" * 30},
        {"offset": "1" + "0" * 30},
        {"offset": str(2**63)},
        {"actor": "\x00"},
        {"resource_id": "a\x00b"},
        {"created_from": "99999-01-01T00:00:00Z"},
        {"cursor": "\x00\xff"},
        {"cursor": "not-a-cursor"},
    ],
)
async def test_hostile_queries_are_4xx_problems(stack: Stack, query: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        response = await client.get(AUDITS, params=query)
    _assert_client_problem(response, 400, 422)


async def test_oversized_headers_are_431(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        one_big = await client.get("/", headers={"X-Big": "a" * 40_000})
        many = await client.get("/", headers={f"X-H{i}": "b" * 200 for i in range(200)})
    for response in (one_big, many):
        problem = _assert_client_problem(response, 431)
        assert problem["code"] == "request_header_fields_too_large"


async def test_oversized_url_is_414(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        long_query = await client.get(AUDITS, params={"actor": "a" * 10_000})
        long_path = await client.get(f"{AUDITS}/{'a' * 10_000}")
    for response in (long_query, long_path):
        assert _assert_client_problem(response, 414)["code"] == "uri_too_long"


def _raw_exchange(port: int, request: bytes, read_limit_s: float) -> tuple[bytes, float]:
    """Send `request` as is; return what the server answered and when it closed."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_limit_s) as sock:
        sock.sendall(request)
        received = b""
        while time.monotonic() - started < read_limit_s:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    return received, time.monotonic() - started


async def test_unfinished_body_is_cut_off(stack: Stack) -> None:
    head = (
        b"POST /api/v1/audits HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    answer, elapsed = await asyncio.to_thread(_raw_exchange, stack.gateway.port, head, 30.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert PROBLEM.encode() in answer
    # The rest of the body may still come: it must never be read as a next request.
    assert b"connection: close" in answer.lower()
    assert elapsed < STACK_CLIENT_BODY_TIMEOUT_S + 3


def _trickle(port: int, seconds: float) -> tuple[bytes, float]:
    """Send a body one byte every 0.25 s (never stalling long) until answered or `seconds`."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(
            b"POST /api/v1/audits HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        sock.settimeout(0.25)
        while time.monotonic() - started < seconds:
            try:
                sock.sendall(b" ")
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return b"", time.monotonic() - started
            return answer, time.monotonic() - started
    return b"", time.monotonic() - started


async def test_trickled_body_is_cut_off(stack: Stack) -> None:
    answer, elapsed = await asyncio.to_thread(_trickle, stack.gateway.port, 15.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in answer.lower()
    assert elapsed < STACK_CLIENT_BODY_TIMEOUT_S + 3


def _log_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        if line.strip():
            record = orjson.loads(line)  # every line must be one JSON object
            assert isinstance(record, dict), line
            records.append(record)
    return records


async def test_request_ids_cannot_forge_log_lines(stack: Stack) -> None:
    crafted = [
        f'x","level":"ERROR","message":"{FORGED}',
        f'x"}}\n{{"level":"ERROR","message":"{FORGED}"}}',
        f"x\r\n{FORGED}",
        "x" * 129,
        "ok\u00e9",
    ]
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        for value in crafted:
            raw_value = value.encode("utf-8")
            if b"\n" in raw_value or b"\r" in raw_value:
                # httpx refuses such headers; a raw socket sends them as written.
                request = (
                    b"GET /health HTTP/1.1\r\nHost: edge\r\nX-Request-ID: "
                    + raw_value
                    + b"\r\nConnection: close\r\n\r\n"
                )
                await asyncio.to_thread(_raw_exchange, stack.gateway.port, request, 5.0)
                continue
            response = await client.get("/health", headers=[(b"X-Request-ID", raw_value)])
            assert response.headers["x-request-id"] != value
        path = f"{AUDITS}%0d%0a%7B%22level%22%3A%22ERROR%22%2C%22message%22%3A%22{FORGED}%22%7D"
        response = await client.get(path)
        assert 400 <= response.status_code < 500
        # NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR: line breaks to many log readers.
        response = await client.get(f"{AUDITS}/x%C2%85y%E2%80%A8z%E2%80%A9{FORGED}")
        assert 400 <= response.status_code < 500
    await asyncio.sleep(0.3)  # let the access lines reach the log file
    for service in ("gateway", "audits", "llm"):
        for record in _log_records(stack.log_text(service)):
            assert record.get("message") != FORGED, record
            assert FORGED not in str(record.get("request_id")), record
            assert record.get("level") in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
