"""``python -m bench.label_flood``: the picker's /metrics page after a flood of invented model names.

In process (the real director, metrics and view; no gRPC, no Envoy), so it runs on any
commit that has them and measures only the metrics: N distinct random model names, one
request each (every fourth answered 503, so the error family grows too), under
``--unknown-model-policy route`` with no configured model, the worst case. Prints the
page's bytes and lines for: one real model, N short names, one name of 100 KB.
"""

from __future__ import annotations

import argparse
import json
import random
import string

from prometheus_client import generate_latest

from picker.director import Director, RequestHeaders, Routed
from picker.metrics import PickerMetrics
from picker.models import ModelTable
from picker.view import PoolView
from tests.support.least_load import least_load_profile
from tests.support.snapshots import snapshot


def page_after(names: list[str]) -> tuple[int, int]:
    """(bytes, lines) of the page after one request per name."""
    metrics = PickerMetrics()
    profile = least_load_profile(staleness=3600)
    view = PoolView("default", "pool", profile.state)
    view.apply(snapshot("10.0.0.1:8000", pool="pool"))  # serves "base"
    counters = lambda: {"dropped": {}, "decode_failures": 0, "accepted": 0}  # noqa: E731
    metrics.add_pool_collector("pool", view.stats, counters, view.list)
    director = Director(
        view=view,
        admission=profile.admission,
        scheduler=profile.scheduler,
        models=ModelTable([], "pool", "route"),
        metrics=metrics,
    )
    for i, name in enumerate(names):
        body = json.dumps({"model": name, "prompt": "hello", "max_tokens": 4}).encode()
        routed = director.route(RequestHeaders(path="/v1/completions", request_id=str(i)), body, None)
        assert isinstance(routed, Routed), routed
        director.complete(routed.inflight, 200 if i % 4 else 503, 3, 4)
    page = generate_latest(metrics.registry)
    return len(page), page.count(b"\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.label_flood", description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=1_000)
    args = ap.parse_args(argv)
    rng = random.Random(19)
    short = ["".join(rng.choices(string.ascii_letters, k=12)) for _ in range(args.names)]
    for what, names in (
        ("one real model (base)", ["base"]),
        (f"{args.names:,} random 12-character names", short),
        ("one 100 KB name", ["x" * 100_000]),
    ):
        size, lines = page_after(names)
        print(f"| {what} | {size:,} | {lines:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
