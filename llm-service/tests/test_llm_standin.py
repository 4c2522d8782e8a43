"""The OpenAI stand-in itself: wire format, scripting over HTTP, standalone process."""

import subprocess
import sys
import time

import httpx
import openai
import pytest

from devstack.openai_replies import split_reply
from devstack.openai_standin import DEFAULT_REPLY, Fault, OpenAIStandin
from devstack.postgres import free_port
from devstack.processes import repo_root


def test_scripting_over_http_in_a_separate_process() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.openai_standin", "--port", str(port)],
        cwd=repo_root(),
        stdout=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.get("/_standin/calls")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            faults = [Fault.error(503, retry_after=2).to_dict(), Fault.drop_after(1).to_dict()]
            assert client.post("/_standin/script", json=faults).status_code == 200
            sdk = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="k", max_retries=0)
            with pytest.raises(openai.InternalServerError) as unavailable:
                sdk.models.list()
            assert unavailable.value.response.headers["retry-after"] == "2"
            with pytest.raises(openai.APIConnectionError):
                list(
                    sdk.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                )
            calls = client.get("/_standin/calls").json()
            assert calls["count"] == 2
            assert calls["pending_faults"] == 0
            assert [c["path"] for c in calls["calls"]] == ["/v1/models", "/v1/chat/completions"]
            client.post("/_standin/reset")
            assert client.get("/_standin/calls").json()["count"] == 0
    finally:
        process.terminate()
        process.wait(10)


def test_plain_completion_honours_max_tokens_and_a_delay() -> None:
    with OpenAIStandin(reply="one two three four") as upstream:
        sdk = openai.OpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
        upstream.script(Fault.delay(0.3))
        started = time.monotonic()
        completion = sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert time.monotonic() - started >= 0.3
        assert completion.choices[0].message.content == "one two"
        assert completion.choices[0].finish_reason == "length"
        assert completion.model == "gpt-4o"
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(model="gpt-4o", messages=[])
        assert upstream.calls[0].json()["max_tokens"] == 2
        assert upstream.calls[0].headers["authorization"] == "Bearer k"


WEATHER_TOOL: openai.types.chat.ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
HI: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def direct(upstream: OpenAIStandin) -> openai.OpenAI:
    """The official SDK pointed at the stand-in itself: its types read the stand-in's wire."""
    return openai.OpenAI(base_url=upstream.base_url, api_key=upstream.api_key, max_retries=0)


def test_tool_calls_plain_and_streamed_as_the_sdk_reads_them(direct: openai.OpenAI) -> None:
    completion = direct.chat.completions.create(model="gpt-4o", messages=HI, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == (
        "get_weather",
        '{"city":"standin","days":1}',
    )
    with direct.chat.completions.stream(
        model="gpt-4o", messages=HI, tools=[WEATHER_TOOL]
    ) as stream:
        deltas = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        streamed = stream.get_final_completion().choices[0].message.tool_calls
    assert len(deltas) > 1
    assert streamed is not None
    assert streamed[0].function.arguments == call.function.arguments
    answered = direct.chat.completions.create(
        model="gpt-4o",
        messages=[
            *HI,
            {"role": "assistant", "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert answered.choices[0].finish_reason == "stop"


def test_n_choices_and_logprobs(direct: openai.OpenAI, upstream: OpenAIStandin) -> None:
    completion = direct.chat.completions.create(
        model="gpt-4o", messages=HI, n=3, logprobs=True, top_logprobs=2
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    logprobs = completion.choices[2].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert [entry.token for entry in logprobs.content] == upstream.pieces
    assert len(logprobs.content[0].top_logprobs) == 2
    chunks = list(direct.chat.completions.create(model="gpt-4o", messages=HI, n=2, stream=True))
    assert {choice.index for chunk in chunks for choice in chunk.choices} == {0, 1}


def test_responses_plain_streamed_with_a_tool_and_structured(direct: openai.OpenAI) -> None:
    response = direct.responses.create(model="gpt-4o", input="hi")
    assert response.output_text == "".join(split_reply(DEFAULT_REPLY))
    assert response.usage is not None
    assert response.usage.output_tokens == len(split_reply(DEFAULT_REPLY))
    with direct.responses.stream(model="gpt-4o", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == len(split_reply(DEFAULT_REPLY))
    assert final.output_text == response.output_text
    tool: openai.types.responses.FunctionToolParam = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER_TOOL["function"].get("parameters"),
        "strict": True,
    }
    called = direct.responses.create(model="gpt-4o", input="weather?", tools=[tool])
    item = called.output[0]
    assert item.type == "function_call"
    assert (item.name, item.arguments) == ("get_weather", '{"city":"standin","days":1}')


def test_a_cut_responses_stream(direct: openai.OpenAI, upstream: OpenAIStandin) -> None:
    upstream.script(Fault.drop_after(3))
    stream = direct.responses.create(model="gpt-4o", input="hi", stream=True)
    kinds: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        kinds.extend(event.type for event in stream)
    assert len(kinds) == 3
