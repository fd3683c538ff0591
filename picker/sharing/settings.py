"""Tunables of the sharing layer, with the flags (and ``INFERGATE_*`` env fallbacks) that set them.

The defaults are the measured trade-off documented in ``picker/sharing/README.md``:
a 5 ms linger bounds the added latency, the 128-event cap bounds message size, and at
1,000 requests/s per replica they cut bus messages about tenfold against one message
per event.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["SharingSettings", "add_sharing_flags", "default_replica_name", "settings_from_args"]


def default_replica_name() -> str:
    """The host name (``HOSTNAME``, the pod name in Kubernetes) plus a random suffix.

    The host name alone collides when two pickers run on one host (two processes, a pod
    restarted while the old one drains): they would skip each other's events as their own.
    The suffix makes the default unique; give ``--replica-name`` (e.g. a StatefulSet pod
    name) for a name that is stable across restarts, which lets a restarted replica find
    its own past events as its own.
    """
    host = os.environ.get("HOSTNAME") or socket.gethostname() or "picker"
    return f"{host}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class SharingSettings:
    replica: str = "picker"
    flush_interval_s: float = 0.005  # linger before publishing a partial batch
    max_batch: int = 128  # events per EventBatch; a full batch is published at once
    buffer_events: int = 8192  # bounded queue of unpublished events (drop-oldest when full)
    max_event_age_s: float = 30.0  # unpublished events older than this are dropped (stream max_age)
    heartbeat_interval_s: float = 1.0  # an empty batch when idle, so peers know we are alive
    peer_timeout_s: float = 3.5  # silence after which a peer's open requests are released (0 = never)
    replay_window_s: float = 30.0  # how far back a starting replica replays the event stream
    ready_timeout_s: float = 10.0  # become ready anyway if the replay cannot finish (counted)
    dedup_ttl_s: float = 60.0  # how long applied request ids are remembered (>= stream max_age)
    enabled: bool = True


def add_sharing_flags(parser: Any) -> None:
    """Register the flags on an :class:`shared.config.EnvArgumentParser` (env: ``INFERGATE_<FLAG>``)."""
    d = SharingSettings()
    add = parser.add_argument_group("peer sharing").add_argument
    add("--replica-name", default=None, help="this replica's unique name (default: $HOSTNAME-<random>)")
    add(
        "--share-peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="publish own traffic and follow peers' traffic over NATS",
    )
    add("--share-flush-ms", type=float, default=d.flush_interval_s * 1000, help="batch linger, ms")
    add("--share-max-batch", type=int, default=d.max_batch, help="max events per published batch")
    add("--share-buffer", type=int, default=d.buffer_events, help="max unpublished events kept")
    add("--share-heartbeat-s", type=float, default=d.heartbeat_interval_s, help="idle heartbeat period")
    add(
        "--share-peer-timeout-s",
        type=float,
        default=d.peer_timeout_s,
        help="release a silent peer's open requests after this long (0: only the scheduler's TTL)",
    )
    add(
        "--share-replay-window-s",
        type=float,
        default=d.replay_window_s,
        help="replay this much event history at start",
    )
    add(
        "--share-ready-timeout-s",
        type=float,
        default=d.ready_timeout_s,
        help="report ready after this long even if the replay did not finish",
    )
    add(
        "--share-dedup-ttl-s",
        type=float,
        default=d.dedup_ttl_s,
        help="remember applied request ids this long",
    )


def settings_from_args(args: Any) -> SharingSettings:
    return SharingSettings(
        replica=args.replica_name or default_replica_name(),
        flush_interval_s=max(0.0, args.share_flush_ms / 1000.0),
        max_batch=max(1, args.share_max_batch),
        buffer_events=max(1, args.share_buffer),
        heartbeat_interval_s=max(0.05, args.share_heartbeat_s),
        peer_timeout_s=max(0.0, args.share_peer_timeout_s),
        replay_window_s=max(0.0, args.share_replay_window_s),
        ready_timeout_s=max(0.0, args.share_ready_timeout_s),
        dedup_ttl_s=max(1.0, args.share_dedup_ttl_s),
        enabled=bool(args.share_peers),
    )
