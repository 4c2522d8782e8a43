"""Property tests: valid records round-trip unchanged; invalid ones are 422, never 500."""

import ipaddress
import os
from typing import Any

import httpx
import pytest
from audits_testkit import AUDITS, Record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits_service.audits.constants import AuditAction, AuditStatus

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLES = settings(
    max_examples=int(os.environ.get("AUDITS_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Any Unicode PostgreSQL can store: everything but NUL and lone surrogates.
storable = st.characters(codec="utf-8", exclude_characters="\x00")


def text(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(storable, min_size=min_size, max_size=max_size)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


# jsonb stores numbers as exact decimals: floats are kept within the range where the decimal
# PostgreSQL prints reads back as the very same double (|x| < 1e15).
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(min_value=-1e15, max_value=1e15, allow_nan=False)
    | text()
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text(), children, max_size=4),
    max_leaves=25,
)
metadata = st.dictionaries(text(), json_values, max_size=5).filter(lambda m: depth(m) <= 10)

optional_fields = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from([s.value for s in AuditStatus]),
        "resource_id": st.none() | text(max_size=255),
        "description": st.none() | text(max_size=2000),
        "metadata": metadata,
        "ip_address": st.none() | st.ip_addresses().map(str),
        "user_agent": st.none() | text(max_size=512),
    },
)
valid_records = st.builds(
    lambda required, optional: {**required, **optional},
    st.fixed_dictionaries(
        {
            "action": st.sampled_from([a.value for a in AuditAction]),
            "actor": text(1, 255),
            "resource_type": text(1, 100),
        }
    ),
    optional_fields,
)


def expected(body: Record) -> Record:
    result = {
        "status": "success",
        "resource_id": None,
        "description": None,
        "metadata": {},
        "ip_address": None,
        "user_agent": None,
        **body,
    }
    if result["ip_address"] is not None:
        # The same address; its spelling is the database's (RFC 5952).
        result["ip_address"] = ipaddress.ip_address(result["ip_address"])
    return result


@EXAMPLES
@given(body=valid_records)
async def test_valid_records_round_trip_unchanged(client: httpx.AsyncClient, body: Record) -> None:
    created = await client.post(AUDITS, json=body)
    assert created.status_code == 201, created.text
    stored = created.json()
    for field, value in expected(body).items():
        got = stored[field]
        if field == "ip_address" and got is not None:
            got = ipaddress.ip_address(got)
        assert got == value, field
    fetched = await client.get(created.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == stored


def too_deep(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def nul_inside(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(strategy, strategy).map(lambda parts: f"{parts[0]}\x00{parts[1]}")


not_a_string: st.SearchStrategy[object] = (
    st.integers() | st.booleans() | st.lists(st.integers(), max_size=2) | st.just({})
)
invalid_changes = st.one_of(
    st.fixed_dictionaries({"unexpected": json_leaves}),
    st.fixed_dictionaries({"action": text().filter(lambda s: s not in set(AuditAction))}),
    st.fixed_dictionaries({"status": text().filter(lambda s: s not in set(AuditStatus))}),
    st.fixed_dictionaries({"actor": st.just("") | text(256, 300) | nul_inside(text())}),
    st.fixed_dictionaries({"resource_type": st.just("") | text(101, 120) | nul_inside(text())}),
    st.fixed_dictionaries({"resource_id": text(256, 300) | nul_inside(text())}),
    st.fixed_dictionaries({"description": text(2001, 2050) | nul_inside(text())}),
    st.fixed_dictionaries({"user_agent": text(513, 530) | nul_inside(text())}),
    st.fixed_dictionaries({"ip_address": text(max_size=45).filter(lambda s: not _is_ip(s))}),
    st.fixed_dictionaries({"metadata": st.integers(11, 40).map(too_deep)}),
    st.fixed_dictionaries({"metadata": nul_inside(text()).map(lambda s: {"k": s})}),
    st.fixed_dictionaries({"metadata": nul_inside(text()).map(lambda s: {s: 1})}),
    st.fixed_dictionaries({"metadata": json_leaves | st.lists(json_leaves, max_size=3)}),
    st.fixed_dictionaries(
        {"actor": not_a_string, "resource_type": not_a_string, "action": not_a_string}
    ),
    st.fixed_dictionaries({"metadata": st.integers(16_400, 17_000).map(lambda n: {"x": "y" * n})}),
)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return "%" not in value


@EXAMPLES
@given(body=valid_records, change=invalid_changes)
async def test_invalid_records_are_422(
    client: httpx.AsyncClient, body: Record, change: Record
) -> None:
    response = await client.post(AUDITS, json={**body, **change})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"


@EXAMPLES
@given(body=st.dictionaries(st.sampled_from([*expected({}), "action", "actor", "x"]), json_values))
async def test_arbitrary_bodies_never_500(client: httpx.AsyncClient, body: Record) -> None:
    response = await client.post(AUDITS, json=body)
    assert response.status_code in {201, 422}, response.text


@EXAMPLES
@given(
    params=st.dictionaries(
        st.sampled_from(
            [
                "limit",
                "offset",
                "cursor",
                "include_total",
                "action",
                "status",
                "actor",
                "resource_type",
                "resource_id",
                "created_from",
                "created_to",
            ]
        ),
        st.text(st.characters(codec="utf-8"), max_size=40) | st.integers(-5, 10**20).map(str),
        max_size=4,
    )
)
async def test_arbitrary_list_queries_never_500(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get(AUDITS, params=params)
    assert response.status_code in {200, 422}, response.text


@EXAMPLES
@given(
    change=st.dictionaries(st.sampled_from([*expected({}), "action", "actor", "x"]), json_values)
)
async def test_arbitrary_updates_never_500(client: httpx.AsyncClient, change: Record) -> None:
    created = await client.post(AUDITS, json={"action": "read", "actor": "p", "resource_type": "t"})
    response = await client.put(created.headers["location"], json=change)
    assert response.status_code in {200, 422}, response.text
