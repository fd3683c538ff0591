"""Request ids as the picker keeps them: a client's id, bounded in length.

The client's ``x-request-id`` keys the picker's in-flight entries, the peers' event ledgers,
the shared events on the bus and the autoscaler's open requests, each kept for up to the
in-flight TTL. Those tables bound their entry *count*; this bounds each entry's *size*: an
id longer than :data:`MAX_REQUEST_ID` characters (Envoy accepts header values of tens of KB)
is kept as a digest of itself, the same for every copy, so completions still match their
assignments. The request forwarded to the pod keeps the client's header untouched.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_REQUEST_ID", "bounded_request_id"]

MAX_REQUEST_ID = 256  # a UUID is 36; W3C trace ids 32; generous for composed ids


def bounded_request_id(value: str) -> str:
    """``value`` itself when short enough, else ``sha256:`` and the first 32 hex digits of its digest."""
    if len(value) <= MAX_REQUEST_ID:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]
