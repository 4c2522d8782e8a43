"""The streaming reverse proxy: a pure ASGI layer in front of FastAPI's routing.

Requests under an upstream's prefix never reach FastAPI: each becomes an `Exchange` whose
body streams to the upstream as the client sends it (counted against the size limit), and
whose response streams back chunk by chunk, so server-sent events arrive as the upstream
produces them.
"""

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config import IPNetwork
from gateway.proxy.exchange import Exchange, ProxyPolicy
from gateway.upstreams import Upstream
from servicekit import ROUTE_TEMPLATE


class ProxyMiddleware:
    """Forwards requests under an upstream's prefix; everything else goes to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        body_timeout: float,
        trusted_proxies: tuple[IPNetwork, ...],
    ) -> None:
        self.app = app
        self.policy = ProxyPolicy(body_timeout, trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            upstreams: Mapping[str, Upstream] = scope["state"]["upstreams"]
            path: str = scope["path"]
            for upstream in upstreams.values():
                if upstream.matches(path):
                    scope[ROUTE_TEMPLATE] = upstream.route_template
                    await Exchange(upstream, self.policy, scope, receive, send).run()
                    return
        await self.app(scope, receive, send)
