"""`client_id` on audit records: the API client (the gateway's key id) that created one.

Null for records created while access control is off, and for every record before this
revision. The trail's trigger now takes a created record's client_id from the row itself
(as it does its request_id); an update or delete still reads the transaction-local setting
`audit.client_id`, which the service sets in the same statement.

Revision ID: 5d2b7e91c4a8
Revises: c4e7a1f09b32
Create Date: 2026-12-02 05:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5d2b7e91c4a8"
down_revision: str | None = "c4e7a1f09b32"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A created record's client_id from the row, as its request_id; an update's or delete's
# from the setting `audit.client_id`.
_EVENT_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_record_log_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET TimeZone = 'UTC' AS $$
DECLARE
  changed audit_record;
  kind text;
  request text := nullif(current_setting('audit.request_id', true), '');
  client text := nullif(current_setting('audit.client_id', true), '');
BEGIN
  IF TG_OP = 'INSERT' THEN
    changed := NEW; kind := 'create'; request := NEW.request_id; client := NEW.client_id;
  ELSIF TG_OP = 'UPDATE' THEN
    changed := NEW; kind := 'update';
  ELSE
    changed := OLD;
    kind := CASE WHEN current_setting('audit.purge', true) = 'on' THEN 'purge' ELSE 'delete' END;
  END IF;
  INSERT INTO audit_event (record_id, op, request_id, client_id, state)
  VALUES (changed.id, kind, request, client, to_jsonb(changed));
  RETURN NULL;
END
$$
"""

# The function as the previous revision created it, byte for byte.
_PREVIOUS_EVENT_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_record_log_event() RETURNS trigger
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


def upgrade() -> None:
    op.add_column("audit_record", sa.Column("client_id", sa.String(128), nullable=True))
    op.execute(_EVENT_FUNCTION)


def downgrade() -> None:
    op.execute(_PREVIOUS_EVENT_FUNCTION)
    op.drop_column("audit_record", "client_id")
