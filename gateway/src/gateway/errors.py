from servicekit import ServiceError


class UpstreamUnavailable(ServiceError):
    status, code, title = 502, "upstream_unavailable", "Upstream unavailable"


class UpstreamTimeout(ServiceError):
    status, code, title = 504, "upstream_timeout", "Upstream timed out"
