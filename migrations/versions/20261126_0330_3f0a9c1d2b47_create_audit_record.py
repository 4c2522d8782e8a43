"""Initial schema: the audit_record table and its listing indexes.

`action` and `status` are VARCHAR + CHECK, not PostgreSQL ENUM types: a later migration
can change the allowed values with a transactional, reversible constraint swap.

Revision ID: 3f0a9c1d2b47
Revises:
Create Date: 2026-11-26 03:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3f0a9c1d2b47"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIONS = (
    "create",
    "read",
    "update",
    "delete",
    "login",
    "logout",
    "access",
    "export",
    "import",
    "execute",
)
STATUSES = ("success", "failure", "denied", "pending")

# (name, leading equality columns); each continues with created_at DESC, id DESC.
LISTING_INDEXES = (
    ("ix_audit_record_created_at_id", ()),
    ("ix_audit_record_action_created_at_id", ("action",)),
    ("ix_audit_record_status_created_at_id", ("status",)),
    ("ix_audit_record_actor_created_at_id", ("actor",)),
    ("ix_audit_record_resource_type_resource_id_created_at_id", ("resource_type", "resource_id")),
    ("ix_audit_record_resource_id_created_at_id", ("resource_id",)),
)


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), server_default="success", nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("resource_type", sa.String(100), nullable=False),
        sa.Column("resource_id", sa.String(255), nullable=True),
        sa.Column("description", sa.String(2000), nullable=True),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("ip_address", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_record")),
        sa.CheckConstraint(_in_list("action", ACTIONS), name=op.f("ck_audit_record_action")),
        sa.CheckConstraint(_in_list("status", STATUSES), name=op.f("ck_audit_record_status")),
    )
    for name, columns in LISTING_INDEXES:
        op.create_index(
            name,
            "audit_record",
            [*columns, sa.text("created_at DESC"), sa.text("id DESC")],
        )


def downgrade() -> None:
    for name, _ in reversed(LISTING_INDEXES):
        op.drop_index(name, table_name="audit_record")
    op.drop_table("audit_record")
