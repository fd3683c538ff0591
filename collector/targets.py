"""Scrape targets, and the static (no-Kubernetes) way to discover them.

A :class:`Target` is one endpoint: a pod IP x one target port of one InferencePool.
Without Kubernetes the targets come from a YAML file, a list of entries::

    - pool: llama            # required
      namespace: default     # optional, default "default"
      pod: vllm-0            # required
      address: 10.0.0.5:8000 # required, ip:port ([v6]:port for IPv6)
      node: gpu-node-1       # optional: only the collector with this --node-name scrapes it
      accelerator: a100-80gb # optional: what the pod runs on (collector.accel)
      cost_per_hour: 1.8     # optional: its price per hour, >= 0

(a mapping with a ``targets:`` list is accepted too), plus repeated
``--target [namespace/]pool/pod=ip:port`` flags. :class:`StaticDiscovery` polls the
file's metadata (in a thread, never on the event loop) and reloads it when it changes;
a broken file is logged and counted and the previous targets stay in force.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from collector.accel import accelerator_value, cost_value

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"

Key = tuple[str, str, str, int]  # (namespace, pool, pod, port)


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    pool: str
    pod: str
    ip: str
    port: int
    node: str = ""
    kv_events: str = ""  # the pod's KV events PUB address (tcp://ip:port), "" = none (collector/kvevents.py)
    kv_replay: str = ""  # its replay ROUTER address, "" = none
    accelerator: str = ""
    cost_per_hour: float = 0.0

    @property
    def key(self) -> Key:
        return (self.namespace, self.pool, self.pod, self.port)

    @property
    def address(self) -> str:
        """``ip:port`` (``[ip]:port`` for IPv6), as the picker hands it to Envoy."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"

    def url(self, path: str = "/metrics") -> str:
        return f"http://{self.address}{path}"

    def describe(self) -> str:
        return f"{self.namespace}/{self.pool}/{self.pod}@{self.address}"


class TargetsError(ValueError):
    """An invalid targets file or ``--target`` flag; the message names the entry."""


