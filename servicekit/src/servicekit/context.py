import os
import re
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"
# The API client a request is made for, set by the gateway from the caller's key; the
# gateway strips a client-sent one, so behind it the header is the gateway's word.
CLIENT_ID_HEADER = "X-Client-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A client ID follows the request ID's rule: safe in a header, a log line and a label.
VALID_CLIENT_ID = _VALID_REQUEST_ID

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
client_id_var: ContextVar[str | None] = ContextVar("client_id", default=None)


def new_request_id() -> str:
    """A random (version 4) UUID in its text form, straight from the random bytes:
    `str(uuid4())` builds a `UUID` object and its integer on the way, on every request
    that brings no ID."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 9562 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def accept_request_id(value: str | None) -> str:
    """Keep a well-formed incoming request ID, replace anything else by a new UUID."""
    if value is not None and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def current_request_id() -> str | None:
    return request_id_var.get()


def current_client_id() -> str | None:
    """The API client of the current request; None while access control is off."""
    return client_id_var.get()
