"""Idempotency keys scoped to the API client: the primary key becomes (client_id, key).

With access control on, two clients sending the same `Idempotency-Key` are two requests:
neither may get the other's record back. `client_id` is the gateway's key id, empty while
access control is off; every key stored before this revision is an anonymous one.

Downgrading drops the keys of identified clients (two of them may share a key, which the
old primary key cannot hold): a retry of theirs within the TTL then creates a new record.

Revision ID: 9e4f2a6c1b73
Revises: 5d2b7e91c4a8
Create Date: 2026-12-02 14:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9e4f2a6c1b73"
down_revision: str | None = "5d2b7e91c4a8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PRIMARY_KEY = "pk_idempotency_key"


def upgrade() -> None:
    op.add_column(
        "idempotency_key",
        sa.Column("client_id", sa.String(128), server_default="", nullable=False),
    )
    op.drop_constraint(_PRIMARY_KEY, "idempotency_key", type_="primary")
    op.create_primary_key(_PRIMARY_KEY, "idempotency_key", ["client_id", "key"])


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_key WHERE client_id <> ''")
    op.drop_constraint(_PRIMARY_KEY, "idempotency_key", type_="primary")
    op.create_primary_key(_PRIMARY_KEY, "idempotency_key", ["key"])
    op.drop_column("idempotency_key", "client_id")
