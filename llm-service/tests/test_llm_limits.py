"""The request body limit (`LLM_MAX_BODY_BYTES`, big enough for images as data URLs) and
content parts: a real image goes upstream whole, a body over the limit never does."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from llm_testkit import ClientFactory, chat_body

from devstack.openai_standin import OpenAIStandin
from testkit.checks import assert_problem
from testkit.images import png_data_url

COMPLETIONS = "/api/v1/openai/v1/chat/completions"
MIB = 1024 * 1024


def _image_message(url: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": "What is in this image?"}]
    return {"role": "user", "content": [*parts, {"type": "image_url", "image_url": {"url": url}}]}


async def test_an_image_of_over_a_mebibyte_goes_upstream_whole(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    image = png_data_url(2 * MIB)
    body = {"model": "gpt-4o-mini", "messages": [_image_message(image)]}
    async with llm() as client:
        response = await client.post(COMPLETIONS, json=body)
    assert response.status_code == 200, response.text
    sent = upstream.calls[0]
    assert len(sent.body) > 2 * MIB
    assert sent.json()["messages"][0]["content"][1]["image_url"]["url"] == image


SMALL_BODIES = {
    COMPLETIONS: chat_body(model="gpt-4o-mini"),
    "/api/v1/openai/v1/responses": {"model": "gpt-4o-mini", "input": "Say hello."},
    "/api/v1/openai/chat": chat_body(),
}


@pytest.mark.parametrize("path", SMALL_BODIES)
async def test_a_body_over_the_limit_is_413_declared_or_streamed(
    llm: ClientFactory, upstream: OpenAIStandin, path: str
) -> None:
    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 16_384
        yield b'"}]}'

    async with llm(llm_max_body_bytes=100_000) as client:
        declared = await client.post(path, json={**SMALL_BODIES[path], "padding": "p" * 200_000})
        streamed = await client.post(path, content=chunked())
        small = await client.post(path, json=SMALL_BODIES[path])
    for response in (declared, streamed):
        problem = assert_problem(response, 413, "payload_too_large")
        assert problem["detail"] == "The request body exceeds 100000 bytes."
        if "/openai/v1/" in path:
            assert problem["error"]["code"] == "payload_too_large"
    assert small.status_code == 200, small.text
    assert upstream.call_count == 1


@pytest.mark.parametrize(
    "part",
    [
        {"type": "text"},
        {"type": "text", "text": 3},
        {"type": "image_url"},
        {"type": "image_url", "image_url": "https://example.org/cat.png"},
        {"type": "image_url", "image_url": {"detail": "low"}},
        {"type": "input_audio"},
        {"text": "no type"},
        "a bare string",
        None,
    ],
)
async def test_malformed_content_parts_are_422(
    llm: ClientFactory, upstream: OpenAIStandin, part: Any
) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part]}]}
    async with llm() as client:
        response = await client.post(COMPLETIONS, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["error"]["param"].startswith("messages.0.content")
    assert upstream.call_count == 0
