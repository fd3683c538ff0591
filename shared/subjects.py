"""NATS subject and JetStream stream naming. The only module that builds subjects.

Layout, with the default prefix ``infergate``::

    infergate.<namespace>.<pool>.ep.<pod>.<port>        endpoint snapshots / tombstones
    infergate.<namespace>.<pool>.ev.<replica>            picker assignment/completion batches
    infergate.<namespace>.<pool>.kv.<pod>.<port>        KV-cache block deltas (shared.kvevents)
    infergate.<namespace>.<pool>.kvd.<pod>.<port>       KV-cache digests (last value kept)
    infergate.<namespace>.<pool>.fc.<replica>            flow control: a replica's demand, flow service

Tokens are escaped so that any Kubernetes name is a single, reversible NATS token
(pod names may contain dots, which NATS uses as its separator).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

DEFAULT_PREFIX = "infergate"

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def token(name: str) -> str:
    """Escape ``name`` into one NATS subject token (``.`` -> ``~2e``, and so on)."""
    if not name:
        raise ValueError("a subject token cannot be empty")
    return _UNSAFE.sub(lambda m: f"~{ord(m.group()):02x}", name)


def untoken(tok: str) -> str:
    """Reverse :func:`token`."""
    if "~" not in tok:
        return tok
    return re.sub(r"~([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), tok)


@dataclass(frozen=True, slots=True)
class Origin:
    """What a subject says about its message: the family, the pool, and who it is about.

    ``name`` is the pod of an endpoint subject (``port`` its target port) or the replica
    of an event subject.
    """

    kind: Literal["endpoint", "events"]
    namespace: str
    pool: str
    name: str
    port: int = 0


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject names for one prefix (one InferGate installation on one NATS account)."""

    prefix: str = DEFAULT_PREFIX

    def endpoint(self, namespace: str, pool: str, pod: str, port: int) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.ep.{token(pod)}.{int(port)}"

    def endpoints_of_pool(self, namespace: str, pool: str) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.ep.>"

    def all_endpoints(self) -> str:
        return f"{self.prefix}.*.*.ep.>"

    def events(self, namespace: str, pool: str, replica: str) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.ev.{token(replica)}"

    def events_of_pool(self, namespace: str, pool: str) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.ev.*"

    def flow(self, namespace: str, pool: str, replica: str) -> str:
        """Flow control's per-replica demand and flow service (picker.flow.pool)."""
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.fc.{token(replica)}"

    def flow_of_pool(self, namespace: str, pool: str) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.fc.*"

    def all_flows(self) -> str:
        return f"{self.prefix}.*.*.fc.*"

    def parse_flow(self, subject: str) -> tuple[str, str, str] | None:
        """(namespace, pool, replica) of a flow-control subject; None for anything else."""
        head = self.prefix + "."
        if not subject.startswith(head):
            return None
        parts = subject[len(head) :].split(".")
        if len(parts) != 4 or parts[2] != "fc":
            return None
        return untoken(parts[0]), untoken(parts[1]), untoken(parts[3])

    def all_events(self) -> str:
        return f"{self.prefix}.*.*.ev.*"

    def kv_delta(self, namespace: str, pool: str, pod: str, port: int) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.kv.{token(pod)}.{int(port)}"

    def kv_digest(self, namespace: str, pool: str, pod: str, port: int) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.kvd.{token(pod)}.{int(port)}"

    def kv_deltas_of_pool(self, namespace: str, pool: str) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.kv.>"

    def kv_digests_of_pool(self, namespace: str, pool: str) -> str:
        return f"{self.prefix}.{token(namespace)}.{token(pool)}.kvd.>"

    def all_kv_digests(self) -> str:
        return f"{self.prefix}.*.*.kvd.>"

    @property
    def kv_stream(self) -> str:
        """Keeps the last KV digest per pod (shared.kvstream), so new replicas converge."""
        return f"{_stream_token(self.prefix)}_KV"

    def parse(self, subject: str) -> Origin | None:
        """The :class:`Origin` of a concrete subject of this prefix; None for anything else."""
        return _parse(self.prefix, subject)

    @property
    def endpoint_stream(self) -> str:
        """Keeps the last snapshot per endpoint subject, so new subscribers bootstrap."""
        return f"{_stream_token(self.prefix)}_ENDPOINTS"

    @property
    def event_stream(self) -> str:
        """Keeps recent picker events briefly, so a restarted replica rebuilds in-flight state."""
        return f"{_stream_token(self.prefix)}_EVENTS"

    @property
    def adapter_bucket(self) -> str:
        """JetStream KV bucket: one placement record per (pool, LoRA adapter), shared by collectors."""
        return f"{_stream_token(self.prefix)}_ADAPTERS"

    @property
    def rollout_bucket(self) -> str:
        """JetStream KV bucket: one progressive-rollout state per rule, shared by picker replicas."""
        return f"{_stream_token(self.prefix)}_ROLLOUTS"


@lru_cache(maxsize=4096)  # subjects repeat (one per pod and replica); bounded all the same
def _parse(prefix: str, subject: str) -> Origin | None:
    head = prefix + "."
    if not subject.startswith(head):
        return None
    tokens = subject[len(head) :].split(".")
    if len(tokens) == 5 and tokens[2] == "ep" and tokens[4].isdigit():
        ns, pool, _, pod, port = tokens
        return Origin("endpoint", untoken(ns), untoken(pool), untoken(pod), int(port))
    if len(tokens) == 4 and tokens[2] == "ev":
        ns, pool, _, replica = tokens
        return Origin("events", untoken(ns), untoken(pool), untoken(replica))
    return None


def _stream_token(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", prefix).upper()
