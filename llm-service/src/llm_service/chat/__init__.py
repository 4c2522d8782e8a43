"""Chat completions against OpenAI (or a compatible API): our shape and OpenAI's wire format."""
