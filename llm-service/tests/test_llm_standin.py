"""The OpenAI stand-in itself: wire format, scripting over HTTP, standalone process."""

import subprocess
import sys
import time

import httpx
import openai
import pytest

from devstack.openai_standin import Fault, OpenAIStandin
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
