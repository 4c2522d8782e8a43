from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from servicekit import ServiceSettings

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Settings(ServiceSettings):
    openai_api_key: SecretStr | None = Field(
        default=None, description="Without it the service starts but reports not ready."
    )
    openai_base_url: str = Field(
        default=OPENAI_DEFAULT_BASE_URL, description="Any OpenAI-compatible API base URL."
    )
    openai_model: str = Field(default="gpt-4o-mini", description="Used when a request names none.")
    openai_allowed_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Comma-separated allowlist; `OPENAI_MODEL` is always allowed."
    )
    openai_max_tokens: int = Field(default=4096, ge=1, description="Cap on a request's max_tokens.")
    openai_max_n: int = Field(
        default=4, ge=1, description="Cap on a chat completion's `n` (choices per request)."
    )
    openai_timeout: float = Field(default=60.0, gt=0, description="Seconds per upstream attempt.")
    openai_max_retries: int = Field(default=3, ge=0)
    openai_retry_max_time: float = Field(
        default=30.0, ge=0, description="Seconds all attempts and waits of one call may take."
    )
    openai_validate_on_startup: bool = False
    llm_max_body_bytes: int = Field(
        default=20 * 1024 * 1024,
        ge=0,
        description="Request body limit: image inputs travel inside the JSON as data URLs.",
    )

    @field_validator("openai_api_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("openai_base_url", mode="before")
    @classmethod
    def _blank_url_is_default(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return OPENAI_DEFAULT_BASE_URL
        return value

    @field_validator("openai_allowed_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The allowlist in configured order, the default model first."""
        return tuple(dict.fromkeys((self.openai_model, *self.openai_allowed_models)))
