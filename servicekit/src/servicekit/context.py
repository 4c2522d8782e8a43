import re
from contextvars import ContextVar
from uuid import uuid4

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


def accept_request_id(value: str | None) -> str:
    """Keep a well-formed incoming request ID, replace anything else by a new UUID."""
    if value is not None and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return str(uuid4())


def current_request_id() -> str | None:
    return request_id_var.get()
