"""API keys: the keys file (only hashes in it), and the set in force, reloaded when the file
changes.

The file is YAML (JSON is YAML too): a list of entries, or `{"keys": [entries]}`, each
`{"id", "sha256", "scopes", "requests_per_minute"?, "tokens_per_minute"?}`. A key is looked
up by its SHA-256, and the stored digest is then compared in constant time, so neither the
lookup nor the comparison tells a caller how close a guess came.
"""

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from servicekit import VALID_CLIENT_ID

KEY_PREFIX = "gk_"
# Keys are this prefix and 43 URL-safe characters (32 random bytes): nothing else can match.
MAX_KEY_LENGTH = 256
# How often the file is looked at; a removed key stops working within this (plus a read).
RELOAD_INTERVAL = 0.25


class Scope(StrEnum):
    AUDITS_READ = "audits:read"
    AUDITS_WRITE = "audits:write"
    AUDITS_ADMIN = "audits:admin"
    LLM = "llm"


class KeyEntry(BaseModel):
    """One key as the file holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(pattern=f"^{VALID_CLIENT_ID.pattern}$")] = Field(
        description="The client's name: `X-Client-ID` upstream, `client_id` on audit records."
    )
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    scopes: frozenset[Scope]
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


class _KeyFile(BaseModel):
    keys: list[KeyEntry]


_ENTRIES = TypeAdapter(list[KeyEntry] | _KeyFile)


class KeyFileError(ValueError):
    """The keys file cannot be read, is not YAML, or breaks a rule (said in the message)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _unique(entries: Iterable[KeyEntry]) -> dict[str, KeyEntry]:
    by_hash: dict[str, KeyEntry] = {}
    ids: set[str] = set()
    for entry in entries:
        if entry.id in ids or entry.sha256 in by_hash:
            raise KeyFileError(f"key id {entry.id!r} or its sha256 appears twice")
        ids.add(entry.id)
        by_hash[entry.sha256] = entry
    return by_hash


def parse_keys(text: str) -> dict[str, KeyEntry]:
    """The entries of a keys file by hash; `KeyFileError` names what is wrong."""
    try:
        document: Any = yaml.safe_load(text)
        parsed = _ENTRIES.validate_python(document if document is not None else [])
    except yaml.YAMLError as exc:
        raise KeyFileError(f"not YAML or JSON: {exc}") from None
    except ValidationError as exc:
        # Only locations and messages: a rejected value could be a key pasted by mistake.
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        raise KeyFileError(problems) from None
    return _unique(parsed if isinstance(parsed, list) else parsed.keys)


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What changes when a file is rewritten or replaced (a Secret's symlink swap too)."""

    inode: int
    size: int
    mtime_ns: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _Stamp(stat.st_ino, stat.st_size, stat.st_mtime_ns)


class KeyStore:
    """The keys in force. `watch` reloads them when the file changes; a file that cannot be
    used keeps the last good set in force and logs why (once per change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp(path)
        # Raises at start-up: a gateway that should check keys never runs without them.
        self._keys = parse_keys(self._read())

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read {self.path}: {exc}") from None

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, presented: str) -> KeyEntry | None:
        digest = hash_key(presented)
        entry = self._keys.get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            return None
        return entry

    def reload_if_changed(self) -> bool:
        """Reads the file again if it changed; True when a new set is in force."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = parse_keys(self._read())
        except KeyFileError as exc:
            logger.error("keys file rejected, the previous keys stay in force", error=str(exc))
            return False
        self._keys = keys
        logger.info("keys file reloaded", keys=len(keys))
        return True

    async def watch(self, interval: float = RELOAD_INTERVAL) -> None:
        """Until cancelled: look at the file every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


def file_entry(
    key_id: str, key: str, scopes: Iterable[Scope], limits: Mapping[str, int | None]
) -> dict[str, Any]:
    """The keys file's entry for `key`, as `KeyEntry` validates it."""
    entry = KeyEntry(
        id=key_id,
        sha256=hash_key(key),
        scopes=frozenset(scopes),
        **{name: value for name, value in limits.items() if value is not None},
    )
    document = entry.model_dump(mode="json", exclude_none=True)
    document["scopes"] = sorted(document["scopes"])
    return document
