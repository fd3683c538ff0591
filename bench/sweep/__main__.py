"""``python -m bench.sweep``: the same command as ``infergate-bench sweep``."""

from .cli import main

raise SystemExit(main())
