"""Which headers cross the gateway, and when it believes the forwarding headers it is sent."""

from collections.abc import Iterable
from ipaddress import ip_address

from starlette.types import Scope

from gateway.config import IPNetwork
from servicekit import CLIENT_ID_HEADER, REQUEST_ID_HEADER, current_client_id, current_request_id
from servicekit.usage import USAGE_REPORT_HEADER, USAGE_TOKENS_HEADER

RawHeaders = list[tuple[bytes, bytes]]

_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()
_CLIENT_ID = CLIENT_ID_HEADER.lower().encode()
_USAGE_REPORT = USAGE_REPORT_HEADER.lower().encode()
# RFC 9110 §7.6.1 plus the de-facto Proxy-* family. Host, the framing and the forwarding
# headers are set by the gateway itself, after the client's are filtered, so a `Connection`
# token can never remove them; Expect was already answered by the gateway's own server.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# A client's own `X-Client-ID` never crosses: behind the gateway it names the key's owner;
# nor does its own usage report request.
_GATEWAY_SET = frozenset({b"host", b"content-length", b"expect", _REQUEST_ID, _CLIENT_ID})
_REQUEST_DROP = _HOP_BY_HOP | _FORWARDING | _GATEWAY_SET | {_USAGE_REPORT}
# The gateway's server writes its own; two of each would be invalid. The usage report is
# for the gateway alone.
_RESPONSE_DROP = _HOP_BY_HOP | {b"date", b"server", USAGE_TOKENS_HEADER.lower().encode()}
# The credentials of access control: consumed by the gateway when it checks keys.
_CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
# The request headers the proxy decides on.
_READ = _FORWARDING | _CREDENTIALS | {b"host", b"content-length", b"transfer-encoding"}
_BEARER = b"bearer "
_REQUEST_DROP_CHECKED = _REQUEST_DROP | _CREDENTIALS


def is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address: `X-Forwarded-For` counts only when the peer is a trusted proxy,
    read from the right, skipping the trusted proxies that appended themselves."""
    if peer is None:
        return "unknown"
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens = [
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    ]
    return frozenset(tokens)


def _end_to_end(headers: RawHeaders, drop: frozenset[bytes]) -> RawHeaders:
    listed = _connection_tokens(headers)
    return [
        (lowered, value)
        for name, value in headers
        if (lowered := name.lower()) not in drop
        and lowered not in listed
        and not lowered.startswith(b"proxy-")
    ]


def response_headers(headers: RawHeaders) -> RawHeaders:
    """An upstream's response headers as the client gets them."""
    return _end_to_end(headers, _RESPONSE_DROP)


class RequestHeaders:
    """A request's headers as the gateway reads them: the few it decides on, and the
    forwarding headers, believed only from a trusted proxy (one rule, for both the
    upstream's `X-Forwarded-*` and the client IP that rate limits count)."""

    __slots__ = ("_incoming", "_scope", "_trusted", "peer", "read")

    def __init__(self, scope: Scope, trusted_proxies: tuple[IPNetwork, ...]) -> None:
        self._scope = scope
        self._incoming: RawHeaders = scope["headers"]
        client = scope.get("client")
        self.peer: str | None = client[0] if client else None
        self.read = {name: value for name, value in self._incoming if name in _READ}
        self._trusted = trusted_proxies

    def get(self, name: bytes) -> bytes | None:
        """One of the headers the proxy decides on (`Content-Length`, `Host`, …)."""
        return self.read.get(name)

    @property
    def from_trusted_proxy(self) -> bool:
        return (
            bool(self._trusted) and self.peer is not None and is_trusted(self.peer, self._trusted)
        )

    def presented_key(self) -> str | None:
        """The API key of `Authorization: Bearer <key>`, else of `X-API-Key`."""
        authorization: bytes | None = self.read.get(b"authorization")
        if authorization is not None and authorization[:7].lower() == _BEARER:
            return authorization[7:].strip().decode("latin-1")
        api_key: bytes | None = self.read.get(b"x-api-key")
        return api_key.strip().decode("latin-1") if api_key is not None else None

    def client_ip(self) -> str:
        forwarded_for = self.read.get(b"x-forwarded-for")
        chain = forwarded_for.decode("latin-1") if forwarded_for else None
        return client_ip(self.peer, chain, self._trusted)

    def upstream_headers(self, checked: bool = False, report_usage: bool = False) -> RawHeaders:
        """End-to-end headers plus the gateway's forwarding headers, request ID and, once a
        key identified the caller, client ID. A key the gateway `checked` goes no further;
        `report_usage` asks the upstream for the tokens its response uses."""
        headers = _end_to_end(self._incoming, _REQUEST_DROP_CHECKED if checked else _REQUEST_DROP)
        trusted = self.from_trusted_proxy
        forwarded_for = self.peer.encode() if self.peer else b"unknown"
        if trusted and (chain := self.read.get(b"x-forwarded-for")):
            forwarded_for = chain + b", " + forwarded_for
        proto = self._scope.get("scheme", "http").encode()
        host = self.read.get(b"host", b"")
        if trusted:
            proto = self.read.get(b"x-forwarded-proto", proto)
            host = self.read.get(b"x-forwarded-host", host)
        headers += [
            (b"x-forwarded-for", forwarded_for),
            (b"x-forwarded-proto", proto),
            (_REQUEST_ID, (current_request_id() or "").encode()),
        ]
        if host:
            headers.append((b"x-forwarded-host", host))
        if (client_id := current_client_id()) is not None:
            headers.append((_CLIENT_ID, client_id.encode()))
        if report_usage:
            headers.append((_USAGE_REPORT, b"tokens"))
        return headers
