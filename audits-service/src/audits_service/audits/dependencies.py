from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from audits_service.audits.constants import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX_LENGTH
from audits_service.config import Settings
from audits_service.database import Sessions


# Dependencies are `async def` even without awaiting: FastAPI runs a plain `def` one in a
# worker thread, a hop that cost ~10 % of a POST.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def get_idempotency_ttl(settings: Annotated[Settings, Depends(get_settings)]) -> timedelta:
    return timedelta(seconds=settings.idempotency_ttl)


IdempotencyTtlDep = Annotated[timedelta, Depends(get_idempotency_ttl)]

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


async def get_idempotency_key(idempotency_key: IdempotencyKeyHeader = None) -> str | None:
    return idempotency_key


# One declaration of the header, shared (and validated once) by the route and the session.
IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]


async def get_create_session(
    request: Request, idempotency_key: IdempotencyKeyDep
) -> AsyncIterator[AsyncSession]:
    """An idempotent create writes two rows atomically; a plain one is a single statement."""
    sessions: Sessions = request.state.sessions
    async with sessions.open(transaction=idempotency_key is not None) as session:
        yield session


CreateSessionDep = Annotated[AsyncSession, Depends(get_create_session)]
