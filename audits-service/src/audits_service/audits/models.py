"""Tables of the audits service.

`action` and `status` are VARCHAR columns guarded by CHECK constraints, not PostgreSQL
ENUM types. Changing the allowed set is then one ordinary, transactional and reversible
migration (drop the constraint, add the new one, `NOT VALID` + `VALIDATE` if the table is
large), whereas a PostgreSQL ENUM value added by `ALTER TYPE … ADD VALUE` cannot be used
in the transaction that adds it and can never be removed again (a downgrade means
recreating the type and rewriting every row).
"""

import os
import time
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, DateTime, Enum, Index, String, TypeDecorator, func, text
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from audits_service.audits.constants import (
    ACTOR_MAX_LENGTH,
    CLIENT_ID_MAX_LENGTH,
    DESCRIPTION_MAX_LENGTH,
    ENUM_COLUMN_LENGTH,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    REQUEST_ID_MAX_LENGTH,
    RESOURCE_ID_MAX_LENGTH,
    RESOURCE_TYPE_MAX_LENGTH,
    USER_AGENT_MAX_LENGTH,
    AuditAction,
    AuditStatus,
)
from audits_service.database import Base


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7).

    New rows then land at the right edge of the primary-key B-tree instead of on a
    random page, which keeps inserts cheap when the table holds millions of rows.
    """
    milliseconds = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")
    value = (
        (milliseconds & (2**48 - 1)) << 80
        | 0x7 << 76
        | ((random >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | random & (2**62 - 1)
    )
    return UUID(int=value)


def _checked_enum(enum: type[StrEnum], name: str) -> Enum:
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=ENUM_COLUMN_LENGTH,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class InetText(TypeDecorator[str]):
    """`inet`, read back as PostgreSQL's text of the address (`host()`), never as Python's.

    Every read, the export rendered by the database included, then prints an address the
    same way: RFC 5952, e.g. `::ffff:192.0.2.1` where Python would print `::ffff:c000:201`.
    """

    impl = INET
    cache_ok = True

    def column_expression(self, column: ColumnElement[str]) -> ColumnElement[str]:
        return func.host(column, type_=String)


def _timestamp() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditRecord(Base):
    __tablename__ = "audit_record"

    id: Mapped[UUID] = mapped_column(
        primary_key=True, default=uuid7, server_default=func.gen_random_uuid()
    )
    action: Mapped[AuditAction] = mapped_column(_checked_enum(AuditAction, "action"))
    status: Mapped[AuditStatus] = mapped_column(
        _checked_enum(AuditStatus, "status"), server_default=AuditStatus.SUCCESS.value
    )
    actor: Mapped[str] = mapped_column(String(ACTOR_MAX_LENGTH))
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_MAX_LENGTH))
    resource_id: Mapped[str | None] = mapped_column(String(RESOURCE_ID_MAX_LENGTH))
    description: Mapped[str | None] = mapped_column(String(DESCRIPTION_MAX_LENGTH))
    # `metadata` is taken by the declarative base, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    ip_address: Mapped[str | None] = mapped_column(InetText)
    user_agent: Mapped[str | None] = mapped_column(String(USER_AGENT_MAX_LENGTH))
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_MAX_LENGTH))
    # The API client (the gateway's key id) that created the record; null without auth.
    client_id: Mapped[str | None] = mapped_column(String(CLIENT_ID_MAX_LENGTH))
    created_at: Mapped[datetime] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()

    # Newest first with `id` as the tie-break, alone and behind each equality filter, so
    # every listing (offset or keyset) is an index range scan that stops after one page.
    __table_args__ = (
        Index("ix_audit_record_created_at_id", created_at.desc(), id.desc()),
        Index("ix_audit_record_action_created_at_id", action, created_at.desc(), id.desc()),
        Index("ix_audit_record_status_created_at_id", status, created_at.desc(), id.desc()),
        Index("ix_audit_record_actor_created_at_id", actor, created_at.desc(), id.desc()),
        Index(
            "ix_audit_record_resource_type_resource_id_created_at_id",
            resource_type,
            resource_id,
            created_at.desc(),
            id.desc(),
        ),
        Index(
            "ix_audit_record_resource_id_created_at_id", resource_id, created_at.desc(), id.desc()
        ),
    )


class IdempotencyKey(Base):
    """A client's `Idempotency-Key` with the response it got, kept until `expires_at`."""

    __tablename__ = "idempotency_key"

    # Keys are the client's own: one client's key never answers with another's record.
    # Empty while access control is off (every request is then the same, anonymous client).
    client_id: Mapped[str] = mapped_column(
        String(CLIENT_ID_MAX_LENGTH), primary_key=True, server_default=""
    )
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    # SHA-256 of the canonical request body, hex.
    fingerprint: Mapped[str] = mapped_column(String(64))
    audit_id: Mapped[UUID]
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _timestamp()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


audit_record = Base.metadata.tables[AuditRecord.__tablename__]
idempotency_key = Base.metadata.tables[IdempotencyKey.__tablename__]
