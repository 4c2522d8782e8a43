from enum import StrEnum


class AuditAction(StrEnum):
    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"
    LOGIN = "login"
    LOGOUT = "logout"
    ACCESS = "access"
    EXPORT = "export"
    IMPORT = "import"
    EXECUTE = "execute"


class AuditStatus(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"
    PENDING = "pending"


ACTOR_MAX_LENGTH = 255
RESOURCE_TYPE_MAX_LENGTH = 100
RESOURCE_ID_MAX_LENGTH = 255
DESCRIPTION_MAX_LENGTH = 2000
USER_AGENT_MAX_LENGTH = 512
REQUEST_ID_MAX_LENGTH = 128
CLIENT_ID_MAX_LENGTH = 128
# Room for new enum values without widening the column.
ENUM_COLUMN_LENGTH = 32

METADATA_MAX_BYTES = 16 * 1024
# The metadata object itself is level 1.
METADATA_MAX_DEPTH = 10

PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 50
# PostgreSQL's OFFSET is a bigint.
OFFSET_MAX = 2**63 - 1

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENT_REPLAYED_HEADER = "Idempotent-Replayed"

# Sub-routes of /audits that are not record ids (the trail's): `/audits/{id}` never matches
# them, so another method on them is a 405, not a 422 for a malformed id.
COLLECTION_ROUTES = ("verify", "head", "events", "export", "batch")

BATCH_MAX_RECORDS = 1000


class ExportFormat(StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"


NDJSON_MEDIA_TYPE = "application/x-ndjson"
# RFC 4180 (with RFC 7111's `header` parameter): UTF-8, CRLF line ends, a header row.
CSV_MEDIA_TYPE = "text/csv; charset=utf-8; header=present"
# Rows per database round trip of an export, which bounds the memory one export holds.
EXPORT_CHUNK_ROWS = 1000
