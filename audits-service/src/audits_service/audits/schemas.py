"""Request and response bodies of the audits API."""

import base64
import binascii
import ipaddress
import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self
from uuid import UUID

import orjson
from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from audits_service.audits.constants import (
    ACTOR_MAX_LENGTH,
    BATCH_MAX_RECORDS,
    DESCRIPTION_MAX_LENGTH,
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    OFFSET_MAX,
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    RESOURCE_ID_MAX_LENGTH,
    RESOURCE_TYPE_MAX_LENGTH,
    USER_AGENT_MAX_LENGTH,
    AuditAction,
    AuditStatus,
    ExportFormat,
)


def check_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot hold lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Actor = Annotated[
    str, StringConstraints(min_length=1, max_length=ACTOR_MAX_LENGTH), AfterValidator(check_text)
]
ResourceType = Annotated[
    str,
    StringConstraints(min_length=1, max_length=RESOURCE_TYPE_MAX_LENGTH),
    AfterValidator(check_text),
]
ResourceId = Annotated[
    str, StringConstraints(max_length=RESOURCE_ID_MAX_LENGTH), AfterValidator(check_text)
]
Description = Annotated[
    str, StringConstraints(max_length=DESCRIPTION_MAX_LENGTH), AfterValidator(check_text)
]
UserAgent = Annotated[
    str, StringConstraints(max_length=USER_AGENT_MAX_LENGTH), AfterValidator(check_text)
]


def _check_node(node: object, depth: int) -> bool:
    """Checks one metadata value and what it holds; True when a float is among them."""
    if isinstance(node, str):
        check_text(node)
        return False
    if isinstance(node, float):
        if not math.isfinite(node):
            raise ValueError("numbers must be finite")
        return True
    if not isinstance(node, dict | list):
        return False
    if depth > METADATA_MAX_DEPTH:
        raise ValueError(f"must not be nested more than {METADATA_MAX_DEPTH} levels deep")
    children: Iterable[object] = node
    if isinstance(node, dict):
        for key in node:
            check_text(key)
        children = node.values()
    floats = False
    for child in children:
        floats |= _check_node(child, depth + 1)
    return floats


def _json_size(value: dict[str, Any], floats: bool) -> int:
    """Bytes of `value` as compact JSON with the text unescaped, as `json.dumps` writes it.

    orjson writes the same bytes many times faster, except a float's negative exponent
    (`1e-7`, where `json` writes `1e-07`) and integers beyond 64 bits, which it refuses.
    """
    if not floats:
        try:
            return len(orjson.dumps(value))
        except TypeError:
            pass
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    # Recursion is bounded: the depth check stops it past METADATA_MAX_DEPTH levels.
    floats = _check_node(value, 1)
    size = _json_size(value, floats)
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"must not exceed {METADATA_MAX_BYTES} bytes as JSON (got {size})")
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_check_metadata),
    Field(
        description=(
            f"Free-form JSON object: at most {METADATA_MAX_BYTES} bytes as compact JSON and "
            f"{METADATA_MAX_DEPTH} levels of nesting (the object itself is level 1)."
        ),
        examples=[{"ticket": "SEC-42", "tags": ["mfa"]}],
    ),
]


# A dotted quad without leading zeros: already the address's normal form.
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
)


def _check_ip(value: str) -> str:
    if _CANONICAL_IPV4.fullmatch(value):
        return value
    if "%" in value:
        raise ValueError("must be an IPv4 or IPv6 address without a zone index")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be a valid IPv4 or IPv6 address") from None


IPAddress = Annotated[
    str,
    StringConstraints(max_length=45),
    AfterValidator(_check_ip),
    Field(
        examples=["203.0.113.7", "2001:db8::1"],
        json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
    ),
]

_EXAMPLE_CREATE: dict[str, JsonValue] = {
    "action": "login",
    "status": "success",
    "actor": "user:alice@example.com",
    "resource_type": "session",
    "resource_id": "sess_9f8e7d",
    "description": "Interactive login with MFA",
    "metadata": {"mfa": "totp", "tags": ["console"]},
    "ip_address": "203.0.113.7",
    "user_agent": "Mozilla/5.0",
}


