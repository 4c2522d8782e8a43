"""The LLM reference: the official `openai` SDK (AsyncOpenAI, max_retries=0) calling a base
URL at a fixed concurrency, as its own process; prints the call rate and latencies as JSON.

`--kind` picks the call: a chat completion (the default), embeddings of one text, or a
Responses API call; `--stream` streams the chat completion or the response. Pointed at the
OpenAI stand-in it is the physical limit of the SDK path; pointed at the llm-service's (or
the gateway's) OpenAI-compatible routes it measures what they add.
"""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator

import openai
import uvloop

from bench.loadclient import Tally, percentile, to_ms

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello."}
]
KINDS = ("chat", "embeddings", "responses")


async def _stream(client: openai.AsyncOpenAI, kind: str, model: str) -> AsyncIterator[object]:
    if kind == "responses":
        events = await client.responses.create(model=model, input="Say hello.", stream=True)
        async for event in events:
            yield event
        return
    chunks = await client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    async for chunk in chunks:
        yield chunk


async def call(
    client: openai.AsyncOpenAI, args: argparse.Namespace, started: float, tally: Tally
) -> None:
    """One call of `args.kind`; a stream is read to its end, its first chunk timed."""
    if args.stream:
        first = True
        async for _chunk in _stream(client, args.kind, args.model):
            if first:
                tally.first_bytes.append(time.perf_counter() - started)
                first = False
    elif args.kind == "embeddings":
        await client.embeddings.create(model=args.model, input="An audit trail.")
    elif args.kind == "responses":
        await client.responses.create(model=args.model, input="Say hello.")
    else:
        await client.chat.completions.create(model=args.model, messages=MESSAGES)


async def worker(
    client: openai.AsyncOpenAI, args: argparse.Namespace, deadline: float, tally: Tally
) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            await call(client, args, started, tally)
        except openai.OpenAIError:
            tally.errors += 1
            await asyncio.sleep(0.01)
            continue
        tally.record(started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    client = openai.AsyncOpenAI(
        base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=30.0
    )
    tally = Tally()
    async with client:
        # One call first, outside the clocks: the SDK imports a resource's modules and
        # builds its client state on first use, a fixed cost that would otherwise count
        # more per request on the slower side of a row.
        await call(client, args, time.perf_counter(), Tally())
        cpu_started = time.process_time()
        started = time.perf_counter()
        deadline = started + args.duration
        await asyncio.gather(
            *(worker(client, args, deadline, tally) for _ in range(args.concurrency))
        )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "cpu_client_us": cpu / max(tally.requests, 1) * 1e6,
        **tally.summary(elapsed),
        "first_chunk_p50_ms": to_ms(percentile(tally.first_bytes, 50)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--kind", choices=KINDS, default="chat")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    if args.stream and args.kind == "embeddings":
        parser.error("embeddings do not stream")
    sys.stdout.write(json.dumps(uvloop.run(run(args))) + "\n")


if __name__ == "__main__":
    main()
