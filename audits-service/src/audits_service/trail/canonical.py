"""The canonical serialisation and hash rules of the trail (the audits README publishes them).

An event's document is the JSON object
`{"at", "client_id", "op", "record_id", "request_id", "seq", "state"}`; a checkpoint's is
`{"events", "first_seq", "head", "id", "last_seq", "sealed_at"}`. Canonical bytes are what
`orjson.dumps(document, option=orjson.OPT_SORT_KEYS)` produces: UTF-8 JSON, keys sorted by
code point at every level, no whitespace. Times are RFC 3339 UTC with six fractional digits
and `Z`, hashes in documents lowercase hex.

    event hash      = SHA-256(previous event hash || canonical(event))
    checkpoint hash = SHA-256(previous checkpoint hash || canonical(checkpoint))

`||` joins the 32 raw bytes of the previous hash and the canonical bytes; the first event
and the first checkpoint chain to 32 zero bytes.
"""

import hashlib
from typing import Any

import orjson

GENESIS = bytes(32)

# How the database renders an event's time for hashing and for the API, identically.
SQL_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def canonical(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def chain(previous: bytes, document: dict[str, Any]) -> bytes:
    return hashlib.sha256(previous + canonical(document)).digest()


def event_document(row: Any) -> dict[str, Any]:
    """`row` holds `seq`, `record_id`, `op`, `at` and `state_json` as text, `request_id`
    and `client_id` (see `EVENT_COLUMNS`)."""
    return {
        "seq": row["seq"],
        "record_id": row["record_id"],
        "op": row["op"],
        "at": row["at"],
        "request_id": row["request_id"],
        "client_id": row["client_id"],
        "state": orjson.loads(row["state_json"]),
    }


# The columns of `audit_event e` as `event_document` reads them.
EVENT_COLUMNS = (
    "e.seq, e.record_id::text AS record_id, e.op,"
    f" to_char(e.at AT TIME ZONE 'UTC', '{SQL_TIME_FORMAT}') AS at,"
    " e.request_id, e.client_id, e.state::text AS state_json"
)


def checkpoint_document(row: Any) -> dict[str, Any]:
    """`row` holds the columns of `audit_checkpoint`, `sealed_at` rendered as text."""
    return {
        "id": row["id"],
        "first_seq": row["first_seq"],
        "last_seq": row["last_seq"],
        "events": row["events"],
        "head": bytes(row["head"]).hex(),
        "sealed_at": row["sealed_at"],
    }
