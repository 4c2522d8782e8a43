"""Fixtures for the gateway's in-process tests."""

from collections.abc import AsyncIterator

import pytest
from gateway_harness import GatewayClient, Recorder, running_gateway


@pytest.fixture
def audits() -> Recorder:
    return Recorder()


@pytest.fixture
def llm() -> Recorder:
    return Recorder()


@pytest.fixture
async def gateway(audits: Recorder, llm: Recorder) -> AsyncIterator[GatewayClient]:
    async with running_gateway({"audits": audits, "llm": llm}) as client:
        yield client
