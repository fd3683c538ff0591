"""``infergate-bench peers``: InferGate side by side with the real peer routers.

The same streaming load goes through InferGate (Envoy + two picker replicas), an Envoy
doing round-robin, and every policy of ``sglang-router`` and ``vllm-router`` (installed
from PyPI into their own virtual environment, ``.venv-peers``), each time on freshly
started simulated pods. Modules, one job each: :mod:`~bench.peers.install` (the peers'
venv), :mod:`~bench.peers.workloads` (what is sent), :mod:`~bench.peers.pods` (the
simulated pods), :mod:`~bench.peers.routes` (starting each route),
:mod:`~bench.peers.measure` (CPU, load, hit rates), :mod:`~bench.peers.report` (the
markdown) and :mod:`~bench.peers.cli` (the command).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from bench.peers.cli import main as cli_main

    return cli_main(argv)
