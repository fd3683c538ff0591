"""``infergate-bench sweep``: the published benchmark, reproduced in virtual time (bench/README.md).

One module per job: ``experiments`` (which points), ``runner`` (running them on worker
processes), ``seed_report`` and ``replicas_report`` (the markdown and plots),
``results`` (the JSON next to them), ``provenance`` (what was measured, where),
``formatting`` (shared number formats) and ``cli`` (the command line).
"""

from .cli import main

__all__ = ["main"]
