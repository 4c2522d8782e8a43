import asyncio

import pytest
from starlette.types import Message

from servicekit.disconnect import CancelledOnDisconnect


class _Client:
    """The ASGI `receive` of a client that leaves when told to."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_the_clients_leaving_ends_the_block_quietly() -> None:
    client, reached = _Client(), []
    sending = asyncio.Event()

    async def send_forever() -> str:
        with CancelledOnDisconnect(client.receive):
            sending.set()
            await asyncio.Event().wait()
            reached.append("end of the block")
        return "returned"

    task = asyncio.create_task(send_forever())
    await sending.wait()
    client.gone.set()
    assert await asyncio.wait_for(task, 5) == "returned"
    assert reached == []
    assert not task.cancelled()


async def test_a_cancellation_from_elsewhere_goes_on() -> None:
    client = _Client()
    sending = asyncio.Event()

    async def send_forever() -> None:
        with CancelledOnDisconnect(client.receive):
            sending.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(send_forever())
    await sending.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_leaving_after_the_block_cancels_nothing() -> None:
    client = _Client()
    with CancelledOnDisconnect(client.receive):
        pass
    client.gone.set()
    # A cancellation of this task would interrupt the sleep.
    assert await asyncio.sleep(0.05, "slept") == "slept"
