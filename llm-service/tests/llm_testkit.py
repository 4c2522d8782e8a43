"""Helpers shared by the LLM service's tests (fixtures live in conftest.py)."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

from devstack.openai_standin import OpenAIStandin
from llm_service.config import Settings
from llm_service.main import create_app
from testkit.asgi import lifespan_client

API_KEY = "sk-test-0123456789abcdefSECRET"

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def settings_for(upstream: OpenAIStandin, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "openai_base_url": upstream.base_url,
        "openai_timeout": 2.0,
        "openai_max_retries": 3,
        "openai_retry_max_time": 5.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)


def client_factory(upstream: OpenAIStandin) -> ClientFactory:
    """`async with factory(openai_max_retries=1) as client:` the app with its lifespan run."""

    @asynccontextmanager
    async def client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with lifespan_client(
            create_app(settings_for(upstream, **overrides)), "http://llm"
        ) as c:
            yield c

    return client


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Say hello."}], **extra}


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of each server-sent event in `text`."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        events.append((name, "\n".join(data)))
    return events
