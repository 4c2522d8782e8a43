"""Fixtures every test suite shares: one embedded PostgreSQL server per test session."""

import os
from collections.abc import Iterator
from itertools import count

import pytest

from devstack.postgres import EmbeddedPostgres

# The Docker engine tests run only under `make test-containers`, which prepares the engine.
collect_ignore = [] if os.environ.get("CONTAINER_TESTS") else ["tests/containers"]

_database_numbers = count()

# Every gateway a test starts (in process or as a child process) serves its metrics on a
# free port unless the test picks one: many run at once, and 9100 may be taken.
os.environ.setdefault("METRICS_PORT", "0")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_database_url(postgres: EmbeddedPostgres) -> str:
    """A new, empty database on the session's server (`postgresql://…`)."""
    return postgres.create_database(f"test_{next(_database_numbers)}")
