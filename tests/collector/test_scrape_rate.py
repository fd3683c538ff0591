"""The adaptive scrape rate: the pure decision, the idle heartbeat, validation, the wiring."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import aiohttp
import pytest

from collector import snapshots
from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.parse import PageMetrics
from collector.scrape_rate import IDLE_AFTER, ScrapeRate, idle_heartbeat
from collector.scraper import Scraper
from collector.snapshots import EndpointState
from collector.targets import Target
from tests.support.fakepod import FakePods
from tests.support.waiting import wait_until

FAST, IDLE = 0.05, 0.1


def quiet(**changes) -> PageMetrics:
    return dataclasses.replace(PageMetrics(model="m", engine="vllm", kv_usage=0.02, engines=1), **changes)


def test_a_quiet_unchanged_pod_moves_to_the_idle_rate_after_a_few_scrapes():
    rate = ScrapeRate(FAST, IDLE)
    changes = [rate.observe(quiet()) for _ in range(IDLE_AFTER + 3)]
    assert changes == [False] * (IDLE_AFTER - 1) + [True] + [False] * 3
    assert rate.idle and rate.interval == IDLE


@pytest.mark.parametrize(
    "busy",
    [
        quiet(running=1),
        quiet(waiting=2),
        quiet(prefix_queries=32.0),  # a request came and went between two scrapes
        quiet(kv_usage=0.03),
        quiet(lora_waiting=["a"]),
        None,  # a failed scrape
    ],
    ids=["running", "waiting", "counter-moved", "kv-moved", "lora", "failure"],
)
def test_the_first_sign_of_activity_returns_to_the_fast_rate_at_once(busy):
    rate = ScrapeRate(FAST, IDLE)
    for _ in range(IDLE_AFTER):
        rate.observe(quiet())
    assert rate.idle
    assert rate.observe(busy) is True
    assert not rate.idle and rate.interval == FAST
    # and it takes a new run of quiet, identical pages to slow down again
    for _ in range(IDLE_AFTER - 1):
        rate.observe(quiet())
    assert not rate.idle


def test_a_busy_or_changing_pod_stays_fast():
    rate = ScrapeRate(FAST, IDLE)
    for i in range(4 * IDLE_AFTER):
        assert rate.observe(quiet(running=1)) is False
        assert rate.observe(quiet(prefix_queries=float(i))) is False  # quiet, yet moving
    assert not rate.idle and rate.interval == FAST


@pytest.mark.parametrize("idle", [0.0, FAST])
def test_zero_or_the_fast_interval_turns_it_off(idle):
    rate = ScrapeRate(FAST, idle)
    assert not any(rate.observe(quiet()) for _ in range(3 * IDLE_AFTER))
    assert rate.interval == FAST


def test_every_idle_scrape_is_republished_within_the_heartbeat(monkeypatch):
    """Scrapes at the extremes of the jitter, against the state's own publish rule."""
    hb, jitter = 0.1, 0.1
    gaps = [IDLE * (1 - jitter), IDLE * (1 + jitter), IDLE * (1 - jitter), IDLE * (1 - jitter)] * 5

    def publishes(heartbeat: float) -> list[str | None]:
        clock = [100.0]
        reasons: list[str | None] = []
        state = EndpointState(
            Target("ns", "pool", "pod", "127.0.0.1", 1),
            "node",
            unhealthy_after=3,
            heartbeat_interval=heartbeat,
            offer=lambda _key, _snap, reason: reasons.append(reason),
            on_health_change=lambda: None,
        )
        with monkeypatch.context() as m:
            m.setattr(snapshots.time, "monotonic", lambda: clock[0])  # the state's clock
            state.success(quiet(), [], 1.0)
            for gap in gaps:
                clock[0] += gap
                state.success(quiet(), [], 1.0)
        return reasons

    lowered = publishes(idle_heartbeat(hb, IDLE, jitter))
    assert lowered[0] == "change" and lowered[1:] == ["heartbeat"] * len(gaps)
    # the configured heartbeat alone would hold back the scrapes that land just early
    assert None in publishes(hb)
    # a heartbeat far above the idle interval is still honoured
    assert idle_heartbeat(1.0, IDLE, jitter) == pytest.approx(0.91)
    assert idle_heartbeat(0.05, IDLE, jitter) == 0.0


