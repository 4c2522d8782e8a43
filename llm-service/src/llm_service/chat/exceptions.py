from servicekit import ServiceError


class LLMNotConfigured(ServiceError):
    status, code, title = 503, "llm_not_configured", "LLM not configured"


class UpstreamAuthFailed(ServiceError):
    status, code, title = 502, "upstream_auth_failed", "Upstream rejected our credentials"


class UpstreamBadRequest(ServiceError):
    status, code, title = 400, "upstream_bad_request", "Upstream rejected the request"


class UpstreamRateLimited(ServiceError):
    status, code, title = 429, "upstream_rate_limited", "Upstream rate limit reached"


class UpstreamError(ServiceError):
    status, code, title = 502, "upstream_error", "Upstream failed"


class UpstreamTimeout(ServiceError):
    status, code, title = 504, "upstream_timeout", "Upstream timed out"


class ModelNotFound(ServiceError):
    status, code, title = 404, "not_found", "Model not found"


class MalformedUpstreamResponse(Exception):
    """The upstream answered 200 with a body that is not what OpenAI's API returns."""
