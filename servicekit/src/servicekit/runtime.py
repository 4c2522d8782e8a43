"""App-wide settings shared by the services: GC tuning, operation IDs."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    """The handler's name (`create_audit`, `list_models`) as its OpenAPI operationId, for
    generated clients, instead of FastAPI's `create_audit_api_v1_audits_post`.

    Passed as `FastAPI(generate_unique_id_function=operation_id)`; handler names are unique
    across the public API (the gateway's merged document is checked for it).
    """
    return route.name


# A request allocates hundreds of container objects: with the default threshold of 700
# the collector ran several young collections per request and, every few hundred
# requests, a full one walking every object the app holds (routes, schemas, clients).
_THRESHOLDS = (50_000, 50, 100)


def tune_gc_after_startup(app: FastAPI) -> None:
    """Once the lifespan has started, freeze what start-up allocated (out of every future
    collection's walk) and collect young objects less often; undone at shutdown.

    The gateway's p99 is otherwise the collector's: `make bench`, row `proxy` (p99 against
    the upstream direct) re-measures it.
    """
    startup = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with startup(app) as state:
            thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*_THRESHOLDS)
            try:
                yield state
            finally:
                gc.set_threshold(*thresholds)
                gc.unfreeze()

    app.router.lifespan_context = lifespan