class AuditRecordCreate(BaseModel):
    """A new audit record. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE_CREATE]})

    action: AuditAction = Field(description="What was done.")
    status: AuditStatus = Field(default=AuditStatus.SUCCESS, description="How it ended.")
    actor: Actor = Field(description="Who did it (1-255 characters).")
    resource_type: ResourceType = Field(description="Kind of resource acted on (1-100).")
    resource_id: ResourceId | None = Field(default=None, description="Which resource (≤ 255).")
    description: Description | None = Field(default=None, description="Free text (≤ 2000).")
    metadata: Metadata = Field(default_factory=dict)
    ip_address: IPAddress | None = Field(default=None, description="Client IPv4/IPv6 address.")
    user_agent: UserAgent | None = Field(default=None, description="Client user agent (≤ 512).")


class AuditRecordUpdate(BaseModel):
    """Any non-empty subset of the writable fields. Required fields cannot be set to null."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"status": "failure", "description": "MFA rejected"}],
            "minProperties": 1,
        },
    )

    action: AuditAction | MISSING = MISSING
    status: AuditStatus | MISSING = MISSING
    actor: Actor | MISSING = MISSING
    resource_type: ResourceType | MISSING = MISSING
    resource_id: ResourceId | MISSING | None = MISSING
    description: Description | MISSING | None = MISSING
    metadata: Metadata | MISSING = MISSING
    ip_address: IPAddress | MISSING | None = MISSING
    user_agent: UserAgent | MISSING | None = MISSING

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("at least one field must be given")
        return self


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _utc_text(value: datetime) -> str:
    """RFC 3339 in UTC with `Z`, microseconds only when there are any."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


UtcDatetime = Annotated[
    datetime,
    AfterValidator(_utc),
    PlainSerializer(_utc_text, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class AuditRecordResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "01a215df-8c84-7376-862d-f9dc91ca4485",
                    **_EXAMPLE_CREATE,
                    "request_id": "3f1c0b9e-8f7a-4a51-9a4e-0f6f1f2b9c11",
                    "client_id": "ci-bot",
                    "created_at": "2026-11-26T03:30:00.123456Z",
                    "updated_at": "2026-11-26T03:30:00.123456Z",
                }
            ]
        }
    )

    id: UUID
    action: AuditAction
    status: AuditStatus
    actor: str
    resource_type: str
    resource_id: str | None
    description: str | None
    metadata: dict[str, Any]
    ip_address: str | None
    user_agent: str | None
    request_id: str = Field(description="X-Request-ID of the request that created the record.")
    client_id: str | None = Field(
        description="The API client (its key's id) that created the record; null when the "
        "gateway's access control is off. Set by the platform, never by the request body."
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @field_validator("ip_address", mode="before")
    @classmethod
    def _inet_as_text(cls, value: object) -> object:
        return value if value is None or isinstance(value, str) else str(value)


RECORD_FIELDS = tuple(AuditRecordResponse.model_fields)


def record_values(row: Iterable[Any]) -> dict[str, Any]:
    """A record as `AuditRecordResponse` names its fields, from its values in that order."""
    return dict(zip(RECORD_FIELDS, row, strict=True))


def _api_value(value: object) -> str:
    # asyncpg's own UUID type is not one orjson knows.
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return _utc_text(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def render(document: Any) -> bytes:
    """A response body built from database values, as the response models serialise it:
    one call for a whole page instead of a model instance per record."""
    try:
        return orjson.dumps(document, default=_api_value, option=orjson.OPT_UTC_Z)
    except TypeError:
        # orjson refuses integers beyond 64 bits, which metadata may hold.
        text = json.dumps(document, default=_api_value, ensure_ascii=False, separators=(",", ":"))
        return text.encode()


_CURSOR_FORMAT = ">q16s"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last record of a page: (created_at, id) in listing order.

    Encoded as URL-safe base64 of microseconds since the epoch and the id's 16 bytes.
    """

    created_at: datetime
    id: UUID

    def encode(self) -> str:
        micros = (self.created_at - _EPOCH) // timedelta(microseconds=1)
        raw = struct.pack(_CURSOR_FORMAT, micros, self.id.bytes)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"==")
            micros, id_bytes = struct.unpack(_CURSOR_FORMAT, raw)
            return cls(_EPOCH + timedelta(microseconds=micros), UUID(bytes=id_bytes))
        except (ValueError, binascii.Error, struct.error, OverflowError):
            raise ValueError("is not a cursor returned by this API") from None


