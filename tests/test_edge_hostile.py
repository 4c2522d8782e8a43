"""The gateway as a hostile client meets it: raw sockets against a real gateway process.

Request smuggling through `Connection` tokens and obfuscated framing, header floods,
slowloris, `Upgrade` with a body, lenient framing, pipelining after an error. Each test checks
the answer, that nothing reached the upstream that should not have (audit records counted by
actor), that no answer lands on another request, and that the gateway's memory stays bounded.
"""

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from devstack.openai_standin import OpenAIStandin
from devstack.processes import ServiceProcess
from tests.e2e_stack import Stack, gateway_env, start_logged

HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 30
KEEPALIVE_REQUESTS = 5
KEEPALIVE_TIME_S = 2.0
LINGERING_TIME_S = 3.0
LINGERING_TIMEOUT_S = 1.0
LINGERING_MAX_BYTES = 8 * 1024 * 1024
TWO_MIB = 2 * 1024 * 1024
PROBLEM = b"application/problem+json"
RSS_BOUND_BYTES = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A gateway of its own, with short limits, in front of the session's services."""
    env = gateway_env(
        stack.audits.url,
        stack.llm.url,
        CLIENT_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S),
        MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        KEEPALIVE_REQUESTS=str(KEEPALIVE_REQUESTS),
        KEEPALIVE_TIME=str(KEEPALIVE_TIME_S),
        LINGERING_TIME=str(LINGERING_TIME_S),
        LINGERING_TIMEOUT=str(LINGERING_TIMEOUT_S),
        LINGERING_MAX_BYTES=str(LINGERING_MAX_BYTES),
        RATE_LIMIT_LLM_PER_MINUTE="0",
    )
    logs: Path = tmp_path_factory.mktemp("edge-logs")
    gateway = start_logged("gateway", env, logs / "gateway.log")
    try:
        yield gateway
    finally:
        gateway.stop()


