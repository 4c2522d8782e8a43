"""What a request may ask of the upstream: an allowlisted model, a bounded number of tokens
and of choices."""

from llm_service.chat.exceptions import InvalidChatRequest
from llm_service.config import Settings


class Guards:
    def __init__(self, settings: Settings) -> None:
        self.default_model = settings.openai_model
        self.models = settings.allowed_models
        self.max_tokens = settings.openai_max_tokens
        self.max_n = settings.openai_max_n

    def model(self, requested: str | None) -> str:
        """The model to call: the default when none is asked for, else an allowed one."""
        if requested is None:
            return self.default_model
        if requested not in self.models:
            allowed = ", ".join(self.models)
            message = f"Model '{requested}' is not allowed; allowed models: {allowed}."
            raise InvalidChatRequest([(("body", "model"), message, "model_not_allowed")])
        return requested

    def check_max_tokens(self, **limits: int | None) -> None:
        """A cap, not a clamp: asking for more than OPENAI_MAX_TOKENS is an error."""
        message = f"Input should be at most {self.max_tokens} (OPENAI_MAX_TOKENS)"
        issues = [
            (("body", name), message, "less_than_equal")
            for name, value in limits.items()
            if value is not None and value > self.max_tokens
        ]
        if issues:
            raise InvalidChatRequest(issues)

    def check_n(self, n: int | None) -> None:
        """`n` multiplies the completion tokens a request costs: OPENAI_MAX_N caps it."""
        if n is not None and n > self.max_n:
            message = f"Input should be at most {self.max_n} (OPENAI_MAX_N)"
            raise InvalidChatRequest([(("body", "n"), message, "less_than_equal")])
