import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from servicekit import tune_gc_after_startup


async def test_gc_is_tuned_while_the_app_runs_and_restored_after() -> None:
    started: list[bool] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, int]]:
        started.append(True)
        yield {"answer": 42}

    app = FastAPI(lifespan=lifespan)
    tune_gc_after_startup(app)
    before = gc.get_threshold()

    async with app.router.lifespan_context(app) as state:
        assert started == [True]
        assert state == {"answer": 42}
        assert gc.get_threshold() == (50_000, 50, 100)
        assert gc.get_freeze_count() > 0

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
