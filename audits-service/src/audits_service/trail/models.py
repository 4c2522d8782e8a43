"""Tables of the trail. Rows are written by the `audit_record_log_event` trigger (events)
and by the sealer (hashes, checkpoints); the database refuses UPDATE and DELETE on all three.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Identity, Index, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from audits_service.audits.constants import CLIENT_ID_MAX_LENGTH, REQUEST_ID_MAX_LENGTH
from audits_service.database import Base


class AuditEvent(Base):
    __tablename__ = "audit_event"

    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    record_id: Mapped[UUID]
    op: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX_LENGTH))
    client_id: Mapped[str | None] = mapped_column(String(CLIENT_ID_MAX_LENGTH))
    # The record after the change; the removed record for delete and purge.
    state: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint("op IN ('create', 'update', 'delete', 'purge')", name="op"),
        Index("ix_audit_event_record_id_seq", "record_id", "seq"),
    )


class AuditEventHash(Base):
    """The chained hash of a sealed event (unsealed events have none yet)."""

    __tablename__ = "audit_event_hash"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes]


class AuditCheckpoint(Base):
    """A sealed range of events: `head` is the hash of its last event, `hash` chains the
    checkpoint to the one before (`prev_hash`)."""

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    events: Mapped[int]
    head: Mapped[bytes] = mapped_column(index=True)
    prev_hash: Mapped[bytes]
    hash: Mapped[bytes]
    sealed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
