"""Hardened OpenAI wrapper: one retry policy, streaming, OpenAI wire compatibility."""

__version__ = "0.1.0"
