"""The gateway through its production connection pool to real upstreams on 127.0.0.1:
plain HTTP, and TLS verified against a throwaway CA made here."""

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from gateway_harness import gateway_client, loopback_server
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from gateway.config import Settings
from gateway.upstreams import build_upstreams


class Echo:
    """Answers every request with its method, target and body; records the scopes."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.scopes.append(scope)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/health/ready":
            payload = b'{"status": "ok"}'
        else:
            target = scope["raw_path"] + b"?" + scope["query_string"]
            payload = b"%s %s %s" % (scope["method"].encode(), target, body)
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """The server's certificate chain and key, and the CA bundle that verifies them."""
    chain = tmp_path / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(chain)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(bundle)
    return {"chain": str(chain), "bundle": str(bundle)}


@pytest.fixture
async def tls_echo(tls_files: dict[str, str]) -> AsyncIterator[tuple[Echo, int]]:
    echo = Echo()
    async with loopback_server(
        echo, ssl_certfile=tls_files["chain"], ssl_keyfile=tls_files["chain"]
    ) as port:
        yield echo, port


async def test_plain_http_upstream_round_trip() -> None:
    echo = Echo()
    async with loopback_server(echo) as port:
        config = Settings(audits_service_url=f"http://127.0.0.1:{port}")
        async with gateway_client(config) as gateway:
            response = await gateway.post("/api/v1/audits/7?q=1", content=b"hello")
            again = await gateway.get("/api/v1/audits")
    assert response.status_code == 200
    assert response.content == b"POST /api/v1/audits/7?q=1 hello"
    assert again.content == b"GET /api/v1/audits? "
    assert echo.scopes[0]["headers"][0] == (b"host", f"127.0.0.1:{port}".encode())


async def test_https_upstream_is_tls_verified_against_the_ca_bundle(
    tls_echo: tuple[Echo, int], tls_files: dict[str, str]
) -> None:
    echo, port = tls_echo
    config = Settings(
        audits_service_url=f"https://localhost:{port}", upstream_ca_bundle=tls_files["bundle"]
    )
    async with gateway_client(config) as gateway:
        response = await gateway.put("/api/v1/audits/1", content=b"over tls")
        ready = await gateway.get("/health/ready")
    assert response.status_code == 200
    assert response.content == b"PUT /api/v1/audits/1? over tls"
    assert ready.json()["services"]["audits"]["status"] == "ok"
    # The server speaks TLS only: the same request in cleartext gets nowhere.
    async with httpx.AsyncClient() as cleartext:
        with pytest.raises(httpx.TransportError):
            await cleartext.get(f"http://127.0.0.1:{port}/api/v1/audits")
    assert len(echo.scopes) == 2


async def test_https_upstream_with_an_unknown_ca_is_502_never_cleartext(
    tls_echo: tuple[Echo, int],
) -> None:
    echo, port = tls_echo
    # Verified against the system's CAs, which never signed the throwaway CA.
    async with gateway_client(Settings(audits_service_url=f"https://localhost:{port}")) as gateway:
        response = await gateway.get("/api/v1/audits")
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"
    assert echo.scopes == []


async def test_https_url_to_a_cleartext_server_fails_instead_of_downgrading(
    tls_files: dict[str, str],
) -> None:
    echo = Echo()
    async with loopback_server(echo) as port:
        config = Settings(
            audits_service_url=f"https://127.0.0.1:{port}", upstream_ca_bundle=tls_files["bundle"]
        )
        async with gateway_client(config) as gateway:
            response = await gateway.get("/api/v1/audits")
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_unavailable"
    assert echo.scopes == []


def test_https_without_a_port_dials_443() -> None:
    upstreams = build_upstreams(Settings(audits_service_url="https://audits.example"))
    assert upstreams["audits"].origin == ("audits.example", 443)
    assert upstreams["llm"].origin == ("localhost", 8002)


@pytest.mark.parametrize("url", ["ftp://audits:21", "audits:8001", "https://", "unix:/run/a.sock"])
def test_upstream_urls_other_than_http_or_https_are_refused_at_start_up(url: str) -> None:
    with pytest.raises(ValidationError, match="http:// or https:// URL"):
        Settings(audits_service_url=url)


def test_a_ca_bundle_that_is_not_pem_is_refused_at_start_up(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        build_upstreams(
            Settings(audits_service_url="https://audits.example", upstream_ca_bundle=bogus)
        )


async def test_server_sent_events_are_relayed_as_they_arrive() -> None:
    released = asyncio.Event()

    async def events(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        start = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        # The second event waits until the client has seen the first.
        await asyncio.wait_for(released.wait(), timeout=5)
        await send({"type": "http.response.body", "body": b"data: 2\n\n"})

    parts: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if parts:
            return parts.pop()
        await asyncio.sleep(10)  # the client stays until the stream ends
        return {"type": "http.disconnect"}

    seen: list[bytes] = []

    def watch(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            seen.append(message["body"])
            released.set()

    async with loopback_server(events) as port:
        config = Settings(llm_service_url=f"http://127.0.0.1:{port}")
        async with gateway_client(config) as gateway:
            status, headers, body = await asyncio.wait_for(
                gateway.raw("POST", b"/api/v1/openai/chat", receive=receive, watch=watch),
                timeout=8,
            )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert seen == [b"data: 1\n\n", b"data: 2\n\n"]
    assert body == b"".join(seen)


async def test_a_stream_whose_client_leaves_stops_the_upstream() -> None:
    upstream_left = asyncio.Event()

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        start = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": start})

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            upstream_left.set()

        listener = asyncio.create_task(until_disconnect())
        while not upstream_left.is_set():
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await asyncio.sleep(0.05)
        await listener

    first_event = asyncio.Event()
    parts: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if parts:
            return parts.pop()
        await first_event.wait()  # the client leaves once it has seen an event
        return {"type": "http.disconnect"}

    def watch(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            first_event.set()

    async with loopback_server(endless) as port:
        config = Settings(llm_service_url=f"http://127.0.0.1:{port}")
        async with gateway_client(config) as gateway:
            status, _, body = await asyncio.wait_for(
                gateway.raw("POST", b"/api/v1/openai/chat", receive=receive, watch=watch),
                timeout=8,
            )
            # The gateway let go of its upstream connection, so the upstream sees it gone.
            await asyncio.wait_for(upstream_left.wait(), timeout=5)
    assert status == 200
    assert body.startswith(b"data: 1\n\n")
