"""The audits service's metrics: requests by route template, the pool's use, waits and timeouts."""

import httpx
import pytest
from audits_testkit import AUDITS, record
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from audits_service.config import Settings
from audits_service.database import create_engine
from testkit.metrics import value


def gauge(name: str) -> float:
    sample = REGISTRY.get_sample_value(name)
    assert sample is not None
    return sample


async def test_requests_are_counted_by_route_template(client: httpx.AsyncClient) -> None:
    created = (await client.post(AUDITS, json=record())).json()
    before = (await client.get("/metrics")).text
    await client.get(f"{AUDITS}/{created['id']}")
    await client.get(f"{AUDITS}/00000000-0000-0000-0000-000000000000")
    text_ = (await client.get("/metrics")).text
    route = "/api/v1/audits/{audit_id}"

    def added(status: str) -> float:
        labels = {"route": route, "method": "GET", "status": status}
        return value(text_, "http_requests_total", **labels) - value(
            before, "http_requests_total", **labels
        )

    assert added("200") == 1
    assert added("404") == 1
    assert value(text_, "audits_db_pool_wait_seconds_count") > value(
        before, "audits_db_pool_wait_seconds_count"
    )


async def test_the_pool_reports_use_limit_and_timeouts(audits_database_url: str) -> None:
    settings = Settings(
        database_url=audits_database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.2
    )
    engine = create_engine(settings)
    try:
        assert gauge("audits_db_pool_connections_limit") == 1
        timeouts = gauge("audits_db_pool_timeouts_total")
        in_use = gauge("audits_db_pool_connections_in_use")
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert gauge("audits_db_pool_connections_in_use") == in_use + 1
            with pytest.raises(PoolTimeoutError):
                async with engine.connect():
                    pass
        assert gauge("audits_db_pool_connections_in_use") == in_use
        assert gauge("audits_db_pool_timeouts_total") == timeouts + 1
    finally:
        await engine.dispose()
