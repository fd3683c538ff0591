"""Child processes of the real stack: start, wait until ready, stop gracefully, or kill.

The demo, the fault report and the end-to-end tests run every InferGate service as its
own process through its real command line, so what they exercise is what a user runs,
and a fault (SIGKILL of a picker, a collector, a pod) is a real process dying.
Output goes to a log file per process, named in error messages when a start fails.

Ports: a service given ``port_flags`` (port name -> flag) is started with each flag at 0
and ``--port-file``; :meth:`ServiceProcess.start` reads the ports it bound back
(:mod:`shared.portfile`) into ``ports``, and ``ready_url`` may name them
(``http://127.0.0.1:{metrics}/readyz``). A restart passes the ports it got the first time,
since Envoy and the collectors' targets name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from shared.portfile import read_port_file


@dataclass
class ServiceProcess:
    """One child process with a readiness URL (HTTP 200) or a TCP port to wait for."""

    name: str
    argv: Sequence[str]
    log_dir: Path
    ready_url: str | None = None
    ready_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    port_flags: dict[str, str] = field(default_factory=dict)  # port name -> flag, bound at 0
    ports: dict[str, int] = field(default_factory=dict)  # what the service reported
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def port_file(self) -> Path:
        return self.log_dir / f"{self.name}.ports.json"

    def _argv(self) -> list[str]:
        argv = list(self.argv)
        if self.port_flags:
            for name, flag in self.port_flags.items():
                argv += [flag, str(self.ports.get(name, 0))]  # 0 at first, the same ports on a restart
            argv += ["--port-file", str(self.port_file)]
        return argv

    async def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv(),
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop the children
            )
        finally:
            log.close()
        if self.port_flags:
            try:
                self.ports = await read_port_file(self.port_file, timeout, alive=lambda: self.running)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{self.name}: {exc} ({self.log_path}):\n{self.tail()}") from exc
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                if not self.running:
                    raise RuntimeError(f"{self.name} exited during start ({self.log_path}):\n{self.tail()}")
                if await self._is_ready(session):
                    return
                if loop.time() > deadline:
                    where = f"{self.log_path}:\n{self.tail()}"
                    raise TimeoutError(f"{self.name} not ready after {timeout}s; see {where}")
                await asyncio.sleep(0.1)

    async def _is_ready(self, session: aiohttp.ClientSession) -> bool:
        try:
            if self.ready_url is not None:
                async with session.get(self.ready_url.format(**self.ports)) as resp:
                    return resp.status == 200
            if self.ready_port is not None:
                _, writer = await asyncio.open_connection("127.0.0.1", self.ready_port)
                writer.close()
                return True
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        return True

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL: the process dies without cleanup, as in a crash or an OOM kill."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()

    async def restart(self, timeout: float = 30.0) -> None:
        await self.stop()
        self.restarts += 1
        await self.start(timeout)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def python_module(module: str, *args: str) -> list[str]:
    """argv running ``python -m module args`` with this interpreter (the venv's)."""
    return [sys.executable, "-m", module, *args]


async def stop_all(processes: Sequence[ServiceProcess], grace: float = 10.0) -> None:
    await asyncio.gather(*(p.stop(grace) for p in processes), return_exceptions=True)
