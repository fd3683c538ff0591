"""Port 0 plus ``--port-file``: a service reports the ports it bound, and the harness reads them."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp

from shared.portfile import read_port_file, report_ports


async def test_the_file_appears_whole_and_names_every_port(tmp_path):
    path = tmp_path / "p.json"
    report_ports("svc", {"a": 1, "b": 2}, path)
    assert json.loads(path.read_text())["ports"] == {"a": 1, "b": 2}
    assert await read_port_file(path, 1) == {"a": 1, "b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temporary file left behind


async def test_the_simulator_binds_port_0_for_every_pod_and_reports_them(tmp_path):
    path = tmp_path / "sim.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim", "serve", "--ports", "0,0", "--ops-host", "127.0.0.1", "--ops-port", "0",
        env={**os.environ, "INFERGATE_SIM_PORT_FILE": str(path)},
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ports = await read_port_file(path, 30, alive=lambda: proc.returncode is None)
        assert set(ports) == {"ops", "pod-0", "pod-1"} and len(set(ports.values())) == 3
        async with aiohttp.ClientSession() as s:
            for name in ("pod-0", "pod-1"):
                async with s.get(f"http://127.0.0.1:{ports[name]}/health") as r:
                    assert r.status == 200
    finally:
        proc.terminate()
        await proc.wait()
