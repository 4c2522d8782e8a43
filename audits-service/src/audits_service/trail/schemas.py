"""Response bodies of the trail routes."""

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, JsonValue

_HASH = "^[0-9a-f]{64}$"
_EXAMPLE_HASH = "5c2b8e0f4f3e1d6a9b7c0e2d4f6a8b0c1d3e5f7a9b0c2d4e6f8a0b1c3d5e7f9a"
_EXAMPLE_STATE: dict[str, JsonValue] = {
    "id": "01a215df-8c84-7376-862d-f9dc91ca4485",
    "action": "login",
    "status": "failure",
    "actor": "user:alice@example.com",
    "resource_type": "session",
    "resource_id": "sess_9f8e7d",
    "description": None,
    "metadata": {"reason": "mfa_rejected"},
    "ip_address": "203.0.113.7",
    "user_agent": "Mozilla/5.0",
    "request_id": "checkout-7f3a",
    "created_at": "2026-11-26T03:30:00.123456Z",
    "updated_at": "2026-11-26T03:31:12.000042Z",
}


class AuditEventResponse(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "seq": 1042,
                    "record_id": "01a215df-8c84-7376-862d-f9dc91ca4485",
                    "op": "update",
                    "at": "2026-11-26T03:31:12.000042Z",
                    "request_id": "c0ffee-42",
                    "client_id": None,
                    "state": _EXAMPLE_STATE,
                    "hash": _EXAMPLE_HASH,
                }
            ]
        }
    }

    seq: int = Field(description="Position in the trail; increasing, gaps are rolled back.")
    record_id: UUID
    op: Literal["create", "update", "delete", "purge"]
    at: str = Field(description="Start of the transaction that made the change (RFC 3339 UTC).")
    request_id: str | None = Field(
        description="X-Request-ID of the changing request; null for changes made outside the "
        "API (e.g. by hand in psql)."
    )
    client_id: str | None = Field(description="The API client; null while access control is off.")
    state: dict[str, Any] = Field(
        description="The record after the change; for delete and purge, the removed record."
    )
    hash: str | None = Field(
        description="SHA-256 chaining this event to the one before (hex); null until sealed."
    )


class AuditHistory(BaseModel):
    """Events, oldest first (deleted and purged records keep theirs)."""

    items: list[AuditEventResponse]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null on the last page."
    )


class TrailHead(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {"seq": 1042, "hash": _EXAMPLE_HASH, "sealed_at": "2026-11-26T03:31:20.000100Z"}
            ]
        }
    }

    seq: int = Field(description="seq of the last sealed event (0: nothing sealed yet).")
    hash: str = Field(
        pattern=_HASH, description="Hash of that event (64 zeros before the first seal)."
    )
    sealed_at: str | None = Field(description="When its checkpoint was sealed (RFC 3339 UTC).")


class BrokenAt(BaseModel):
    seq: int | None = Field(description="The first event found broken or missing.")
    reason: str
    record_id: UUID | None = None
    checkpoint: int | None = None


class VerifyReport(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "status": "intact",
                    "events_checked": 1042,
                    "checkpoints_checked": 7,
                    "head": {
                        "seq": 1042,
                        "hash": _EXAMPLE_HASH,
                        "sealed_at": "2026-11-26T03:31:20.000100Z",
                    },
                    "first_broken": None,
                },
                {
                    "status": "broken",
                    "events_checked": 311,
                    "checkpoints_checked": 2,
                    "head": {
                        "seq": 1042,
                        "hash": _EXAMPLE_HASH,
                        "sealed_at": "2026-11-26T03:31:20.000100Z",
                    },
                    "first_broken": {
                        "seq": 312,
                        "reason": "event hash mismatch",
                        "record_id": "01a215df-8c84-7376-862d-f9dc91ca4485",
                        "checkpoint": None,
                    },
                },
            ]
        }
    }

    status: Literal["intact", "broken"]
    events_checked: int = Field(description="Sealed events whose hash was recomputed.")
    checkpoints_checked: int
    head: TrailHead
    first_broken: BrokenAt | None
