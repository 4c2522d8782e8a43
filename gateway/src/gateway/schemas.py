from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RootInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "gateway",
                    "version": "0.1.0",
                    "description": "Public API gateway for the audits and LLM services.",
                    "docs_url": "/docs",
                    "openapi_url": "/openapi.json",
                    "health_url": "/health",
                    "api_prefix": "/api/v1",
                }
            ]
        }
    )

    name: str
    version: str
    description: str
    docs_url: str
    openapi_url: str
    health_url: str
    api_prefix: str


ServiceStatus = Literal["ok", "unavailable"]


class DownstreamHealth(BaseModel):
    status: ServiceStatus
    latency_ms: float = Field(description="Time the readiness check took.")
    detail: str | None = Field(default=None, description="Why the service is not ready.")


class GatewayReadiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "degraded",
                    "services": {
                        "audits": {"status": "ok", "latency_ms": 3.1, "detail": None},
                        "llm": {
                            "status": "unavailable",
                            "latency_ms": 2.4,
                            "detail": "llm_not_configured: OPENAI_API_KEY is not set",
                        },
                    },
                }
            ]
        }
    )

    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok: all ready; degraded: the LLM service is not; unavailable: audits is not."
    )
    services: dict[str, DownstreamHealth]
