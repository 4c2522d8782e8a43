from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from servicekit import ServiceSettings

# audits-service/src/audits_service/config.py -> the repository's migrations/
_REPO_MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"


def normalise_database_url(url: str) -> str:
    """Any PostgreSQL URL becomes `postgresql+asyncpg://…`; other databases are refused."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("DATABASE_URL is not a valid URL") from None
    if parsed.get_backend_name() not in {"postgresql", "postgres"}:
        raise ValueError("DATABASE_URL must be a postgresql:// or postgresql+asyncpg:// URL")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


class Settings(ServiceSettings):
    # A rejected DATABASE_URL must not be echoed: it may carry the password.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    database_url: SecretStr = Field(
        description="postgresql:// or postgresql+asyncpg:// URL; normalised to asyncpg."
    )
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout: float = Field(default=5.0, gt=0, description="Seconds.")
    db_command_timeout: float = Field(
        default=5.0, gt=0, description="Seconds any one statement may take."
    )
    idempotency_ttl: int = Field(default=86400, ge=1, description="Seconds.")
    audit_seal_interval: float = Field(
        default=10.0, gt=0, description="Seconds between sealing rounds of the trail."
    )
    audit_retention_days: int | None = Field(
        default=None, ge=1, description="Records older than this are purged; unset: kept."
    )
    migrations_dir: Path = _REPO_MIGRATIONS

    @field_validator("database_url", mode="before")
    @classmethod
    def _asyncpg_url(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return SecretStr(normalise_database_url(value))
        return value

    @property
    def database_url_safe(self) -> str:
        """The URL with its password masked, fit for logs."""
        return make_url(self.database_url.get_secret_value()).render_as_string(hide_password=True)
