import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

from servicekit.context import client_id_var, request_id_var
from servicekit.tracing import current_trace_ids

if TYPE_CHECKING:
    from loguru import Message, Record

_STDLIB_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "alembic", "httpx", "openai")


class _AccessLog:
    service = ""
    enabled = True


# Characters that JSON leaves as they are but that many readers take for a line break
# (Python's `str.splitlines`, JavaScript before ES2019): escaped, so that a value a client
# sent (a path, a header) cannot split a log line in two. orjson writes every other
# character that could (the C0 controls) escaped already, and these can only occur inside
# a JSON string, where the escape reads back as the same character.
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _write(line: dict[str, Any]) -> None:
    text = orjson.dumps(line, default=str).decode()
    if not text.isascii():
        text = text.translate(_LINE_BREAKS)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _json_sink(message: "Message") -> None:
    record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        **record["extra"],
    }
    if record["exception"] is not None:
        line["exception"] = "".join(traceback.format_exception(*record["exception"]))
    _write(line)


def log_access(method: str, path: str, status: int, duration_ms: float) -> None:
    """The one INFO line per request, in the sink's shape.

    Written straight to the sink: on the proxy's hot path loguru's record building costs
    several times this (`make bench`, row `proxy`, CPU/request note).
    """
    if _AccessLog.enabled:
        line = {
            "time": datetime.now(UTC).isoformat(),
            "level": "INFO",
            "message": "request",
            "service": _AccessLog.service,
            "request_id": request_id_var.get(),
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
        }
        if (client_id := client_id_var.get()) is not None:
            line["client_id"] = client_id
        line.update(current_trace_ids())
        _write(line)


def _add_request_context(record: "Record") -> None:
    """`request_id` on every line of a request, `client_id` too once the client is known,
    `trace_id` and `span_id` when it is traced."""
    extra = record["extra"]
    extra.setdefault("request_id", request_id_var.get())
    if (client_id := client_id_var.get()) is not None:
        extra.setdefault("client_id", client_id)
    for key, value in current_trace_ids().items():
        extra.setdefault(key, value)


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (uvicorn, alembic, httpx, ...) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        level: str | int
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON object per line on stdout, each carrying `service` and `request_id`."""
    _AccessLog.service = service
    _AccessLog.enabled = logger.level(level.upper()).no <= logger.level("INFO").no
    logger.remove()
    logger.configure(extra={"service": service}, patcher=_add_request_context)
    # The sink builds its JSON from the record: "{message}" spares loguru formatting its
    # default human-readable line (timestamp included) on every call, only to be ignored.
    logger.add(_json_sink, level=level.upper(), format="{message}", backtrace=False, diagnose=False)
    # The threshold also on the stdlib side, so that records below it are dropped at the call
    # site: httpcore and openai log at DEBUG on every upstream call, and building each record
    # only for loguru to discard it shows in `make bench`'s `llm` row (CPU/request note).
    stdlib_level = logging.getLevelNamesMapping().get(level.upper(), logging.NOTSET)
    logging.basicConfig(handlers=[_InterceptHandler()], level=stdlib_level, force=True)
    for name in _STDLIB_LOGGERS:
        stdlib_logger = logging.getLogger(name)
        stdlib_logger.handlers = []
        stdlib_logger.propagate = True
    # httpx logs every request at INFO; our access and upstream-call lines already say it.
    logging.getLogger("httpx").setLevel(max(stdlib_level, logging.WARNING))
    # One structured access line per request comes from our middleware instead.
    logging.getLogger("uvicorn.access").disabled = True