@pytest.mark.parametrize(
    ("idle", "needle"),
    [
        (0.02, "at least the scrape interval"),
        (-0.1, "must be >= 0"),
        (1.0, "must be below 1 s"),
        (5.0, "must be below 1 s"),
    ],
)
def test_validation_rejects_a_bad_idle_interval(idle, needle):
    cfg = CollectorConfig(node_name="n", scrape_interval=0.05, idle_scrape_interval=idle)
    with pytest.raises(ValueError, match=needle):
        cfg.validate()


@pytest.mark.parametrize("idle", [0.0, 0.05, 0.1, 0.5])
def test_validation_accepts_off_and_sane_values(idle):
    CollectorConfig(node_name="n", scrape_interval=0.05, idle_scrape_interval=idle).validate()


@pytest.mark.parametrize(("scrape", "in_force"), [(0.05, 0.1), (0.02, 0.1), (0.1, 0.0), (0.2, 0.0)])
def test_the_default_is_0_1_s_unless_the_scrape_interval_is_that_slow(scrape, in_force):
    cfg = CollectorConfig(node_name="n", scrape_interval=scrape)
    cfg.validate()  # never an error over a default nobody set
    assert cfg.idle_interval() == in_force


async def test_the_scraper_applies_the_rate_to_its_heartbeat_and_metrics():
    # short intervals: the loop below runs for real until the pod is on the idle rate
    cfg = CollectorConfig(node_name="n", models_interval=0, scrape_interval=0.01, idle_scrape_interval=0.02)
    metrics = CollectorMetrics()
    offers: list[str | None] = []
    async with FakePods(1) as pods, aiohttp.ClientSession() as session:
        target = Target("ns", "pool", pods[0].name, "127.0.0.1", pods[0].port)
        state = EndpointState(
            target,
            "n",
            unhealthy_after=3,
            heartbeat_interval=cfg.heartbeat_interval,
            offer=lambda _k, _s, reason: offers.append(reason),
            on_health_change=lambda: None,
        )
        scraper = Scraper(target, state, session, cfg, metrics)
        timeout = aiohttp.ClientTimeout(total=2)
        reg = metrics.registry

        def sample(name: str, **labels) -> float:
            return reg.get_sample_value(name, labels) or 0.0

        for _ in range(IDLE_AFTER):
            await scraper.scrape_once(timeout)
        assert scraper.rate.idle
        assert state.heartbeat_interval == idle_heartbeat(0.1, 0.02, 0.1)
        assert sample("infergate_collector_idle_rate_endpoints") == 1
        assert sample("infergate_collector_scrape_rate_changes_total", to="idle") == 1

        pods[0].state.engines[0].waiting = 3
        await scraper.scrape_once(timeout)
        assert not scraper.rate.idle and state.heartbeat_interval == cfg.heartbeat_interval
        assert offers[-1] == "change" and state.snapshot.waiting == 3
        assert sample("infergate_collector_idle_rate_endpoints") == 0
        assert sample("infergate_collector_scrape_rate_changes_total", to="fast") == 1

        # the loop: idle again after quiet pages; a removed endpoint's cancelled loop leaves
        # the gauge and the heartbeat as they were
        pods[0].state.engines[0].waiting = 0
        task = asyncio.create_task(scraper.run())
        await wait_until(lambda: scraper.rate.idle, what="the idle rate")
        assert sample("infergate_collector_idle_rate_endpoints") == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sample("infergate_collector_idle_rate_endpoints") == 0
        assert state.heartbeat_interval == cfg.heartbeat_interval
        assert sample("infergate_collector_scrape_rate_changes_total", to="fast") == 1
