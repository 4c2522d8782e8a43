from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.audits.constants import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX_LENGTH
from audits_service.config import Settings


# `async def` even without awaiting: FastAPI runs a plain `def` dependency in a worker
# thread, a hop that shows in `make bench`'s `audits-post` CPU/request.
async def get_idempotency_ttl(request: Request) -> timedelta:
    settings: Settings = request.state.settings
    return timedelta(seconds=settings.idempotency_ttl)


IdempotencyTtlDep = Annotated[timedelta, Depends(get_idempotency_ttl)]


async def get_engine(request: Request) -> AsyncEngine:
    """The engine; each operation checks a connection out only while it runs, so a request
    that fails validation never waits for one, and a streamed export checks one out per
    chunk, after the route has returned."""
    engine: AsyncEngine = request.state.engine
    return engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_KEY_HEADER,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description=(
            "Makes the create safe to retry (IETF draft-ietf-httpapi-idempotency-key-header): "
            "a repeat with the same key and body returns the original 201 response with "
            "`Idempotent-Replayed: true`; the same key with another body is a 422 "
            "`idempotency_key_reused`; a repeat while the first is in flight is a 409 "
            "`idempotency_in_progress`. Keys expire after IDEMPOTENCY_TTL seconds (24 h). "
            "1-255 visible ASCII characters, e.g. a UUID."
        ),
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]
