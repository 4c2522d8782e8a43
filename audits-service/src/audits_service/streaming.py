"""Streamed responses whose failure after the first byte a client can detect."""

from collections.abc import AsyncGenerator, Mapping

import anyio.lowlevel
from starlette.responses import StreamingResponse
from starlette.types import Send


class StreamInterrupted(Exception):
    """Raised by a body generator that failed after its first byte: the response is cut
    short, without the chunked body's closing chunk."""


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response whose body generator is closed however the response ends (the
    client leaving included), so the work behind it stops with it; a generator raising
    `StreamInterrupted` ends the body without its closing chunk, which a client sees as a
    truncated body (curl: `transfer closed with outstanding read data remaining`; httpx:
    `RemoteProtocolError: incomplete chunked read`)."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        media_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(chunks, media_type=media_type, headers=headers)
        self.chunks = chunks

    async def stream_response(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # A send to a client that has gone returns at once: this is where the
                # cancellation of a left response (the work behind it shielded) lands.
                await anyio.lowlevel.checkpoint()
        except StreamInterrupted:
            return
        finally:
            await self.chunks.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
