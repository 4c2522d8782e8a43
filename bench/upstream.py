"""The trivial upstream: a FastAPI JSON endpoint on every GET path, the reference the
gateway's proxy cost is measured against, plus a slow server-sent stream for the
gateway's memory test.

`uvicorn bench.upstream:create_app --factory`
"""

import asyncio
from collections.abc import AsyncIterator

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse

SLOW_STREAM_PATH = "/api/v1/audits/bench-slow-stream"


async def _slow_events(chunks: int, interval: float) -> AsyncIterator[bytes]:
    for index in range(chunks):
        yield f'data: {{"chunk": {index}}}\n\n'.encode()
        await asyncio.sleep(interval)
    yield b"data: [DONE]\n\n"


def create_app() -> FastAPI:
    app = FastAPI(title="bench upstream", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(SLOW_STREAM_PATH)
    async def slow_stream(
        chunks: int = Query(10, ge=1, le=100), interval: float = Query(0.5, ge=0, le=5)
    ) -> StreamingResponse:
        return StreamingResponse(_slow_events(chunks, interval), media_type="text/event-stream")

    @app.get("/{path:path}")
    async def anything(path: str) -> dict[str, str]:
        return {"status": "ok", "path": path}

    return app
