"""The tamper-evident trail: events written by a trigger, their hashes, sealed checkpoints.

Every INSERT, UPDATE and DELETE on `audit_record` appends one row to `audit_event` from an
AFTER ROW trigger, in the same transaction, whoever makes the change (the service, a batch,
an operator in psql). The trigger function is SECURITY DEFINER, so the service's role needs
no privilege on `audit_event` beyond SELECT. `audit_event`, `audit_event_hash` and
`audit_checkpoint` refuse UPDATE, DELETE and TRUNCATE for everyone (a statement trigger),
and the group role `audits_app`, which the service's login role joins, holds only the
privileges it needs. Existing records get a `create` event here.

Revision ID: c4e7a1f09b32
Revises: 8b21e4c7d9a0
Create Date: 2026-12-01 21:50:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "c4e7a1f09b32"
down_revision: str | None = "8b21e4c7d9a0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SERVICE_ROLE = "audits_app"
APPEND_ONLY = ("audit_event", "audit_event_hash", "audit_checkpoint")
GRANTS = (
    ("SELECT, INSERT, UPDATE, DELETE", "audit_record"),
    ("SELECT, INSERT, UPDATE, DELETE", "idempotency_key"),
    ("SELECT", "audit_event"),
    ("SELECT, INSERT", "audit_event_hash"),
    ("SELECT, INSERT", "audit_checkpoint"),
    ("SELECT", "alembic_version"),
)

# The event's state is the row as `to_jsonb` renders it (column names as keys), with
# timestamps in UTC whatever the changing session's TimeZone. request_id of an insert is the
# row's own; an update or delete reads the transaction-local setting `audit.request_id`
# (the service sets it in the same statement). `audit.purge` on turns a delete into `purge`.
EVENT_FUNCTION = """
CREATE FUNCTION audit_record_log_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET TimeZone = 'UTC' AS $$
DECLARE
  changed audit_record;
  kind text;
  request text := nullif(current_setting('audit.request_id', true), '');
BEGIN
  IF TG_OP = 'INSERT' THEN
    changed := NEW; kind := 'create'; request := NEW.request_id;
  ELSIF TG_OP = 'UPDATE' THEN
    changed := NEW; kind := 'update';
  ELSE
    changed := OLD;
    kind := CASE WHEN current_setting('audit.purge', true) = 'on' THEN 'purge' ELSE 'delete' END;
  END IF;
  INSERT INTO audit_event (record_id, op, request_id, client_id, state)
  VALUES (changed.id, kind, request, nullif(current_setting('audit.client_id', true), ''),
          to_jsonb(changed));
  RETURN NULL;
END
$$
"""

REFUSE_FUNCTION = """
CREATE FUNCTION audit_trail_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% on % refused: the audit trail is append-only', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""

CREATE_ROLE = f"""
DO $$
BEGIN
  CREATE ROLE {SERVICE_ROLE} NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$
"""

# Roles belong to the whole server: drop it only when no other database still uses it.
DROP_ROLE = f"""
DO $$
BEGIN
  DROP ROLE IF EXISTS {SERVICE_ROLE};
EXCEPTION WHEN dependent_objects_still_exist THEN NULL;
END
$$
"""


def _create_tables() -> None:
    op.create_table(
        "audit_event",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("state", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_event")),
        sa.CheckConstraint(
            "op IN ('create', 'update', 'delete', 'purge')", name=op.f("ck_audit_event_op")
        ),
    )
    op.create_index(op.f("ix_audit_event_record_id_seq"), "audit_event", ["record_id", "seq"])
    op.create_table(
        "audit_event_hash",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_event_hash")),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("head", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
    )
    op.create_index(op.f("ix_audit_checkpoint_head"), "audit_checkpoint", ["head"])


def upgrade() -> None:
    _create_tables()
    op.execute(EVENT_FUNCTION)
    op.execute(REFUSE_FUNCTION)
    op.execute(
        "CREATE TRIGGER audit_record_log_event AFTER INSERT OR UPDATE OR DELETE ON audit_record"
        " FOR EACH ROW EXECUTE FUNCTION audit_record_log_event()"
    )
    # A TRUNCATE would remove records without leaving their events.
    op.execute(
        "CREATE TRIGGER audit_record_no_truncate BEFORE TRUNCATE ON audit_record"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_refuse_change()"
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_refuse_change()"
        )
    op.execute("SET LOCAL TimeZone = 'UTC'")
    op.execute(
        "INSERT INTO audit_event (record_id, op, request_id, state)"
        " SELECT r.id, 'create', r.request_id, to_jsonb(r)"
        " FROM audit_record r ORDER BY r.created_at, r.id"
    )
    # Fresh statistics, so the sealer's first range scans over a large backfill use the index.
    op.execute("ANALYZE audit_event")
    op.execute(CREATE_ROLE)
    op.execute(f"GRANT USAGE ON SCHEMA {_schema()} TO {SERVICE_ROLE}")
    for privileges, table in GRANTS:
        op.execute(f"GRANT {privileges} ON {table} TO {SERVICE_ROLE}")
    op.execute(f"GRANT SELECT ON SEQUENCE audit_event_seq_seq TO {SERVICE_ROLE}")


def _schema() -> str:
    schema: str = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    return '"' + schema.replace('"', '""') + '"'


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON SEQUENCE audit_event_seq_seq FROM {SERVICE_ROLE}")
    for _, table in reversed(GRANTS):
        op.execute(f"REVOKE ALL ON {table} FROM {SERVICE_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA {_schema()} FROM {SERVICE_ROLE}")
    op.execute(DROP_ROLE)
    op.execute("DROP TRIGGER audit_record_no_truncate ON audit_record")
    op.execute("DROP TRIGGER audit_record_log_event ON audit_record")
    op.execute("DROP FUNCTION audit_record_log_event()")
    op.drop_index(op.f("ix_audit_checkpoint_head"), table_name="audit_checkpoint")
    op.drop_table("audit_checkpoint")
    op.drop_table("audit_event_hash")
    op.drop_index(op.f("ix_audit_event_record_id_seq"), table_name="audit_event")
    op.drop_table("audit_event")
    op.execute("DROP FUNCTION audit_trail_refuse_change()")
