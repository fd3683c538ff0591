"""Smoke test of the sweep: it runs end to end, and round-robin ranks worst at saturation.

Saturation here means the two regimes where routing decides the outcome in this model
(bench/README.md): ShareGPT-like traffic at 600 QPS with sheddable requests (a smart
picker sheds and keeps the queues short; a Kubernetes Service queues everything), and
the shared-prefix workload at 80 QPS (prefix affinity multiplies the KV capacity).
With Standard criticality on ShareGPT, round-robin is *not* worst in this model; the
sweep reports that, this test does not pretend otherwise.
"""

from __future__ import annotations

import json

from bench.sweep import main


def test_short_sweep_runs_and_round_robin_is_worst_at_saturation(tmp_path):
    # --quick points: sharegpt-shed 300 and 600 QPS, prefix 30 and 80 QPS
    rc = main(
        [
            "--quick",
            "--suites",
            "sharegpt-shed,prefix",
            "--policies",
            "round-robin,gie-v1,default",
            "--duration",
            "8",
            "--warmup",
            "2",
            "--prefix-groups",
            "64",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    report = (tmp_path / "seed.md").read_text()
    assert "Verdict per goal" in report
    assert (tmp_path / "seed-sharegpt-shed.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "seed.json").read_text())["points"]
    assert {(r["suite"], r["policy"]) for r in rows if r["qps"] in (600, 80)} == {
        (s, p) for s in ("sharegpt-shed", "prefix") for p in ("round-robin", "gie-v1", "default")
    }
    for suite in ("sharegpt-shed", "prefix"):
        top = max(r["qps"] for r in rows if r["suite"] == suite)
        got = {r["policy"]: r for r in rows if r["suite"] == suite and r["qps"] == top}
        assert all(r["served"] > 0 for r in got.values())
        worst_ntpot = max(got, key=lambda p: got[p]["ntpot_p90"])
        worst_e2e = max(got, key=lambda p: got[p]["e2e_p90"])
        assert "round-robin" in (worst_ntpot, worst_e2e), (suite, {p: r["ntpot_p90"] for p, r in got.items()})
