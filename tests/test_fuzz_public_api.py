"""Schemathesis against the gateway's merged OpenAPI document, the whole stack running.

Every operation gets positive and negative data. Checks: no 5xx except the documented
upstream 502/503/504, and every response conforms to the documented status codes,
content types, headers and schemas. CI runs a fixed seed and a fixed number of examples
per operation; `FUZZ_NIGHTLY=1` draws a new seed and many more examples.
"""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from uuid import uuid4

import pytest
import schemathesis
import schemathesis.engine
from schemathesis import Case, HookContext
from schemathesis.engine import Status, events

from tests.e2e_stack import Stack

NIGHTLY = os.environ.get("FUZZ_NIGHTLY") == "1"
CI_SEED = 20261126
CI_EXAMPLES_PER_OPERATION = 15
NIGHTLY_EXAMPLES_PER_OPERATION = 200
ALLOWED_MODEL = "gpt-4o-mini"
MAX_TOKENS = 4096  # OPENAI_MAX_TOKENS's default, which the stack runs with
MAX_N = 4  # OPENAI_MAX_N's default
_VALID_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def fuzz_config(base_url: str) -> schemathesis.Config:
    settings: dict[str, Any] = {
        "base-url": base_url,
        "request-timeout": 30,
        "generation": {
            "mode": "all",
            "max-examples": NIGHTLY_EXAMPLES_PER_OPERATION
            if NIGHTLY
            else CI_EXAMPLES_PER_OPERATION,
            # No example database: a CI run must not depend on what an earlier run found.
            "database": "none",
            # The API rejects NUL in every string, metadata included, which JSON Schema cannot
            # say for a free-form object; test_reliability_hostile_input covers NULs.
            "allow-x00": False,
        },
        "checks": {
            # 502/503/504 are the upstream failures the gateway documents; that they are
            # documented for the operation is what `status_code_conformance` verifies.
            "not_a_server_error": {
                "expected-statuses": ["1xx", "2xx", "3xx", "4xx", 502, 503, 504]
            },
        },
        "phases": {"stateful": {"enabled": False}},
    }
    if not NIGHTLY:
        settings["seed"] = CI_SEED
    return schemathesis.Config.from_dict(settings)


@dataclass
class FuzzReport:
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    findings: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, event: events.EngineEvent) -> None:
        if isinstance(event, events.ScenarioFinished):
            self.operations.add(event.recorder.label)
            self.cases += len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        key = f"{failure.operation}: {failure.title}"
                        interaction = event.recorder.interactions.get(case_id)
                        response = interaction.response if interaction else None
                        answer = (
                            f"-> {response.status_code} {response.content[:300]!r}"
                            if response is not None
                            else "-> no response"
                        )
                        self.findings.setdefault(
                            key, f"{failure.message}\n{check.failure_info.code_sample}\n{answer}"
                        )
        elif isinstance(event, events.NonFatalError):
            self.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            for failure in event.failures:
                self.findings.setdefault(f"{failure.operation}: {failure.title}", failure.message)


def _server_issued_values(_: HookContext, case: Case[Any], __: dict[str, Any]) -> None:
    """Values only the server or its configuration can make valid, chosen as a client would.

    A valid Idempotency-Key is made unique (reusing one with another body is a documented
    422); a cursor is an opaque token from `next_cursor` (any other string is rightly a
    422); `model` must be in `OPENAI_ALLOWED_MODELS`, token counts within
    `OPENAI_MAX_TOKENS` and `n` within `OPENAI_MAX_N`, which the schema cannot know (model
    ids too: the gateway refuses odd paths such as a `\\` in one with 404); `created_from`
    after `created_to` is a documented 422 no JSON Schema can express. Invalid values are
    left alone, so negative cases stay negative.
    """
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if case.headers and _VALID_IDEMPOTENCY_KEY.fullmatch(str(key)):
        case.headers["Idempotency-Key"] = f"fuzz-{uuid4()}"
    if case.query:
        if isinstance(case.query.get("cursor"), str):
            del case.query["cursor"]
        if "created_from" in case.query and "created_to" in case.query:
            del case.query["created_to"]
    if isinstance(case.body, dict):
        if isinstance(case.body.get("model"), str):
            case.body["model"] = ALLOWED_MODEL
        for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = case.body.get(field)
            if _integral(value) and value > MAX_TOKENS:
                case.body[field] = MAX_TOKENS
        choices = case.body.get("n")
        if _integral(choices) and choices > MAX_N:
            case.body["n"] = MAX_N
    if case.path_parameters and isinstance(case.path_parameters.get("model_id"), str):
        case.path_parameters["model_id"] = ALLOWED_MODEL


def _integral(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value % 1 == 0


@pytest.fixture
def server_issued_values() -> Iterator[None]:
    # `before_call` hooks are process-wide in schemathesis: registered for this test only.
    schemathesis.hook("before_call")(_server_issued_values)
    yield
    schemathesis.hooks.unregister(_server_issued_values)


# Under a minute on an idle 2-core machine in CI mode; the bound is for a loaded one.
@pytest.mark.timeout(3600 if NIGHTLY else 240)
@pytest.mark.usefixtures("server_issued_values")
def test_fuzz_public_api(stack: Stack) -> None:
    url = stack.gateway.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=fuzz_config(url))
    report = FuzzReport()
    for event in schemathesis.engine.from_schema(schema).execute():
        report.record(event)
    print(
        f"\nschemathesis: {len(report.operations)} operations, {report.cases} cases, "
        f"{len(report.findings)} findings, {len(report.errors)} errors"
    )
    assert report.operations, "no operation was tested"
    assert not report.errors, "\n\n".join(report.errors)
    assert not report.findings, "\n\n".join(f"{k}\n{v}" for k, v in report.findings.items())
