"""A streamed response that stops as soon as its client leaves, sent from the request's own
task.

Starlette's `StreamingResponse` (and a pump in a task of its own) would spend a task per
stream on the body and delay its first bytes by a pass of the event loop; here the body is
sent by the request's task, and one small task waits for `http.disconnect` and cancels it.
"""

import asyncio
from types import TracebackType

from starlette.types import Receive


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class CancelledOnDisconnect:
    """`with CancelledOnDisconnect(receive):` around the sending of a body: the client's
    disconnect cancels the current task, and that cancellation ends the block quietly (any
    other one goes on)."""

    __slots__ = ("_active", "_left", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._active = False
        self._left = False

    def __enter__(self) -> "CancelledOnDisconnect":
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._active = True
        self._watcher = asyncio.ensure_future(_wait_for_disconnect(self._receive))
        self._watcher.add_done_callback(self._client_left)
        return self

    def _client_left(self, watcher: "asyncio.Future[None]") -> None:
        # Runs while the request's task is suspended: inside the block, or after it.
        if self._active and not watcher.cancelled():
            self._left = True
            self._task.cancel()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._active = False
        self._watcher.cancel()
        return kind is asyncio.CancelledError and self._left and self._task.uncancel() == 0
