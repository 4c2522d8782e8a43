import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TypedDict

from fastapi import FastAPI, Request
from loguru import logger
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from llm_service import __version__
from llm_service.chat.exceptions import LLMNotConfigured, UpstreamAuthFailed
from llm_service.chat.guards import Guards
from llm_service.chat.router import router as chat_router
from llm_service.chat.service import ChatService
from llm_service.chat.upstream import KeyStatus, UpstreamClient, check_key
from llm_service.chat.wire import WireService
from llm_service.config import Settings
from llm_service.usage import UsageReportMiddleware
from servicekit import (
    ReadinessCheck,
    configure_tracing,
    health_router,
    install_graceful_shutdown,
    install_servicekit,
    operation_id,
)
from servicekit.bodylimit import BodyLimitMiddleware


class State(TypedDict):
    chat: ChatService | None
    wire: WireService | None
    key_status: KeyStatus


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[State]:
    install_graceful_shutdown(app, settings.shutdown_drain_seconds)
    if settings.openai_api_key is None:
        logger.warning("OPENAI_API_KEY is not set: the service is not ready and answers 503")
        yield {"chat": None, "wire": None, "key_status": KeyStatus.MISSING}
        return
    # The one client of this process (UpstreamClient sends over its own hop unless the
    # environment names a proxy for the upstream); retries belong to UpstreamClient's
    # policy alone.
    http = DefaultAsyncHttpxClient(timeout=settings.openai_timeout)
    client = AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout,
        max_retries=0,
        http_client=http,
    )
    upstream = UpstreamClient(client, http, settings)
    try:
        status = KeyStatus.UNCHECKED
        if settings.openai_validate_on_startup:
            status = await check_key(client, settings)
        guards = Guards(settings)
        yield {
            "chat": ChatService(upstream, guards),
            "wire": WireService(upstream, guards),
            "key_status": status,
        }
    finally:
        await upstream.aclose()
        await client.close()


async def ready(request: Request) -> ReadinessCheck:
    status: KeyStatus = request.state.key_status
    if status is KeyStatus.MISSING:
        return ReadinessCheck.failed(LLMNotConfigured("OPENAI_API_KEY is not set."))
    if status is KeyStatus.REJECTED:
        return ReadinessCheck.failed(
            UpstreamAuthFailed("The upstream API rejected OPENAI_API_KEY at start-up.")
        )
    if status is KeyStatus.UNVERIFIED:
        return ReadinessCheck(ready=True, detail="OPENAI_API_KEY could not be checked at start-up.")
    return ReadinessCheck(ready=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="LLM service",
        version=__version__,
        description=(
            "Chat completions through OpenAI (or any OpenAI-compatible API) with one retry "
            "policy, streaming, and OpenAI wire compatibility under `/api/v1/openai/v1`."
        ),
        lifespan=partial(lifespan, settings=settings),
        telemetry=configure_tracing("llm"),
        generate_unique_id_function=operation_id,
    )
    app.add_middleware(UsageReportMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.llm_max_body_bytes)
    install_servicekit(app, service="llm", settings=settings)
    if settings.log_level.upper() != "DEBUG":
        # UpstreamCall logs each upstream call once; httpx2 would add a line per attempt.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    app.include_router(health_router("llm", ready=ready))
    app.include_router(chat_router, prefix="/api/v1")
    return app
