"""The clients people use, through the gateway to the LLM service to a scriptable OpenAI
stand-in, all real processes: the official SDK (the Responses API plain, streamed and with a
tool; model entries; upstream error codes; the `n` cap; a stream's retries), LangChain's
`ChatOpenAI` (chat completions and the Responses API, with tools) and pydantic-ai
(structured output)."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from devstack.openai_replies import split_reply
from devstack.openai_standin import DEFAULT_REPLY, Fault, OpenAIStandin
from devstack.processes import ServiceProcess
from testkit.images import png_data_url
from tests.e2e_stack import STANDIN_API_KEY, Stack, gateway_env, llm_env, start_logged

REPLY = "".join(split_reply(DEFAULT_REPLY))
WEATHER: openai.types.responses.FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city over the next days.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
# What the stand-in's model "answers" to a tool: the simplest instance of its schema.
WEATHER_ARGUMENTS = {"city": "standin", "days": 1}


@pytest.fixture(scope="module")
def scripted(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OpenAIStandin, ServiceProcess]]:
    """A stand-in of this module's own (the tests script faults on it), an LLM service in
    front of it and a gateway in front of that."""
    logs: Path = tmp_path_factory.mktemp("clients")
    with OpenAIStandin(api_key=STANDIN_API_KEY) as upstream:
        env = {**llm_env(upstream), "OPENAI_MAX_RETRIES": "2"}
        llm = start_logged("llm", env, logs / "llm.log")
        try:
            gateway = start_logged(
                "gateway", gateway_env(stack.audits.url, llm.url), logs / "gateway.log"
            )
            try:
                yield upstream, gateway
            finally:
                gateway.stop()
        finally:
            llm.stop()


@pytest.fixture
def upstream(scripted: tuple[OpenAIStandin, ServiceProcess]) -> Iterator[OpenAIStandin]:
    standin = scripted[0]
    standin.reset()
    yield standin
    standin.reset()


@pytest.fixture
def base_url(scripted: tuple[OpenAIStandin, ServiceProcess]) -> str:
    return f"{scripted[1].url}/api/v1/openai/v1"


@pytest.fixture
def sdk(base_url: str, upstream: OpenAIStandin) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="client-side", max_retries=0) as client:
        yield client


def test_sdk_responses_plain(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    response = sdk.responses.create(model="gpt-4o", input="Say hello.", instructions="Be brief.")
    assert response.output_text == REPLY
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.output_tokens == len(upstream.pieces)
    assert upstream.calls[0].json()["instructions"] == "Be brief."


def test_sdk_responses_streamed(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(model="gpt-4o-mini", input="Say hello.") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == REPLY
    assert final.usage is not None


def test_sdk_responses_with_a_tool(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    called = sdk.responses.create(model="gpt-4o", input="Weather in Oslo?", tools=[WEATHER])
    call = called.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.arguments == '{"city":"standin","days":1}'
    answered = sdk.responses.create(
        model="gpt-4o",
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER],
    )
    assert answered.output_text == REPLY
    assert upstream.calls[1].json()["input"][1]["call_id"] == call.call_id


def test_sdk_sends_an_image_of_two_mebibytes(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    image = png_data_url(2 * 1024 * 1024)
    completion = sdk.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == REPLY
    [call] = upstream.calls
    assert call.json()["messages"][0]["content"][1]["image_url"]["url"] == image


def test_chat_with_an_image_part_streams_tool_call_events(
    scripted: tuple[OpenAIStandin, ServiceProcess], upstream: OpenAIStandin
) -> None:
    image = png_data_url(1024 * 1024 + 1)
    parts = [
        {"type": "text", "text": "Where was this taken, and what is the weather there?"},
        {"type": "image_url", "image_url": {"url": image}},
    ]
    tool = {"type": "function", "function": {k: WEATHER[k] for k in ("name", "parameters")}}
    body = {"messages": [{"role": "user", "content": parts}], "tools": [tool], "stream": True}
    response = httpx.post(f"{scripted[1].url}/api/v1/openai/chat", json=body, timeout=30)
    assert response.status_code == 200, response.text
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    events = [orjson.loads(item) for item in data[:-1]]
    calls = [event["tool_call"] for event in events if "tool_call" in event]
    assert calls[0]["name"] == "get_weather"
    assert orjson.loads("".join(call["arguments"] for call in calls)) == WEATHER_ARGUMENTS
    assert events[-1]["finish_reason"] == "tool_calls"
    assert upstream.calls[0].json()["messages"][0]["content"][1]["image_url"]["url"] == image


def test_sdk_models_retrieve_is_the_upstreams_entry(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve("gpt-4o")
    assert (model.id, model.created, model.owned_by) == ("gpt-4o", 1715367049, "system")
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4.1-mini")  # offered upstream, not allowlisted


def test_sdk_sees_the_upstreams_error_code(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    message = "This model's maximum context length is 128000 tokens."
    upstream.script(
        Fault.error(400, message=message, code="context_length_exceeded", param="messages")
    )
    with pytest.raises(openai.BadRequestError) as rejected:
        sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "a very long text"}]
        )
    assert rejected.value.code == "context_length_exceeded"
    assert rejected.value.param == "messages"
    assert rejected.value.type == "invalid_request_error"
    assert upstream.call_count == 1


def test_sdk_n_over_the_cap_is_422_on_n(sdk: openai.OpenAI, upstream: OpenAIStandin) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], n=5
        )
    assert invalid.value.param == "n"
    assert upstream.call_count == 0


def test_sdk_responses_stream_retried_before_its_first_byte(
    sdk: openai.OpenAI, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.error(503), Fault.drop_after(0))
    with sdk.responses.stream(model="gpt-4o", input="Say hello.") as stream:
        final = stream.get_final_response()
    assert final.output_text == REPLY
    assert upstream.call_count == 3


def test_sdk_responses_stream_not_retried_after_it_began(
    sdk: openai.OpenAI, upstream: OpenAIStandin
) -> None:
    upstream.script(Fault.drop_after(4))
    events = list(sdk.responses.create(model="gpt-4o", input="Say hello.", stream=True))
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "error",
    ]
    error = events[-1]
    assert isinstance(error, openai.types.responses.ResponseErrorEvent)
    assert (error.code, error.sequence_number) == ("upstream_error", 4)
    assert upstream.call_count == 1


@tool
def get_weather(city: str, days: int) -> str:
    """The weather in a city over the next days."""
    return f"sunny in {city} for {days} days"


@pytest.mark.parametrize("use_responses_api", [True, False])
def test_langchain_chat_openai(
    base_url: str, upstream: OpenAIStandin, use_responses_api: bool
) -> None:
    llm = ChatOpenAI(
        model="gpt-4o",
        base_url=base_url,
        api_key="client-side",
        max_retries=0,
        use_responses_api=use_responses_api,
    )
    reply = llm.invoke("Say hello.")
    assert reply.text == REPLY
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] == len(upstream.pieces)
    with_tools = llm.bind_tools([get_weather])
    called = with_tools.invoke("Weather in Oslo?")
    assert isinstance(called, AIMessage)
    assert [(c["name"], c["args"]) for c in called.tool_calls] == [
        ("get_weather", WEATHER_ARGUMENTS)
    ]
    streamed: AIMessageChunk | None = None
    for chunk in with_tools.stream("Weather in Oslo?"):
        assert isinstance(chunk, AIMessageChunk)
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [
        ("get_weather", WEATHER_ARGUMENTS)
    ]
    paths = {call.path for call in upstream.calls}
    assert paths == {"/v1/responses" if use_responses_api else "/v1/chat/completions"}


class City(BaseModel):
    name: str
    population: int


@pytest.mark.parametrize("model_class", [OpenAIChatModel, OpenAIResponsesModel])
def test_pydantic_ai_structured_output(
    base_url: str,
    upstream: OpenAIStandin,
    model_class: type[OpenAIChatModel] | type[OpenAIResponsesModel],
) -> None:
    provider = OpenAIProvider(base_url=base_url, api_key="client-side")
    agent = Agent(model_class("gpt-4o", provider=provider), output_type=City)
    result = agent.run_sync("The largest city of Norway?")
    assert result.output == City(name="standin", population=1)
    assert result.usage.output_tokens > 0
