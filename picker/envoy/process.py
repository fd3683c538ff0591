"""Run a real Envoy with a generated bootstrap, for tests and the demo.

Everything is asyncio: the child is an ``asyncio`` subprocess, readiness is polled
with non-blocking connects, and stopping awaits the exit. Several Envoys can run on
one machine because each asks for ``--use-dynamic-base-id`` (the shared-memory region
Envoy uses for hot restart would otherwise collide on the default id 0).

Ports may be 0: Envoy binds free ones, writes its admin address to ``--admin-address-path``
and reports its listeners' addresses on the admin ``/listeners``; :meth:`EnvoyProcess.start`
reads both back (``admin``, ``listener_ports``, ``port``), so callers never race for a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
from pathlib import Path
from typing import Any

from shared.natsd import find_binary


class EnvoyStartError(RuntimeError):
    pass


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _admin_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """A one-shot HTTP/1.1 GET (Envoy refuses HTTP/1.0), enough for the admin endpoints."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    """The payload of a chunked HTTP/1.1 body (``<hex size>\\r\\n<bytes>\\r\\n`` ... ``0``)."""
    out, i = [], 0
    while True:
        end = data.find(b"\r\n", i)
        if end < 0:
            return b"".join(out)
        size = int(data[i:end].split(b";", 1)[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        i = end + 2 + size + 2


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _listener_names(bootstrap: dict[str, Any]) -> list[str]:
    return [ls.get("name", "") for ls in bootstrap.get("static_resources", {}).get("listeners", [])]


def _listeners(bootstrap: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for listener in bootstrap.get("static_resources", {}).get("listeners", []):
        sock = listener["address"]["socket_address"]
        host = sock.get("address", "127.0.0.1")
        out.append(("127.0.0.1" if host in ("0.0.0.0", "::") else host, int(sock.get("port_value", 0))))
    return out


class EnvoyProcess:
    """``async with EnvoyProcess(bootstrap) as envoy:`` starts Envoy and waits until it serves."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        binary: str | None = None,
        *,
        log_level: str = "warn",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.binary = binary or find_binary("envoy")
        self.log_level = log_level
        self.extra_args = extra_args
        admin = bootstrap["admin"]["address"]["socket_address"]
        self.admin = (admin.get("address", "127.0.0.1"), int(admin.get("port_value", 0)))  # 0: omitted
        self.proc: asyncio.subprocess.Process | None = None
        self.listener_ports: dict[str, int] = {}  # listener name -> the port it bound
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None

    @property
    def port(self) -> int:
        """The first listener's port (the one the generated bootstrap has), as bound."""
        return next(iter(self.listener_ports.values()))

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin[0]}:{self.admin[1]}"

    async def start(self, timeout: float = 15.0) -> EnvoyProcess:
        self._dir = tempfile.TemporaryDirectory(prefix="infergate-envoy-")
        config = Path(self._dir.name) / "envoy.json"
        await asyncio.to_thread(config.write_text, json.dumps(self.bootstrap))
        self.log_path = Path(self._dir.name) / "envoy.log"
        admin_path = Path(self._dir.name) / "admin.address"
        log = await asyncio.to_thread(self.log_path.open, "wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(config),
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "-l",
                self.log_level,
                "--drain-time-s",
                "1",
                # Access logs are read by tests and the demo while Envoy runs (default: 10 s).
                "--file-flush-interval-msec",
                "200",
                "--admin-address-path",
                str(admin_path),
                *self.extra_args,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            await asyncio.wait_for(self._wait_ready(admin_path), timeout)
        except (TimeoutError, EnvoyStartError) as exc:
            tail = await asyncio.to_thread(self.log_tail)
            await self.stop()
            raise EnvoyStartError(f"envoy did not become ready ({exc!r}); its log ends:\n{tail}") from exc
        return self

    async def _wait_ready(self, admin_path: Path) -> None:
        assert self.proc is not None
        while True:
            if self.proc.returncode is not None:
                raise EnvoyStartError(f"exited with {self.proc.returncode}")
            if self.admin[1] == 0:  # "127.0.0.1:41234" in the file, once bound
                host, _, port = (await asyncio.to_thread(_read, admin_path)).strip().rpartition(":")
                if port.isdigit():
                    self.admin = (host.strip("[]"), int(port))
            if self.admin[1] and await self._ready() and await self._listeners_accept():
                return
            await asyncio.sleep(0.05)

    async def _listeners_accept(self) -> bool:
        """Every listener accepts; its bound port (the admin ``/listeners``) recorded first."""
        try:
            status, body = await _admin_get(*self.admin, "/listeners?format=json")
        except OSError:
            return False
        if status != 200:
            return False
        bound = {
            ls["name"]: int(ls["local_address"]["socket_address"]["port_value"])
            for ls in json.loads(body).get("listener_statuses", [])
        }
        names = _listener_names(self.bootstrap)
        for name, (host, port) in zip(names, _listeners(self.bootstrap), strict=True):
            port = port or bound.get(name, 0)
            if not port or not await _accepts(host, port):
                return False
            self.listener_ports[name] = port
        return True

    async def _ready(self) -> bool:
        try:
            status, _ = await _admin_get(*self.admin, "/ready")
        except OSError:
            return False
        return status == 200

    async def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin ``/stats`` (text form), filtered by prefix."""
        _, body = await _admin_get(*self.admin, "/stats")
        out: dict[str, int] = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._dir is not None:
            await asyncio.to_thread(self._dir.cleanup)
            self._dir = None

    async def __aenter__(self) -> EnvoyProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def validate(bootstrap: dict[str, Any], binary: str | None = None) -> tuple[bool, str]:
    """``envoy --mode validate``: (ok, output). Checks every extension and field, binds no port."""
    with tempfile.TemporaryDirectory(prefix="infergate-envoy-") as tmp:
        config = Path(tmp) / "envoy.json"
        await asyncio.to_thread(config.write_text, json.dumps(bootstrap))
        proc = await asyncio.create_subprocess_exec(
            binary or find_binary("envoy"),
            "--mode",
            "validate",
            "-c",
            str(config),
            "-l",
            "warn",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    return proc.returncode == 0, out.decode(errors="replace")
