"""Report the ports a service bound, so whoever started it never has to guess a free one.

Every InferGate service accepts port 0 ("any free port") for each listener. With
``--port-file PATH`` (env ``INFERGATE_PORT_FILE``; ``INFERGATE_SIM_PORT_FILE`` for the
simulator) it writes, once every listener is bound, one JSON object::

    {"service": "picker", "pid": 1234, "ports": {"grpc": 40113, "health": 40115, "metrics": 40117}}

atomically (a temporary file renamed into place), so a reader sees the whole file or none.
The same ports are logged (``listening``). Port names per service: picker ``grpc``,
``health``, ``metrics``; collector ``ops``; autoscaler ``api``, ``ops``; simulator ``ops``
and ``pod-<i>`` per pod. Why a file and not a port picked in advance by the caller: a port
found free and handed over is bound moments later, and another process can take it in
between (``OSError: address already in use`` under load); binding 0 cannot race.
:func:`read_port_file` is the harness side (bench/procs.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_port_file_flag", "read_port_file", "report_ports"]

log = logging.getLogger(__name__)


def add_port_file_flag(parser) -> None:
    parser.add_argument(
        "--port-file",
        default="",
        help="write the bound ports as JSON to this file once listening (use with ports 0)",
    )


def report_ports(service: str, ports: dict[str, int], path: str | os.PathLike[str] | None) -> None:
    """Log the bound ports and, when ``path`` is given, write them there atomically."""
    log.info("listening", extra={"service": service, "ports": ports})
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"service": service, "pid": os.getpid(), "ports": ports}))
    os.replace(tmp, target)


async def read_port_file(
    path: str | os.PathLike[str], timeout: float = 30.0, alive: Callable[[], bool] = lambda: True
) -> dict[str, int]:
    """Wait for ``path`` to appear (while ``alive()``), then return its ``ports``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    target = Path(path)
    while True:
        try:
            text = await asyncio.to_thread(target.read_text)
        except FileNotFoundError:
            text = ""
        if text:
            return {k: int(v) for k, v in json.loads(text)["ports"].items()}
        if not alive():
            raise RuntimeError(f"the process exited before writing {target}")
        if loop.time() > deadline:
            raise TimeoutError(f"no port file {target} after {timeout}s")
        await asyncio.sleep(0.05)
