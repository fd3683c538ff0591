"""A 3-node NATS JetStream cluster on loopback, for the cluster tests and the fault report.

Production runs NATS as a cluster (three servers joined by routes, JetStream streams
replicated R3). :class:`NatsCluster` starts the same thing on this machine: one real
``nats-server`` per node, each with its own client, route and monitoring port and its own
store directory, every node listing every route. A node can be SIGKILLed and started
again on the same ports and store, which is the fault a node loss is.

``extra_conf`` is appended to every node's configuration (authorization, TLS) so a
locked-down cluster can be started the same way.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.natsd import find_binary, free_port, wait_for_port

HOST = "127.0.0.1"


@dataclass
class NatsNode:
    name: str
    port: int
    route_port: int
    monitor_port: int
    store_dir: Path
    conf: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict:
        """One of the server's monitoring endpoints (``/routez``, ``/jsz`` ...) as JSON."""
        with urllib.request.urlopen(f"http://{HOST}:{self.monitor_port}{path}", timeout=2) as resp:
            return json.loads(resp.read())

    def healthy(self) -> bool:
        """``/healthz``: the server is up and its JetStream is current with the cluster."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.monitor_port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False


class NatsCluster:
    """``size`` clustered ``nats-server -js`` processes on loopback (see the module docstring)."""

    def __init__(
        self, size: int = 3, work_dir: str | Path | None = None, extra_conf: str = "", name: str = "infergate"
    ) -> None:
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="infergate-natscluster-"))
        self.name = name
        self.extra_conf = extra_conf
        self.nodes = [
            NatsNode(
                f"n{i}",
                free_port(),
                free_port(),
                free_port(),
                self.work_dir / f"n{i}" / "store",
                self.work_dir / f"n{i}" / "nats.conf",
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (what ``--nats-url`` takes)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def url_list(self) -> list[str]:
        """The same URLs as a list (what ``nats.connect`` takes)."""
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def _write_conf(self, node: NatsNode) -> None:
        routes = ", ".join(f"nats-route://{HOST}:{n.route_port}" for n in self.nodes)
        node.store_dir.mkdir(parents=True, exist_ok=True)
        node.conf.write_text(
            f"server_name: {node.name}\n"
            f"listen: {HOST}:{node.port}\n"
            f"http: {HOST}:{node.monitor_port}\n"
            f'jetstream {{ store_dir: "{node.store_dir}", max_memory_store: 256MB, max_file_store: 256MB }}\n'
            f"cluster {{ name: {self.name}, listen: {HOST}:{node.route_port}, routes: [{routes}] }}\n"
            f"{self.extra_conf}\n"
        )

    def start_node(self, node: NatsNode, timeout: float = 10.0) -> None:
        if node.running:
            return
        self._write_conf(node)
        with open(node.conf.parent / "nats.log", "ab") as log:  # the child keeps its own copy
            node.proc = subprocess.Popen(
                [find_binary("nats-server"), "-c", str(node.conf)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        wait_for_port(HOST, node.port, timeout)

    def kill_node(self, node: NatsNode) -> None:
        """SIGKILL: the node vanishes without telling its routes or clients (a lost machine)."""
        if node.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        node.proc = None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node answers ``/healthz`` and is routed to every other node."""
        deadline = time.monotonic() + timeout
        while True:
            running = [n for n in self.nodes if n.running]
            if all(n.healthy() and self.routes_of(n) >= len(self.nodes) - 1 for n in running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS cluster not healthy after {timeout}s")
            time.sleep(0.1)

    def routes_of(self, node: NatsNode) -> int:
        """How many other servers ``node`` has a route to (0 when it cannot be asked)."""
        try:
            routez = node.monitor("/routez")
        except OSError:
            return 0
        return len({r.get("remote_name") or r.get("remote_id") for r in routez.get("routes") or []})

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            self.start_node(node)
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is None:
                continue
            if node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
            node.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
