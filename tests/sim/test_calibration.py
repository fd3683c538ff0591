"""The engine reproduces design.md §5 within tolerance (virtual time, ~1 s)."""

from __future__ import annotations

import pytest

from sim.calibrate import MEASURED, MEASURED_SATURATION, measured_points, saturation
from sim.engine import EngineConfig


@pytest.fixture(scope="module")
def points():
    return measured_points(EngineConfig(), n_requests=3000)


@pytest.mark.parametrize("qps", sorted(MEASURED))
def test_measured_points_within_25_percent(points, qps):
    ttft, itl = MEASURED[qps]
    p = points[qps]
    assert p["ttft_mean"] == pytest.approx(ttft, rel=0.25)
    assert p["itl_p75"] == pytest.approx(itl, rel=0.25)


@pytest.mark.parametrize("seed", [2, 3])
def test_sharegpt_saturates_near_26_per_replica(seed):
    sat = saturation(EngineConfig(), seed=seed)
    assert sat["req_per_s"] == pytest.approx(MEASURED_SATURATION, abs=3.0)
    assert 5000 < sat["out_tok_per_s"] < 6800


def test_saturation_is_a_plateau():
    # offering more load does not raise the completion rate
    a = saturation(EngineConfig(), rate=45.0, seed=4)["req_per_s"]
    b = saturation(EngineConfig(), rate=90.0, seed=4)["req_per_s"]
    assert b == pytest.approx(a, rel=0.1)
