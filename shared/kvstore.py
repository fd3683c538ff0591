"""A small compare-and-set key-value seam: a JetStream KV bucket, or a dict in unit tests.

The collectors' adapter placement and the pickers' rollout state are shared records that
several processes update at once. Both only need what a JetStream KV bucket gives:
read a value with its revision, create a key only if absent, replace it only if nobody
changed it since (``update(..., revision)``), delete it, and list keys. Every writer
retries on a conflict with the fresh value, so no update is ever lost and no lock is held.

:class:`NatsKv` wraps nats-py's ``KeyValue`` (``js.create_key_value`` / ``js.key_value``);
:class:`MemoryKv` is the in-process stand-in for unit tests (services and integration
tests use the real bucket). Keys must match JetStream's ``[-/_=.a-zA-Z0-9]+``:
:func:`kv_token` escapes arbitrary names into one key token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

__all__ = ["Conflict", "Entry", "KvStore", "MemoryKv", "NatsKv", "kv_token", "open_bucket"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def kv_token(name: str) -> str:
    """Escape ``name`` into one KV key token (``.`` -> ``=2e``); reversible, never empty."""
    if not name:
        raise ValueError("a key token cannot be empty")
    return _UNSAFE.sub(lambda m: "".join(f"={b:02x}" for b in m.group().encode()), name)


@dataclass(frozen=True, slots=True)
class Entry:
    value: bytes
    revision: int


class Conflict(Exception):
    """The key changed (or exists) since it was read: read again and retry."""


class KvStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: bytes) -> int: ...

    async def update(self, key: str, value: bytes, revision: int) -> int: ...

    async def delete(self, key: str, revision: int | None = None) -> None: ...

    async def keys(self) -> list[str]: ...


class MemoryKv:
    """A dict with revisions: the same semantics as :class:`NatsKv` (unit tests only)."""

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.revision = 0

    async def get(self, key: str) -> Entry | None:
        return self.data.get(key)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.data:
            raise Conflict(key)
        return self._set(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        cur = self.data.get(key)
        if cur is None or cur.revision != revision:
            raise Conflict(key)
        return self._set(key, value)

    async def delete(self, key: str, revision: int | None = None) -> None:
        cur = self.data.get(key)
        if cur is None:
            return
        if revision is not None and cur.revision != revision:
            raise Conflict(key)
        del self.data[key]

    async def keys(self) -> list[str]:
        return sorted(self.data)

    def _set(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.data[key] = Entry(bytes(value), self.revision)
        return self.revision


class NatsKv:
    """A JetStream KV bucket behind :class:`KvStore`; ``Conflict`` on a lost race."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    async def get(self, key: str) -> Entry | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            e = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if e.value is None or e.operation in ("DEL", "PURGE"):
            return None
        return Entry(e.value, e.revision)

    async def create(self, key: str, value: bytes) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return await self.kv.create(key, value)
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def update(self, key: str, value: bytes, revision: int) -> int:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            return await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def delete(self, key: str, revision: int | None = None) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            await self.kv.delete(key, last=revision)
        except KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def keys(self) -> list[str]:
        from nats.js.errors import NoKeysError

        try:
            return sorted(await self.kv.keys())
        except NoKeysError:
            return []


async def open_bucket(nc: Any, bucket: str, *, replicas: int = 1, file_storage: bool = True) -> NatsKv:
    """Open ``bucket``, creating it if absent (idempotent; every process may call it).

    File storage by default: the records must survive a nats-server restart (a picker
    restart is covered either way, since the bucket lives in NATS).
    """
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, BucketNotFoundError

    js = nc.jetstream(timeout=2.0)
    try:
        return NatsKv(await js.key_value(bucket))
    except BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket,
        history=1,
        replicas=replicas,
        storage=StorageType.FILE if file_storage else StorageType.MEMORY,
    )
    try:
        return NatsKv(await js.create_key_value(config))
    except BadRequestError:  # another process created it first
        return NatsKv(await js.key_value(bucket))