def _decode_cursor(value: object) -> object:
    return Cursor.decode(value) if isinstance(value, str) else value


CursorParam = Annotated[
    Cursor,
    BeforeValidator(_decode_cursor),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{32}$",
            "examples": ["AAZhJY7xQEABohXfjIRzdoYt-dyRykSF"],
        }
    ),
]


def _aware(value: datetime) -> datetime:
    """Timestamps without an offset are taken as UTC."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339(value: object) -> object:
    """Only RFC 3339 text: pydantic alone would also read `0.5` as a Unix time."""
    if isinstance(value, str) and not _RFC3339_START.match(value):
        raise ValueError("must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
    return value


FilterDatetime = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_aware)]


class AuditFilters(BaseModel):
    """The filters of listing and export; they combine with AND."""

    action: AuditAction | None = None
    status: AuditStatus | None = None
    actor: Actor | None = None
    resource_type: ResourceType | None = None
    resource_id: ResourceId | None = None
    created_from: FilterDatetime | None = Field(
        default=None, description="Records created at or after this instant (UTC if no offset)."
    )
    created_to: FilterDatetime | None = Field(
        default=None, description="Records created at or before this instant (UTC if no offset)."
    )

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        if self.created_from and self.created_to and self.created_from > self.created_to:
            raise ValueError("created_from must not be after created_to")
        return self


class AuditListParams(AuditFilters):
    """Query of `GET /api/v1/audits`."""

    limit: int = Field(
        default=PAGE_LIMIT_DEFAULT, ge=1, le=PAGE_LIMIT_MAX, description="Page size."
    )
    offset: int = Field(default=0, ge=0, le=OFFSET_MAX, description="Records to skip.")
    cursor: CursorParam | None = Field(
        default=None, description="`next_cursor` of the previous page (keyset pagination)."
    )
    include_total: bool = Field(
        default=True, description="Count the filtered records; false skips it (`total` null)."
    )

    @model_validator(mode="after")
    def _one_position(self) -> Self:
        if self.cursor is not None and self.offset:
            raise ValueError("use either cursor or offset, not both")
        return self


class AuditRecordPage(BaseModel):
    """One page of records, newest first (`created_at` descending, then `id` descending)."""

    items: list[AuditRecordResponse]
    total: int | None = Field(
        description="Records matching the filters (ignoring offset and cursor); null when "
        "include_total=false."
    )
    limit: int
    offset: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


# -- export and bulk ingest -----------------------------------------------------------------


class AuditExportParams(AuditFilters):
    """Query of `GET /api/v1/audits/export`: the listing's filters, no paging."""

    # Paging parameters of the listing are refused rather than silently ignored.
    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = Field(
        default=ExportFormat.NDJSON,
        description="`ndjson`: one record (JSON object) per line. `csv`: RFC 4180, a header "
        "row, `metadata` as a JSON string.",
    )
    escape_formulas: bool = Field(
        default=False,
        description="CSV only (NDJSON ignores it): a field starting with `=`, `+`, `-`, `@`, "
        "a tab, a carriage return or `'` gets one `'` put in front, so a spreadsheet shows "
        "it as text instead of running it as a formula. Reversible: remove one leading `'` "
        "from every field that has one to get the stored values back.",
    )


class AuditBatchCreate(BaseModel):
    """Records created together, all or none. Unknown fields are rejected."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "records": [
                        _EXAMPLE_CREATE,
                        {"action": "logout", "actor": "user:alice@example.com",
                         "resource_type": "session", "resource_id": "sess_9f8e7d"},
                    ]
                }
            ]
        },
    )  # fmt: skip

    records: list[AuditRecordCreate] = Field(
        min_length=1,
        max_length=BATCH_MAX_RECORDS,
        description=f"1-{BATCH_MAX_RECORDS} new records.",
    )


class AuditRecordBatch(BaseModel):
    """The stored records of a batch, in the order they were given."""

    items: list[AuditRecordResponse]