def _connect(service: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    sock.settimeout(5)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (a hang fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _exchange(service: ServiceProcess, data: bytes) -> bytes:
    with _connect(service) as sock:
        sock.sendall(data)
        return _read_all(sock)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, and nothing after it."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    [length] = re.findall(rb"(?i)\r\ncontent-length: (\d+)", head)
    while len(body) < int(length):
        chunk = sock.recv(65536)
        assert chunk, received
        body += chunk
    assert len(body) == int(length), received
    return head + b"\r\n\r\n" + body


def _statuses(raw: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def _records(stack: Stack, actor: str) -> int:
    response = httpx.get(f"{stack.gateway.url}/api/v1/audits", params={"actor": actor})
    total: int = response.json()["total"]
    return total


def _rss(service: ServiceProcess) -> int:
    assert service.process is not None
    return int(psutil.Process(service.process.pid).memory_info().rss)


def _post(body: bytes, path: bytes = b"/api/v1/audits", connection: bytes | None = None) -> bytes:
    """A JSON POST with its Content-Length, and a `Connection` header when given."""
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + (b"Connection: " + connection + b"\r\n" if connection else b"")
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _post_audit(actor: str) -> bytes:
    return _post(orjson.dumps({"action": "create", "actor": actor, "resource_type": "edge"}))


def _smuggled(actor: str) -> bytes:
    return _post(orjson.dumps({"action": "create", "actor": actor, "resource_type": "r"}))


@pytest.mark.parametrize(
    "token", [b"content-length", b"transfer-encoding", b"host", b"x-request-id", b"x-forwarded-for"]
)
def test_connection_tokens_cannot_remove_framing_or_gateway_headers(
    stack: Stack, edge: ServiceProcess, token: bytes
) -> None:
    outer_actor, inner_actor = f"outer-{uuid.uuid4()}", f"smuggled-{uuid.uuid4()}"
    smuggled = _smuggled(inner_actor)
    outer = orjson.dumps({"action": "create", "actor": outer_actor, "resource_type": "edge"})
    # The outer body is a valid record followed by a whole second request.
    request = _post(outer + smuggled, connection=token)
    raw = _exchange(edge, request + b"GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
    statuses = _statuses(raw)
    # The upstream sees one body (invalid JSON with trailing bytes): one answer to it, then
    # the pipelined /health; never a second record.
    assert statuses == [422, 200], raw[:2000]
    assert _records(stack, inner_actor) == 0


def test_smuggled_request_via_connection_content_length_is_one_body(
    stack: Stack, edge: ServiceProcess
) -> None:
    inner_actor = f"smuggled-{uuid.uuid4()}"
    request = _post(_smuggled(inner_actor), connection=b"content-length")
    raw = _exchange(edge, request + b"GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
    assert _statuses(raw) == [422, 200], raw[:2000]
    assert _records(stack, inner_actor) == 0
    # No answer to a smuggled request waits on a pooled upstream connection for the next
    # client: another client's request gets its own answer.
    other = f"other-client-{uuid.uuid4()}"
    created = httpx.post(
        f"{edge.url}/api/v1/audits",
        json={"action": "create", "actor": other, "resource_type": "edge"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["actor"] == other


def test_a_request_smuggled_to_the_llm_route_never_reaches_the_upstream(
    edge: ServiceProcess, standin: OpenAIStandin
) -> None:
    """One counted LLM request must be one upstream call at most: a second chat request
    hidden in the body behind `Connection: content-length` is the body's tail, not a call."""
    chat = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]})
    route = b"/api/v1/openai/v1/chat/completions"
    request = _post(chat + _post(chat, route) * 10, route, connection=b"content-length")
    before = len(standin.calls)
    raw = _exchange(edge, request + b"GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
    assert _statuses(raw) == [422, 200], raw[:2000]
    assert len(standin.calls) == before


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        (b"Transfer-Encoding: chunked\r\nContent-Length: 4", 400),  # CL.TE
        (b"Content-Length: 4\r\nTransfer-Encoding: chunked", 400),  # TE.CL
        (b"Content-Length: 4\r\nTransfer-Encoding:\x0bchunked", 400),
        (b"Content-Length: 4\r\nTransfer-Encoding : chunked", 400),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity", 400),
        (b"Transfer-Encoding: gzip, chunked", 400),
        (b"Transfer-Encoding: xchunked", 400),
        (b"Content-Length: 4\r\nContent-Length: 5", 400),
        (b"Content-Length: +4", 400),
    ],
)
def test_ambiguous_framing_is_refused_and_nothing_after_it_is_read(
    stack: Stack, edge: ServiceProcess, framing: bytes, status: int
) -> None:
    actor = f"te-{uuid.uuid4()}"
    smuggled = _smuggled(actor)
    request = (
        b"POST /api/v1/audits HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n\r\n0\r\n\r\n"
        + smuggled
    )
    raw = _exchange(edge, request)
    assert _statuses(raw) == [status], raw[:2000]
    assert PROBLEM in raw
    assert b"connection: close" in raw
    assert _records(stack, actor) == 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n",
        b"FOO /health HTTP/1.1\r\nHost: e\r\n",
        b"GET /\xff\x00 HTTP/1.1\r\nHost: e\r\n",
        b"GET /health HTTP/1.1\nHost: e\n",
        b"GET /health HTTP/1.1\r\nHost: e\r\nX-A: a\r\n folded\r\n",
    ],
)
def test_malformed_requests_get_a_problem_and_a_closed_connection(
    edge: ServiceProcess, head: bytes
) -> None:
    raw = _exchange(edge, head + b"\r\nGET /health HTTP/1.1\r\nHost: e\r\n\r\n")
    statuses = _statuses(raw)
    assert statuses in ([400], [405]), raw[:2000]
    assert PROBLEM in raw
    assert b'"request_id"' in raw


def test_upgrade_with_a_body_is_refused_not_hung(stack: Stack, edge: ServiceProcess) -> None:
    actor = f"upgrade-{uuid.uuid4()}"
    body = orjson.dumps({"action": "create", "actor": actor, "resource_type": "edge"})
    request = (
        b"POST /api/v1/audits HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Upgrade: h2c\r\nConnection: upgrade\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    started = time.monotonic()
    raw = _exchange(edge, request)
    assert _statuses(raw) == [400], raw[:2000]
    assert time.monotonic() - started < 5
    assert _records(stack, actor) == 0


def test_upgrade_without_a_body_is_served_and_the_connection_closed(edge: ServiceProcess) -> None:
    request = (
        b"GET /health HTTP/1.1\r\nHost: e\r\n"
        b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n"
    )
    raw = _exchange(edge, request + b"GET /health HTTP/1.1\r\nHost: e\r\n\r\n")
    assert _statuses(raw) == [200], raw[:2000]


def test_an_endless_header_line_is_cut_off_with_431_and_memory_stays_bounded(
    edge: ServiceProcess,
) -> None:
    before = _rss(edge)
    sockets = [_connect(edge) for _ in range(4)]
    try:
        for sock in sockets:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: e\r\nX-Big: ")
        chunk = b"a" * 65536
        answers = []
        for sock in sockets:
            try:
                for _ in range(1600):  # up to 100 MiB each; the gateway closes long before
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                answers.append(_read_all(sock))
            except ConnectionResetError:
                answers.append(b"HTTP/1.1 431 (reset after the answer)")
        assert all(_statuses(answer) == [431] for answer in answers), [a[:200] for a in answers]
    finally:
        for sock in sockets:
            sock.close()
    assert _rss(edge) - before < RSS_BOUND_BYTES


def test_headers_dripped_a_byte_at_a_time_get_408_at_the_deadline(edge: ServiceProcess) -> None:
    with _connect(edge) as sock:
        started = time.monotonic()
        raw = b""
        for byte in b"GET /health HTTP/1.1\r\nHost: e\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
            if time.monotonic() - started > HEADER_TIMEOUT_S + 1:
                break
        raw = _read_all(sock)
    assert _statuses(raw) == [408], raw[:500]
    assert PROBLEM in raw
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_an_idle_new_connection_is_closed_at_the_header_deadline(edge: ServiceProcess) -> None:
    with _connect(edge) as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2


def test_connections_beyond_the_cap_are_answered_503_at_once(edge: ServiceProcess) -> None:
    held = [_connect(edge) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with _connect(edge) as extra:
            raw = _read_all(extra)
        assert _statuses(raw) == [503], raw[:500]
        assert PROBLEM in raw
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert _statuses(
        _exchange(edge, b"GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
    ) == [200]


def test_a_malformed_pipelined_request_never_takes_the_first_ones_answer(
    stack: Stack, edge: ServiceProcess
) -> None:
    actor = f"pipelined-{uuid.uuid4()}"
    first = _post_audit(actor)
    second = b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    third = _smuggled(f"never-{actor}")
    raw = _exchange(edge, first + second + third)
    # The first request's own answer, then the connection closes: the second is refused by
    # closing after the first answer, and the third is never read.
    statuses = _statuses(raw)
    assert statuses[0] == 201, raw[:2000]
    assert actor.encode() in raw.split(b"\r\n\r\n", 1)[1]
    assert statuses[1:] in ([], [400])
    assert _records(stack, actor) == 1
    assert _records(stack, f"never-{actor}") == 0


def test_every_request_pipelined_before_a_malformed_one_is_answered_in_order(
    stack: Stack, edge: ServiceProcess
) -> None:
    actors = [f"pipelined-{n}-{uuid.uuid4()}" for n in range(3)]
    malformed = b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    raw = _exchange(
        edge, b"".join(_post_audit(actor) for actor in actors) + malformed + _smuggled(actors[0])
    )
    statuses = _statuses(raw)
    assert statuses[:3] == [201, 201, 201], raw[:3000]
    assert statuses[3:] in ([], [400])
    positions = [raw.find(actor.encode()) for actor in actors]
    assert -1 not in positions, raw[:3000]
    assert positions == sorted(positions), raw[:3000]
    assert raw.lower().count(b"connection: close") == 1
    assert [_records(stack, actor) for actor in actors] == [1, 1, 1]


@pytest.mark.parametrize("text", [b"5", b"true", b"5.5", b"1e30"])
@pytest.mark.parametrize("stream", [b"false", b"true"])
@pytest.mark.parametrize("role", [b"system", b"user"])
def test_non_string_content_part_text_is_422(
    edge: ServiceProcess, text: bytes, stream: bytes, role: bytes
) -> None:
    body = (
        b'{"model":"gpt-4o-mini","stream":'
        + stream
        + b',"messages":[{"role":"'
        + role
        + b'","content":[{"type":"text","text":'
        + text
        + b"}]}]}"
    )
    response = httpx.post(
        f"{edge.url}/api/v1/openai/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/v1/openai/v1/chat/completions",
            b'{"model":"gpt-4-not-allowed","model":"gpt-4o-mini",'
            b'"messages":[{"role":"user","content":"hi"}]}',
        ),
        (
            "/api/v1/openai/v1/chat/completions",
            b'{"max_tokens":99999999,"max_tokens":1,"messages":[{"role":"user","content":"hi"}]}',
        ),
        (
            "/api/v1/openai/chat",
            b'{"messages":[{"role":"user","content":"hi","content":"again"}]}',
        ),
        (
            "/api/v1/openai/v1/chat/completions",
            b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
        ),
        (
            "/api/v1/openai/v1/chat/completions",
            b'{"seed":' + b"9" * 5000 + b',"messages":[{"role":"user","content":"hi"}]}',
        ),
    ],
    ids=["model-twice", "max-tokens-twice", "content-twice-on-chat", "nesting-5000", "5000-digits"],
)
def test_json_the_guards_could_read_differently_from_the_upstream_is_422(
    stack: Stack, edge: ServiceProcess, standin: OpenAIStandin, path: str, body: bytes
) -> None:
    """Duplicate keys would pass the guards (Python keeps the last) while an upstream that
    keeps the first gets the refused model or token count: such bodies never go upstream."""
    before = len(standin.calls)
    response = httpx.post(
        f"{edge.url}{path}", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM.decode()
    assert response.json()["code"] == "validation_error"
    assert len(standin.calls) == before


def _open_on_the_gateway(service: ServiceProcess, sock: socket.socket) -> bool:
    """Whether the gateway still holds the server end of `sock`."""
    assert service.process is not None
    peer = sock.getsockname()
    return any(
        conn.raddr and (conn.raddr.ip, conn.raddr.port) == peer
        for conn in psutil.Process(service.process.pid).net_connections(kind="tcp")
    )


def _assert_whole_413_then_close(raw: bytes) -> None:
    """One complete 413 problem that ends the connection, and nothing after it."""
    head, body = raw.split(b"\r\n\r\n", 1)
    assert _statuses(raw) == [413], raw[:2000]
    assert b"connection: close" in head.lower(), head
    assert PROBLEM in head
    [length] = re.findall(rb"content-length: (\d+)", head)
    assert len(body) == int(length), raw[:2000]
    assert orjson.loads(body)["code"] == "payload_too_large"


def _chunked(total: int) -> bytes:
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    return chunk * (total // 0x10000) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_413_is_read_whole_and_what_follows_it_is_never_a_request(
    stack: Stack, edge: ServiceProcess, framing: str
) -> None:
    """The client sends all of a body over the limit, then a second request: it reads the
    whole 413 (the gateway reads and discards the rest rather than resetting the connection
    under it), and the second request is never parsed, so never reaches the audits service."""
    actor = f"after-413-{uuid.uuid4()}"
    if framing == "chunked":
        frame, body = b"Transfer-Encoding: chunked", _chunked(TWO_MIB)
    else:
        frame, body = b"Content-Length: " + str(TWO_MIB).encode(), b"x" * TWO_MIB
    head = (
        b"POST /api/v1/audits HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        + frame
        + b"\r\n\r\n"
    )
    raw = _exchange(edge, head + body + _smuggled(actor))
    _assert_whole_413_then_close(raw)
    assert _records(stack, actor) == 0


def _over_limit_then_pause(sock: socket.socket) -> bytes:
    """Headers declaring a body over the limit and a little of it; the 413 that answers."""
    sock.sendall(
        b"POST /api/v1/audits HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(TWO_MIB).encode() + b"\r\n\r\n" + b"x" * 4096
    )
    return _read_all(sock)  # the 413, then the gateway's FIN: it shut its write side


def test_after_a_413_a_quiet_client_is_closed_at_the_lingering_timeout(
    edge: ServiceProcess,
) -> None:
    with _connect(edge) as sock:
        _assert_whole_413_then_close(_over_limit_then_pause(sock))
        answered = time.monotonic()
        # Still reading what the client might send...
        assert _open_on_the_gateway(edge, sock)
        while _open_on_the_gateway(edge, sock) and time.monotonic() - answered < 10:
            time.sleep(0.05)
        # ...until it has been quiet for the lingering timeout.
        assert time.monotonic() - answered < LINGERING_TIMEOUT_S + 1.5
        assert not _open_on_the_gateway(edge, sock)


def _send_until_cut(sock: socket.socket, data: bytes, pause: float, deadline: float) -> int:
    """Bytes sent until the gateway cuts the connection (or `deadline` passes)."""
    sent = 0
    try:
        while time.monotonic() < deadline:
            sock.sendall(data)
            sent += len(data)
            time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def test_a_client_that_keeps_sending_after_a_413_is_cut_at_the_lingering_time(
    edge: ServiceProcess,
) -> None:
    with _connect(edge) as sock:
        _assert_whole_413_then_close(_over_limit_then_pause(sock))
        answered = time.monotonic()
        # Never quiet for the lingering timeout, and far below the byte bound.
        _send_until_cut(sock, b"x" * 1024, 0.1, answered + LINGERING_TIME_S + 5)
        cut = time.monotonic() - answered
    assert LINGERING_TIME_S - 0.5 < cut < LINGERING_TIME_S + 2


def test_a_client_that_floods_after_a_413_is_cut_at_the_lingering_byte_bound(
    edge: ServiceProcess,
) -> None:
    before = _rss(edge)
    with _connect(edge) as sock:
        _assert_whole_413_then_close(_over_limit_then_pause(sock))
        answered = time.monotonic()
        sent = _send_until_cut(sock, b"x" * 65536, 0, answered + LINGERING_TIME_S + 5)
        cut = time.monotonic() - answered
    # The byte bound, plus what the two kernels' socket buffers hold, ends it before the
    # lingering time does; what was read was discarded, not kept.
    assert sent < LINGERING_MAX_BYTES + 16 * 1024 * 1024
    assert cut < LINGERING_TIME_S
    assert _rss(edge) - before < RSS_BOUND_BYTES


def test_the_last_request_a_connection_may_carry_is_answered_whole_with_connection_close(
    edge: ServiceProcess,
) -> None:
    health = b"GET /health HTTP/1.1\r\nHost: e\r\n\r\n"
    with _connect(edge) as sock:
        heads = []
        for _ in range(KEEPALIVE_REQUESTS):
            sock.sendall(health)
            heads.append(_read_response(sock).split(b"\r\n\r\n")[0].lower())
        assert _read_all(sock) == b""
    assert [b"connection: close" in head for head in heads] == [False] * (
        KEEPALIVE_REQUESTS - 1
    ) + [True]
    # Pipelined past the cap: the requests beyond it are never answered.
    raw = _exchange(edge, health * (KEEPALIVE_REQUESTS + 2))
    assert _statuses(raw) == [200] * KEEPALIVE_REQUESTS
    assert raw.lower().count(b"connection: close") == 1


def test_a_request_past_the_connections_time_is_answered_whole_then_the_connection_closes(
    stack: Stack, edge: ServiceProcess
) -> None:
    actor = f"keepalive-time-{uuid.uuid4()}"
    request = _post_audit(actor)
    with _connect(edge) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: e\r\n\r\n")
        assert b"connection: close" not in _read_response(sock).lower()
        # A request still arriving when the connection's time is up is served in full.
        sock.sendall(request[:-10])
        time.sleep(KEEPALIVE_TIME_S + 0.2)
        sock.sendall(request[-10:])
        raw = _read_all(sock)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert _statuses(raw) == [201], raw[:2000]
    assert b"connection: close" in head.lower()
    assert orjson.loads(body)["actor"] == actor
    assert _records(stack, actor) == 1
