from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Base of every service's settings: environment variables first, then `.env`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    log_level: str = "INFO"
    # Seconds a service keeps serving after SIGTERM while readiness reports 503, so a load
    # balancer stops routing to it first. 0 locally; Kubernetes sets it (e.g. 5).
    shutdown_drain_seconds: float = Field(default=0.0, ge=0)
    metrics_enabled: bool = Field(
        default=True, description="Record request metrics and serve them on `/metrics`."
    )
