"""The LLM service in-process (lifespan run, ASGI transport) against a real HTTP stand-in."""

from collections.abc import Iterator

import pytest
from llm_testkit import API_KEY, ClientFactory, client_factory

from devstack.openai_standin import OpenAIStandin


@pytest.fixture(scope="session")
def _standin() -> Iterator[OpenAIStandin]:
    with OpenAIStandin() as server:
        yield server


@pytest.fixture
def upstream(_standin: OpenAIStandin) -> Iterator[OpenAIStandin]:
    _standin.reset()
    _standin.chunk_delay = 0.0
    _standin.serves_models = True
    _standin.api_key = API_KEY
    yield _standin
    _standin.reset()


@pytest.fixture
def llm(upstream: OpenAIStandin) -> ClientFactory:
    return client_factory(upstream)
