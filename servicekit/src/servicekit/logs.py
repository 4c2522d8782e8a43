import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

from servicekit.context import request_id_var

if TYPE_CHECKING:
    from loguru import Message, Record

_STDLIB_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "alembic", "httpx", "openai")


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
    sys.stdout.write(orjson.dumps(line, default=str).decode() + "\n")
    sys.stdout.flush()


def _add_request_id(record: "Record") -> None:
    record["extra"].setdefault("request_id", request_id_var.get())


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
    logger.remove()
    logger.configure(extra={"service": service}, patcher=_add_request_id)
    logger.add(_json_sink, level=level.upper(), backtrace=False, diagnose=False)
    # The threshold also on the stdlib side, so that records below it are dropped at the call
    # site: httpcore and openai log at DEBUG on every upstream call, which cost the llm
    # service ~10 % of its CPU when each record was built only for loguru to discard it.
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
