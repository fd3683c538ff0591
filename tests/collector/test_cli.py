"""The command line: flags, environment fallbacks, the ops endpoints, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from collector.__main__ import build_parser, config_from_args
from collector.service import Collector, CollectorConfig
from collector.targets import Target
from shared.natsconn import NatsOptions
from shared.portfile import read_port_file
from tests.collector.conftest import Subscriber, targets_of
from tests.support.fakepod import FakePods
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _args(argv, env=None, monkeypatch=None):
    for k in ("NODE_NAME", "INFERGATE_NODE_NAME", "POD_NAME", "INFERGATE_COLLECTOR_NAME", "INFERGATE_TARGET"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return config_from_args(build_parser().parse_args(argv))


def test_defaults(monkeypatch):
    cfg = _args([], monkeypatch=monkeypatch)
    assert cfg.scrape_interval == 0.05 and cfg.unhealthy_after == 3 and cfg.heartbeat_interval == 0.1
    assert cfg.idle_scrape_interval is None and cfg.idle_interval() == 0.1  # the default, in force
    # a setup scraping every 0.1 s or slower keeps working: the default turns itself off
    assert _args(["--scrape-interval", "0.2"], monkeypatch=monkeypatch).idle_interval() == 0.0
    assert cfg.discovery_mode() == "kubernetes" and cfg.pool_api_version == "v1" and cfg.namespaces == []
    assert cfg.nats.servers == ["nats://127.0.0.1:4222"] and cfg.ops_port == 9091


def test_node_name_env_fallbacks(monkeypatch):
    assert _args([], {"NODE_NAME": "from-downward-api"}, monkeypatch).node_name == "from-downward-api"
    both = {"NODE_NAME": "downward", "INFERGATE_NODE_NAME": "explicit"}
    assert _args([], both, monkeypatch).node_name == "explicit"
    assert _args(["--node-name", "flag"], both, monkeypatch).node_name == "flag"


def test_flags_and_env(monkeypatch):
    cfg = _args(
        [
            "--target", "llama/vllm-0=127.0.0.1:8000",
            "--target", "ml/llama/vllm-1=127.0.0.2:8000",
            "--namespaces", "ml, prod",
            "--pool-api-version", "v1alpha2",
            "--nats-url", "nats://a:4222,nats://b:4222",
            "--subject-prefix", "ig",
        ],
        {"INFERGATE_SCRAPE_INTERVAL": "0.1", "INFERGATE_UNHEALTHY_AFTER": "5", "POD_NAME": "collector-x",
         "INFERGATE_IDLE_SCRAPE_INTERVAL": "0.15"},
        monkeypatch,
    )  # fmt: skip
    assert cfg.targets == [
        Target("default", "llama", "vllm-0", "127.0.0.1", 8000),
        Target("ml", "llama", "vllm-1", "127.0.0.2", 8000),
    ]
    assert cfg.discovery_mode() == "static"
    assert cfg.namespaces == ["ml", "prod"] and cfg.pool_api_version == "v1alpha2"
    assert cfg.scrape_interval == 0.1 and cfg.unhealthy_after == 5 and cfg.idle_scrape_interval == 0.15
    assert cfg.nats.servers == ["nats://a:4222", "nats://b:4222"] and cfg.nats.subject_prefix == "ig"
    assert cfg.collector_name == "collector-x"
    env_targets = _args([], {"INFERGATE_TARGET": "p/a=127.0.0.1:1,p/b=127.0.0.1:2"}, monkeypatch).targets
    assert [t.pod for t in env_targets] == ["a", "b"]


def test_bad_flags_exit_with_a_message(capsys):
    from collector.__main__ import main

    for argv, needle in [
        (["--target", "nonsense"], "expected [namespace/]pool/pod=ip:port"),
        (["--scrape-interval", "0"], "--scrape-interval"),
        (["--idle-scrape-interval", "0.02"], "at least the scrape interval"),
        (["--idle-scrape-interval", "2"], "must be below 1 s"),
        (["--discovery", "kubernetes", "--node-name", ""], "node-name"),
        (["--pool-api-version", "v2"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--nats-url", "nats://127.0.0.1:1"])
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err


def test_readme_documents_every_flag():
    readme = (ROOT / "collector" / "README.md").read_text()
    parser = build_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    missing = [f for f in flags if f"`{f}" not in readme]
    assert not missing, f"undocumented flags: {missing}"
    for env in parser.env_vars().values():
        assert env in readme, env


async def test_ops_endpoints(nats_server):
    async with FakePods(2) as pods:
        c = Collector(
            CollectorConfig(
                node_name="n",
                nats=NatsOptions(servers=[nats_server.url]),
                targets=targets_of(pods),
                ops_host="127.0.0.1",
                ops_port=0,
            )
        )
        await c.start()
        try:
            base = f"http://127.0.0.1:{c.ops.port}"
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/healthz") as r:
                    assert r.status == 200
                await c.wait_ready()
                async with s.get(base + "/readyz") as r:
                    assert r.status == 200
                await pods[1].stop()
                await wait_until(lambda: c.metrics.endpoints.labels("unhealthy")._value.get() == 1)
                async with s.get(base + "/metrics") as r:
                    text = await r.text()
            for needle in [
                'infergate_collector_scrape_duration_seconds_bucket{le="0.005",outcome="ok"}',
                'infergate_collector_scrape_errors_total{namespace="default",pod="pod-1",pool="pool",reason="connect"}',
                'infergate_collector_publish_total{kind="snapshot",reason="change"}',
                "infergate_collector_publish_errors_total 0.0",
                'infergate_collector_endpoints{state="healthy"} 1.0',
                'infergate_collector_endpoints{state="unhealthy"} 1.0',
                "infergate_collector_nats_connected 1.0",
                "infergate_collector_discovery_synced 1.0",
            ]:
                assert needle in text, needle
            # a removed endpoint's per-pod series go away
            c.apply(targets_of(pods[:1]), {})
            async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
                assert 'pod="pod-1"' not in await r.text()
        finally:
            await c.stop()


async def test_subprocess_runs_and_stops_cleanly_on_sigterm(nats_server, tmp_path):
    port_file = tmp_path / "ports.json"
    async with FakePods(1) as pods:
        sub = await Subscriber().start(nats_server.url)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NODE_NAME": "node-z"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector",
            "--target", f"pool/{pods[0].name}={pods[0].address}",
            "--nats-url", nats_server.url,
            "--ops-host", "127.0.0.1", "--ops-port", "0", "--port-file", str(port_file),
            "--log-format", "json",
            cwd=str(ROOT), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            ops_port = (await read_port_file(port_file, 30, alive=lambda: proc.returncode is None))["ops"]
            await wait_until(lambda: sub.last("pod-0"), deadline_s=20, what="a snapshot from the subprocess")
            snap = sub.last("pod-0")
            assert snap.collector.startswith("node-z/") and snap.node == "node-z"
            async with aiohttp.ClientSession() as s:
                for _ in range(100):
                    async with s.get(f"http://127.0.0.1:{ops_port}/readyz") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
                assert r.status == 200
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 15)
            assert rc == 0
            err = (await proc.stderr.read()).decode()
            assert '"msg": "collector stopped"' in err
            assert not re.search(r'"level": "(error|critical)"', err), err
            n = len(sub.messages)
            await asyncio.sleep(0.3)
            assert len(sub.messages) == n  # nothing after the exit
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await sub.close()
