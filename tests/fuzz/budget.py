"""The fuzzers' shared budget: a fixed number of examples, derandomized, no example database.

``derandomize=True`` makes every run (a laptop, CI) try the same inputs, so a fuzzer
that passes once passes always and a failure reproduces; the example counts are sized so
all of ``tests/fuzz`` stays well under a minute on 2 shared cores. ``INFERGATE_FUZZ_EXAMPLES``
multiplies the counts for a longer local hunt (then seeds still do not vary: use
``--hypothesis-seed`` with ``derandomize`` off by setting ``INFERGATE_FUZZ_RANDOM=1``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_SCALE = float(os.environ.get("INFERGATE_FUZZ_EXAMPLES", "1"))
_RANDOM = os.environ.get("INFERGATE_FUZZ_RANDOM") == "1"


def budget(examples: int, shrink: bool = True) -> settings:
    """Settings for one fuzzer: ``examples`` inputs (times the scale), deterministic by default.

    ``shrink=False`` for fuzzers whose failing example costs seconds (a wait that times out):
    the first failing input is reported as found.
    """
    phases = None if shrink else [Phase.explicit, Phase.reuse, Phase.generate]
    return settings(
        phases=phases or list(Phase),
        max_examples=max(1, int(examples * _SCALE)),
        deadline=None,
        derandomize=not _RANDOM,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
