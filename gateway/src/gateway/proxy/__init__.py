"""The reverse proxy: `middleware` routes a request to an upstream, `exchange` carries it
there and back, `headers` decides which headers cross and which forwarded ones count."""

from gateway.proxy.middleware import ProxyMiddleware

__all__ = ["ProxyMiddleware"]
