"""Proxies from the environment: a base URL the environment proxies goes through that
proxy (httpx2's client), any other straight to the upstream (the service's own pool). The
stand-in serves as the proxy: it answers a request in the absolute form too."""

import pytest
from llm_testkit import chat_body, client_factory, sse_events

from devstack.openai_standin import OpenAIStandin


async def test_a_proxied_upstream_is_reached_through_the_proxy(
    upstream: OpenAIStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", upstream.url)
    async with client_factory(upstream)(openai_base_url="http://upstream.invalid/v1") as client:
        plain = await client.post("/api/v1/openai/chat", json=chat_body())
        streamed = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    assert plain.status_code == 200, plain.text
    assert plain.json()["message"]["content"]
    assert streamed.status_code == 200
    assert sse_events(streamed.text)[-1] == ("message", "[DONE]")
    assert [call.headers["host"] for call in upstream.calls] == ["upstream.invalid"] * 2


async def test_an_upstream_outside_the_proxy_is_reached_directly(
    upstream: OpenAIStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with client_factory(upstream)() as client:
        response = await client.post("/api/v1/openai/chat", json=chat_body(stream=True))
    assert response.status_code == 200
    assert sse_events(response.text)[-1] == ("message", "[DONE]")
    assert [call.path for call in upstream.calls] == ["/v1/chat/completions"]
