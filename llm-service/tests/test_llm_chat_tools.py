"""`POST /chat` with tools and content parts: tool calls plain and as streamed tool-call
events (their documented shape), the tool's result sent back, images as content parts."""

from typing import Any

import orjson
from llm_testkit import ClientFactory, sse_events

from devstack.openai_standin import OpenAIStandin

CHAT = "/api/v1/openai/chat"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
ARGUMENTS = '{"city":"standin"}'


async def test_a_tool_call_and_the_answer_to_its_result(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    async with llm() as client:
        called = await client.post(CHAT, json={"messages": ASK, "tools": [WEATHER]})
        body = called.json()
        [call] = body["message"]["tool_calls"]
        history = [
            *ASK,
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]
        answered = await client.post(
            CHAT, json={"messages": history, "tools": [WEATHER], "tool_choice": "auto"}
        )
    assert called.status_code == 200, called.text
    assert body["finish_reason"] == "tool_calls"
    assert body["message"]["content"] == ""
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    assert upstream.calls[0].json()["tools"] == [WEATHER]
    assert answered.status_code == 200, answered.text
    assert answered.json()["finish_reason"] == "stop"
    assert "tool_calls" not in answered.json()["message"]
    assert upstream.calls[1].json()["messages"] == history
    assert upstream.calls[1].json()["tool_choice"] == "auto"


async def test_tool_call_deltas_stream_as_tool_call_events(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    body = {"messages": ASK, "tools": [WEATHER], "stream": True}
    async with llm() as client:
        response = await client.post(CHAT, json=body)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == ("message", "[DONE]")
    data = [orjson.loads(payload) for _, payload in events[:-1]]
    pieces = [event["tool_call"] for event in data[:-1]]
    assert all(set(event) == {"id", "model", "tool_call"} for event in data[:-1])
    assert pieces[0]["index"] == 0
    assert pieces[0]["id"].startswith("call_")
    assert pieces[0]["name"] == "get_weather"
    assert all(set(piece) == {"index", "arguments"} for piece in pieces[1:])
    assert "".join(piece["arguments"] for piece in pieces) == ARGUMENTS
    assert data[-1]["finish_reason"] == "tool_calls"
    assert data[-1]["usage"]["completion_tokens"] > 0


async def test_content_parts_with_an_image_are_forwarded(
    llm: ClientFactory, upstream: OpenAIStandin
) -> None:
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "low"},
        },
    ]
    async with llm() as client:
        response = await client.post(CHAT, json={"messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    assert set(response.json()["message"]) == {"role", "content"}
    assert upstream.calls[0].json()["messages"] == [{"role": "user", "content": parts}]
