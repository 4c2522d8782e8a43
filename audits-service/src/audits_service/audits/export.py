"""Streamed exports: every matching record, newest first, as NDJSON or CSV.

PostgreSQL renders each row in the API's own text forms (a JSON object per line, or one
text field per column), the columns taken from `AuditRecordResponse`, so the service only
joins text. Rows are read in keyset chunks of `EXPORT_CHUNK_ROWS`, each on a pooled
connection given back before the chunk is sent: an export holds one chunk in memory, a
slow client holds no connection, and no query uses OFFSET (each is an index range scan).
Each chunk is its own snapshot: a record created after the export started is not in it; one
changed or deleted while it runs appears as it is when its chunk is read.
"""

import csv
import io
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from loguru import logger
from sqlalchemy import ColumnElement, DateTime, Row, Text, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from audits_service.audits.constants import (
    CSV_MEDIA_TYPE,
    EXPORT_CHUNK_ROWS,
    NDJSON_MEDIA_TYPE,
    ExportFormat,
)
from audits_service.audits.models import audit_record
from audits_service.audits.schemas import AuditExportParams, AuditRecordResponse
from audits_service.audits.service import (
    NEWEST_FIRST,
    filter_conditions,
    filter_values,
    listed_after,
)
from audits_service.database import DatabaseUnavailable, is_unavailable
from audits_service.streaming import ClosingStreamingResponse, StreamInterrupted
from servicekit import ServiceError
from servicekit.problems import problem_body

FIELDS = tuple(AuditRecordResponse.model_fields)

# (created_at, id, then the rendered line or fields) per record.
_Row = Row[*tuple[Any, ...]]
_Rows = Sequence[_Row]


def _as_api_text(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The column as the API prints it: timestamps as RFC 3339 UTC with `Z` and
    microseconds only when there are any (Python's `isoformat`), other types through their
    own read expression (`host()` for an address) or as stored."""
    if isinstance(column.type, DateTime):
        utc = func.timezone("UTC", column)
        whole = func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS')
        fraction = case((func.date_trunc("second", utc) == utc, ""), else_=func.to_char(utc, ".US"))
        return func.concat(whole, fraction, "Z")
    expression = column.type.column_expression(column)
    return column if expression is None else expression


_VALUES = [_as_api_text(audit_record.c[name]) for name in FIELDS]
# `row_to_json` of a correlated subquery keeps the fields' order and compact separators.
_LINE_FIELDS = select(*(value.label(name) for name, value in zip(FIELDS, _VALUES, strict=True)))
_JSON_LINE = cast(
    select(
        func.row_to_json(_LINE_FIELDS.correlate(audit_record).subquery().table_valued())
    ).scalar_subquery(),
    Text,
)
_CSV_FIELDS = [cast(value, Text) for value in _VALUES]


def _ndjson(rows: _Rows) -> bytes:
    return "".join(f"{row[2]}\n" for row in rows).encode()


def _csv(rows: _Rows) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(row[2:] for row in rows)
    return buffer.getvalue().encode()


# What a spreadsheet would read as the start of a formula (OWASP's CSV injection list),
# and the escape itself, so that escaped and stored values never read alike.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _defused(field: str | None) -> str | None:
    return "'" + field if field and field.startswith(_FORMULA_STARTS) else field


def _csv_escaped(rows: _Rows) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([_defused(field) for field in row[2:]] for row in rows)
    return buffer.getvalue().encode()


def _csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(FIELDS)
    return buffer.getvalue().encode()


@dataclass(frozen=True, slots=True)
class _Format:
    media_type: str
    extension: str
    columns: Sequence[ColumnElement[Any]]
    header: bytes
    encode: Callable[[_Rows], bytes]


_FORMATS = {
    ExportFormat.NDJSON: _Format(NDJSON_MEDIA_TYPE, "ndjson", [_JSON_LINE], b"", _ndjson),
    ExportFormat.CSV: _Format(CSV_MEDIA_TYPE, "csv", _CSV_FIELDS, _csv_header(), _csv),
}
_ESCAPED_CSV = _Format(CSV_MEDIA_TYPE, "csv", _CSV_FIELDS, _csv_header(), _csv_escaped)


class ExportResponse(ClosingStreamingResponse):
    """A streamed export: its database work stops when the response ends; a CSV export
    that fails mid-way ends truncated."""

    media_type = NDJSON_MEDIA_TYPE


class _Export:
    """One export: its query, its position, and the chunks it has sent."""

    def __init__(self, engine: AsyncEngine, params: AuditExportParams, path: str) -> None:
        self.engine = engine
        escaped = params.escape_formulas and params.format is ExportFormat.CSV
        self.format = _ESCAPED_CSV if escaped else _FORMATS[params.format]
        self.filters = filter_values(params)
        self.conditions = filter_conditions(frozenset(self.filters))
        self.path = path
        self.rows_sent = 0

    async def fetch(self, after: _Row | None) -> _Rows:
        """The next chunk, on a connection of its own; a database failure is a 503."""
        c = audit_record.c
        query = select(c.created_at, c.id, *self.format.columns).where(*self.conditions)
        if after is not None:
            query = query.where(listed_after(after.created_at, after.id))
        query = query.order_by(*NEWEST_FIRST).limit(EXPORT_CHUNK_ROWS)
        try:
            # Shielded: a client leaving mid-query lets the query finish and the connection
            # go back to the pool clean, instead of cancelling it half-way through.
            with anyio.CancelScope(shield=True):
                async with self.engine.connect() as connection:
                    rows = (await connection.execute(query, self.filters)).all()
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable from exc
            raise
        return rows

    async def chunks(self, first: _Rows) -> AsyncGenerator[bytes, None]:
        finished = False
        try:
            rows = first
            yield self.format.header + self.format.encode(rows)
            self.rows_sent += len(rows)
            while len(rows) == EXPORT_CHUNK_ROWS:
                try:
                    rows = await self.fetch(rows[-1])
                except Exception as exc:  # mid-stream: the status line is already sent
                    yield self._failed(exc)
                    return
                yield self.format.encode(rows)
                self.rows_sent += len(rows)
            finished = True
        finally:
            logger.info(
                "export finished" if finished else "export stopped",
                format=self.format.extension,
                rows=self.rows_sent,
            )

    def _failed(self, exc: Exception) -> bytes:
        error = exc if isinstance(exc, ServiceError) else ServiceError("The export failed.")
        if isinstance(exc, DatabaseUnavailable):
            logger.warning("export failed mid-stream: database unavailable", rows=self.rows_sent)
        else:
            logger.opt(exception=exc).error("export failed mid-stream", rows=self.rows_sent)
        if self.format.media_type != NDJSON_MEDIA_TYPE:
            raise StreamInterrupted from exc
        problem = problem_body(error.status, error.code, error.title, error.detail, self.path)
        return orjson.dumps({"error": problem}) + b"\n"

    def filename(self) -> str:
        return f"audits-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{self.format.extension}"


async def export_audits(
    engine: AsyncEngine, params: AuditExportParams, path: str
) -> ExportResponse:
    """The export as a streamed response. The first chunk is read before the status line
    goes out, so a database that is down is a plain 503 problem, not a broken stream."""
    export = _Export(engine, params, path)
    first = await export.fetch(None)
    return ExportResponse(
        export.chunks(first),
        media_type=export.format.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename()}"',
            "Cache-Control": "no-store",
        },
    )
