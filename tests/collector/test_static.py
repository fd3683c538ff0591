"""Static discovery: the targets file (validation, reload, broken versions) and --target flags."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from collector.targets import (
    StaticDiscovery,
    Target,
    TargetsError,
    for_node,
    load_targets_text,
    parse_target_flag,
)
from shared import schemas
from tests.support.fakepod import FakePods
from tests.support.waiting import wait_until


def test_targets_file_defaults_and_forms():
    text = """
- pool: llama
  pod: vllm-0
  address: 10.0.0.5:8000
- pool: llama
  namespace: ml
  pod: vllm-1
  address: "[fd00::1]:8001"
  node: gpu-2
"""
    a, b = load_targets_text(text)
    assert a == Target("default", "llama", "vllm-0", "10.0.0.5", 8000, "")
    assert b == Target("ml", "llama", "vllm-1", "fd00::1", 8001, "gpu-2")
    assert b.address == "[fd00::1]:8001" and b.url() == "http://[fd00::1]:8001/metrics"
    assert load_targets_text("targets:\n- {pool: p, pod: x, address: '127.0.0.1:1'}") == [
        Target("default", "p", "x", "127.0.0.1", 1)
    ]
    assert load_targets_text("") == [] and load_targets_text("targets: []") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {pod: x, address: '1.2.3.4:80'}", "targets[0]: pool is required"),
        ("- {pool: p, address: '1.2.3.4:80'}", "targets[0]: pod is required"),
        ("- {pool: p, pod: x}", "targets[0]: address is required"),
        ("- {pool: p, pod: x, address: 'vllm:80'}", "'vllm' in 'vllm:80' is not an IP address"),
        ("- {pool: p, pod: x, address: '1.2.3.4'}", "must be ip:port"),
        ("- {pool: p, pod: x, address: '1.2.3.4:99999'}", "out of range"),
        ("- {pool: p, pod: x, address: '1.2.3.4:http'}", "is not a number"),
        ("- {pool: p, pod: x, address: '1.2.3.4:80', port: 1}", "unknown field(s) port"),
        ("- {pool: 5, pod: x, address: '1.2.3.4:80'}", "pool must be a string"),
        ("- [a, b]", "targets[0]: must be a mapping"),
        ("pool: p", "expected a list of targets"),
        (
            "- {pool: p, pod: x, address: '1.2.3.4:80'}\n- {pool: p, pod: x, address: '1.2.3.5:80'}",
            "duplicate",
        ),
        ("- {pool: p, pod: x, address: [", "invalid YAML"),
    ],
)
def test_targets_file_errors_name_the_entry(text, message):
    with pytest.raises(TargetsError) as err:
        load_targets_text(text, "t.yaml")
    assert message in str(err.value) and str(err.value).startswith("t.yaml")


def test_target_flag():
    assert parse_target_flag("llama/vllm-0=127.0.0.1:8000") == Target(
        "default", "llama", "vllm-0", "127.0.0.1", 8000
    )
    assert parse_target_flag("ml/llama/vllm-0=127.0.0.1:8000").namespace == "ml"
    for bad in [
        "llama=127.0.0.1:8000",
        "a/b/c/d=1.2.3.4:1",
        "llama/vllm-0",
        "llama//=1.2.3.4:1",
        "p/x=host:1",
    ]:
        with pytest.raises(TargetsError):
            parse_target_flag(bad)


def test_node_filter():
    ts = [
        Target("d", "p", "a", "1.1.1.1", 1, ""),
        Target("d", "p", "b", "1.1.1.2", 1, "n1"),
        Target("d", "p", "c", "1.1.1.3", 1, "n2"),
    ]
    assert [t.pod for t in for_node(ts, "n1")] == ["a", "b"]
    assert [t.pod for t in for_node(ts, "")] == ["a", "b", "c"]


def _write(path, text: str) -> None:
    # a new inode each time, like a ConfigMap update (and mtime granularity cannot hide it)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _entry(pod, port, node=None) -> str:
    line = f"- {{pool: pool, pod: {pod}, address: '127.0.0.1:{port}'"
    return line + (f", node: {node}}}\n" if node else "}\n")


async def test_static_discovery_reload_broken_file_and_tombstones(
    make_collector, subscriber, tmp_path, caplog
):
    path = tmp_path / "targets.yaml"
    async with FakePods(3) as pods:
        _write(path, _entry("pod-0", pods[0].port) + _entry("pod-x", 1, node="another-node"))
        c = await make_collector(targets_file=str(path), targets_poll_interval=0.05)
        await c.wait_ready()
        assert [k[2] for k in c.scrapers] == ["pod-0"]  # pod-x is on another node
        await wait_until(lambda: subscriber.last("pod-0"))

        # reload: one added
        _write(path, _entry("pod-0", pods[0].port) + _entry("pod-1", pods[1].port))
        await wait_until(lambda: set(k[2] for k in c.scrapers) == {"pod-0", "pod-1"}, what="reload")
        await wait_until(lambda: subscriber.last("pod-1"))

        # a broken version: logged, counted, the previous targets stay
        with caplog.at_level(logging.ERROR, logger="collector.targets"):
            _write(path, _entry("pod-0", pods[0].port) + "- {pool: pool, pod: pod-2, address: nope}\n")
            await wait_until(lambda: c.metrics.targets_file_errors._value.get() == 1, what="error counted")
        assert "targets[1]" in c.discovery.last_error and "'nope'" in c.discovery.last_error
        assert any("keeping the previous targets" in r.getMessage() for r in caplog.records)
        await asyncio.sleep(0.3)
        assert set(k[2] for k in c.scrapers) == {"pod-0", "pod-1"}
        assert c.metrics.targets_file_errors._value.get() == 1  # logged once per broken version
        assert c.ready()

        # fixed: pod-1 removed (tombstone), pod-2 added
        _write(path, _entry("pod-0", pods[0].port) + _entry("pod-2", pods[2].port))
        await wait_until(lambda: set(k[2] for k in c.scrapers) == {"pod-0", "pod-2"}, what="fixed file")
        await wait_until(lambda: isinstance(subscriber.last("pod-1"), schemas.Tombstone))
        assert subscriber.last("pod-1").reason == "removed from targets"
        await wait_until(lambda: subscriber.last("pod-2"))
        assert c.discovery.last_error == ""

        # the file disappears: an error, and the targets stay
        os.remove(path)
        await wait_until(lambda: "cannot read targets file" in c.discovery.last_error)
        assert set(k[2] for k in c.scrapers) == {"pod-0", "pod-2"}


async def test_static_file_missing_at_start_then_created(make_collector, tmp_path):
    path = tmp_path / "later.yaml"
    async with FakePods(1) as pods:
        c = await make_collector(
            targets_file=str(path),
            targets_poll_interval=0.05,
            targets=[parse_target_flag("p/flag=127.0.0.1:9")],
        )
        await asyncio.sleep(0.3)
        assert "discovery" in c.health.failing()  # not synced until the file is read once
        assert [k[2] for k in c.scrapers] == ["flag"]  # the flag targets are scraped meanwhile
        _write(path, _entry("pod-0", pods[0].port))
        await c.wait_ready()
        assert set(k[2] for k in c.scrapers) == {"flag", "pod-0"}


async def test_file_reads_happen_off_the_event_loop(tmp_path, monkeypatch):
    calls = []
    real = asyncio.to_thread

    async def spy(fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", str(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    path = tmp_path / "t.yaml"
    path.write_text(_entry("a", 1))
    applied = []
    disc = StaticDiscovery(lambda ts, r: applied.append(ts), path=str(path))
    await disc.check()
    assert calls == ["stat", "_read_text"]
    await disc.check()  # unchanged: only a stat
    assert calls == ["stat", "_read_text", "stat"]
    assert [t.pod for t in applied[0]] == ["a"]