def split_address(address: str, where: str) -> tuple[str, int]:
    """``"10.0.0.1:8000"`` or ``"[fd00::1]:8000"`` -> (ip, port); hostnames are rejected."""
    if not isinstance(address, str) or not address:
        raise TargetsError(f"{where}: address is required (ip:port)")
    if address.startswith("["):
        host, sep, port_s = address[1:].partition("]:")
    else:
        host, sep, port_s = address.rpartition(":")
    if not sep or not host:
        raise TargetsError(f"{where}: address {address!r} must be ip:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise TargetsError(f"{where}: {host!r} in {address!r} is not an IP address") from None
    try:
        port = int(port_s)
    except ValueError:
        raise TargetsError(f"{where}: port {port_s!r} in {address!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise TargetsError(f"{where}: port {port} in {address!r} is out of range")
    return host, port


def _name(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if value is None or value == "":
        raise TargetsError(f"{where}: {key} is required")
    if not isinstance(value, str):
        raise TargetsError(f"{where}: {key} must be a string, got {type(value).__name__}")
    return value


def parse_targets(data: Any, source: str = "<targets>") -> list[Target]:
    """Validate a loaded YAML document (list of entries, or ``{targets: [...]}``)."""
    if data is None:
        return []
    if isinstance(data, Mapping) and "targets" in data:
        data = data["targets"]
        if data is None:
            return []
    if not isinstance(data, list):
        raise TargetsError(f"{source}: expected a list of targets, got {type(data).__name__}")
    out: list[Target] = []
    seen: dict[Key, int] = {}
    for i, entry in enumerate(data):
        where = f"{source}: targets[{i}]"
        if not isinstance(entry, Mapping):
            raise TargetsError(f"{where}: must be a mapping, got {type(entry).__name__}")
        known = {"pool", "namespace", "pod", "address", "node", "kv_events", "kv_replay"}
        unknown = set(entry) - known - {"accelerator", "cost_per_hour"}
        if unknown:
            raise TargetsError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        ip, port = split_address(entry.get("address"), where)  # type: ignore[arg-type]
        node = entry.get("node") or ""
        if not isinstance(node, str):
            raise TargetsError(f"{where}: node must be a string")
        kv_ev, kv_rp = entry.get("kv_events") or "", entry.get("kv_replay") or ""
        for name, v in (("kv_events", kv_ev), ("kv_replay", kv_rp)):
            if not isinstance(v, str) or (v and not v.startswith(("tcp://", "ipc://"))):
                raise TargetsError(f"{where}: {name} must be a ZMQ address (tcp://ip:port)")
        t = Target(
            namespace=_name(entry, "namespace", where, DEFAULT_NAMESPACE),
            pool=_name(entry, "pool", where),
            pod=_name(entry, "pod", where),
            ip=ip,
            port=port,
            node=node,
            kv_events=kv_ev,
            kv_replay=kv_rp,
            accelerator=_checked(accelerator_value, entry.get("accelerator"), f"{where}: accelerator"),
            cost_per_hour=_checked(cost_value, entry.get("cost_per_hour"), f"{where}: cost_per_hour"),
        )
        if t.key in seen:
            raise TargetsError(f"{where}: duplicate of targets[{seen[t.key]}] ({t.describe()})")
        seen[t.key] = i
        out.append(t)
    return out


def _checked(check: Callable[[Any, str], Any], value: Any, where: str) -> Any:
    try:
        return check(value, where)
    except ValueError as exc:
        raise TargetsError(str(exc)) from None


def load_targets_text(text: str, source: str = "<targets>") -> list[Target]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TargetsError(f"{source}: invalid YAML: {exc}") from exc
    return parse_targets(data, source)


def parse_target_flag(spec: str, node: str = "") -> Target:
    """``[namespace/]pool/pod=ip:port`` (the ``--target`` flag)."""
    where = f"--target {spec!r}"
    left, sep, address = spec.partition("=")
    if not sep:
        raise TargetsError(f"{where}: expected [namespace/]pool/pod=ip:port")
    parts = left.split("/")
    if len(parts) == 2:
        namespace, pool, pod = DEFAULT_NAMESPACE, parts[0], parts[1]
    elif len(parts) == 3:
        namespace, pool, pod = parts
    else:
        raise TargetsError(f"{where}: expected [namespace/]pool/pod=ip:port")
    if not (namespace and pool and pod):
        raise TargetsError(f"{where}: namespace, pool and pod must not be empty")
    ip, port = split_address(address, where)
    return Target(namespace, pool, pod, ip, port, node)


def for_node(targets: Iterable[Target], node: str) -> list[Target]:
    """The targets this collector scrapes: those without a node, or on ``node``."""
    return [t for t in targets if not t.node or not node or t.node == node]


Apply = Callable[[list[Target], dict[Key, str]], None]


class StaticDiscovery:
    """Targets from flags and an optional YAML file that is reloaded when it changes."""

    def __init__(
        self,
        apply: Apply,
        *,
        node: str = "",
        path: str | None = None,
        flag_targets: Iterable[Target] = (),
        poll_interval_s: float = 1.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.apply = apply
        self.node = node
        self.path = path
        self.flag_targets = list(flag_targets)
        self.poll_interval_s = poll_interval_s
        self.on_error = on_error
        self.synced = asyncio.Event()
        self.file_targets: list[Target] = []
        self.last_error = ""
        self.reloads = 0
        self._stamp: tuple[float, int, int] | None = None

    async def run(self) -> None:
        if self.path is None:
            self._publish()
            self.synced.set()
            return
        while True:
            await self.check()
            await asyncio.sleep(self.poll_interval_s)

    async def check(self) -> None:
        """Reload the file if its mtime, size or inode changed since the last look."""
        assert self.path is not None
        try:
            st = await asyncio.to_thread(os.stat, self.path)
        except OSError as exc:
            self._fail(f"{self.path}: cannot read targets file: {exc.strerror or exc}", stamp=None)
            return
        stamp = (st.st_mtime, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            text = await asyncio.to_thread(_read_text, self.path)
            targets = load_targets_text(text, self.path)
        except OSError as exc:
            self._fail(f"{self.path}: cannot read targets file: {exc.strerror or exc}", stamp)
            return
        except TargetsError as exc:
            self._fail(str(exc), stamp)
            return
        self._stamp = stamp
        self.file_targets = targets
        self.last_error = ""
        self.reloads += 1
        log.info("targets file loaded", extra={"path": self.path, "targets": len(targets)})
        self._publish()
        self.synced.set()

    def _fail(self, message: str, stamp: tuple[float, int, int] | None) -> None:
        # Remember the broken version's stamp so the error is logged once, not every poll;
        # a fixed file has a new stamp and is read again.
        if stamp is not None and stamp == self._stamp:
            return
        if stamp is not None:
            self._stamp = stamp
        if message != self.last_error or stamp is not None:
            log.error("targets file rejected; keeping the previous targets", extra={"error": message})
            if self.on_error is not None:
                self.on_error(message)
        self.last_error = message
        if self.file_targets == [] and self.flag_targets and not self.synced.is_set():
            # The flags alone are a valid configuration: scrape them while the file is bad.
            self._publish()

    def _publish(self) -> None:
        merged: dict[Key, Target] = {}
        for t in [*self.flag_targets, *self.file_targets]:
            merged.setdefault(t.key, t)
        self.apply(for_node(merged.values(), self.node), {})


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
