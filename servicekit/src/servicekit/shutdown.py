"""Graceful shutdown: readiness turns 503 first, the server stops only after a drain period.

uvicorn installs its SIGTERM/SIGINT handlers with `signal.signal` before the lifespan
starts; on the signal it stops accepting connections and waits for in-flight requests
(streams included) up to `--timeout-graceful-shutdown`. A load balancer (a Kubernetes
Service) keeps routing to a pod until it has seen readiness fail, so stopping at once
loses the requests that arrive in between. We wrap uvicorn's handler: the signal marks
the app as shutting down (readiness 503 `shutting_down`), the server keeps serving for
`SHUTDOWN_DRAIN_SECONDS`, and only then uvicorn's own handler runs.
"""

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

from fastapi import FastAPI, Request
from loguru import logger

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

SignalHandler = Callable[[int, FrameType | None], object]


def install_graceful_shutdown(app: FastAPI, drain_seconds: float) -> None:
    """Call from the lifespan: on SIGTERM/SIGINT report not ready, drain, then stop.

    Does nothing where no server handler is installed (in-process tests), so the test
    runner's own Ctrl-C keeps working. A second signal skips the rest of the drain.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    app.state.shutting_down = False
    for sig in _SIGNALS:
        server_handler = signal.getsignal(sig)
        if callable(server_handler) and server_handler is not signal.default_int_handler:
            signal.signal(sig, _draining_handler(app, loop, server_handler, drain_seconds))


def shutting_down(request: Request) -> bool:
    """True once a shutdown signal has arrived: readiness must then fail."""
    return bool(getattr(request.app.state, "shutting_down", False))


def _draining_handler(
    app: FastAPI,
    loop: asyncio.AbstractEventLoop,
    server_handler: SignalHandler,
    drain_seconds: float,
) -> SignalHandler:
    pending: list[asyncio.TimerHandle] = []

    def stop_server(sig: int, frame: FrameType | None) -> None:
        for timer in pending:
            timer.cancel()
        logger.info("stopping: no new connections, finishing in-flight requests")
        server_handler(sig, frame)

    def begin_drain(sig: int, frame: FrameType | None) -> None:
        logger.info("shutdown requested: readiness is 503, draining", drain_seconds=drain_seconds)
        pending.append(loop.call_later(drain_seconds, stop_server, sig, frame))

    def handle(sig: int, frame: FrameType | None) -> None:
        # Runs between bytecodes of the main thread: only set the flag and hand over to
        # the loop (logging here could re-enter a lock the interrupted code holds).
        already_draining = app.state.shutting_down
        app.state.shutting_down = True
        if already_draining or drain_seconds <= 0:
            loop.call_soon_threadsafe(stop_server, sig, frame)
        else:
            loop.call_soon_threadsafe(begin_drain, sig, frame)

    return handle
