"""`/health` (liveness, no I/O) and `/health/ready` (readiness, injected check), and the
shapes of health reports that more than one service writes or passes through."""

from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from servicekit.errors import ServiceError, ShuttingDown
from servicekit.shutdown import shutting_down


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    service: str


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    service: str
    detail: str | None = Field(default=None, description="Why the service is not ready.")
    code: str | None = Field(default=None, description="Stable reason code when not ready.")


class ReadinessCheck(BaseModel):
    """What a service's readiness check reports; `ready=False` makes readiness 503."""

    ready: bool
    detail: str | None = None
    code: str | None = None

    @classmethod
    def failed(cls, error: ServiceError) -> "ReadinessCheck":
        """Not ready, for the reason `error` gives."""
        return cls(ready=False, detail=error.detail, code=error.code)


ReadyProbe = Callable[[Request], Awaitable[ReadinessCheck]]


class MigrationState(BaseModel):
    current: str | None = Field(description="Revision applied to the database (null: none).")
    head: str | None = Field(description="Newest revision this build ships (null: unknown).")
    up_to_date: bool


class DatabaseHealth(BaseModel):
    """The audits service's database check; the gateway passes it through unchanged."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "latency_ms": 0.84,
                    "migration": {
                        "current": "8b21e4c7d9a0",
                        "head": "8b21e4c7d9a0",
                        "up_to_date": True,
                    },
                }
            ]
        }
    )

    status: Literal["ok", "degraded"] = Field(
        description="`ok`: reachable and migrated to head; `degraded`: reachable, not at head."
    )
    latency_ms: float = Field(description="Time to obtain a connection and run `SELECT 1`.")
    migration: MigrationState


def health_router(service: str, ready: ReadyProbe | None = None) -> APIRouter:
    """Liveness, and readiness from `ready` (a service whose readiness has another shape
    leaves it out and serves its own, asking `shutting_down` first)."""
    router = APIRouter(tags=["health"])

    @router.get("/health", summary=f"Liveness: the {service} process is up")
    async def liveness() -> Liveness:
        return Liveness(service=service)

    if ready is None:
        return router

    @router.get(
        "/health/ready",
        summary="Readiness: the service can serve requests",
        responses={503: {"model": Readiness, "description": "Not ready, with the reason"}},
    )
    async def readiness(request: Request) -> JSONResponse:
        if shutting_down(request):
            check = ReadinessCheck.failed(ShuttingDown("shutting down"))
        else:
            check = await ready(request)
        body = Readiness(
            status="ok" if check.ready else "unavailable",
            service=service,
            detail=check.detail,
            code=check.code,
        )
        return JSONResponse(body.model_dump(), status_code=200 if check.ready else 503)

    return router
