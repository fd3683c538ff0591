"""The pure placement step and the desired-adapters spec (no I/O)."""

from __future__ import annotations

import pytest

from collector import adapter_place as place
from collector.adapter_place import Candidate, Holder, Record
from shared.adapters import AdaptersError, load_text, wanted
from shared.kvstore import Conflict, MemoryKv, kv_token


def cand(server: str, serving: bool = False, free: int = 4) -> Candidate:
    return Candidate(server, f"10.0.0.1:{server[-4:]}", serving, free)


def test_claims_one_server_per_pass_preferring_one_that_serves_it() -> None:
    p = place.plan(
        None, me="n1/c", replicas=2, now=100.0, ttl=30, local={"a:1", "b:1"},
        candidates=[cand("a:1", free=3), cand("b:1", serving=True, free=1)], loaded_here={"b:1"},
    )  # fmt: skip
    assert p.claimed == "b:1" and p.record.holders["b:1"].state == place.LOADED
    # short again next pass, but a second claim of ours waits `spread_passes` passes
    again = place.plan(
        p.record, me="n1/c", replicas=2, now=101.0, ttl=30, local={"a:1", "b:1"},
        candidates=[cand("a:1", free=3)], loaded_here={"b:1"}, short_passes=1,
    )  # fmt: skip
    assert again.claimed is None
    later = place.plan(
        p.record, me="n1/c", replicas=2, now=102.0, ttl=30, local={"a:1", "b:1"},
        candidates=[cand("a:1", free=3)], loaded_here={"b:1"}, short_passes=2,
    )  # fmt: skip
    assert later.claimed == "a:1" and later.record.holders["a:1"].state == place.LOADING


def test_full_servers_are_never_claimed() -> None:
    p = place.plan(
        None, me="m", replicas=1, now=1.0, ttl=30, local={"a:1"}, candidates=[cand("a:1", free=0)],
        loaded_here=set(),
    )  # fmt: skip
    assert p.claimed is None and not p.record.holders


def test_over_replication_releases_only_our_newest_holders() -> None:
    rec = Record(
        replicas=3,
        holders={
            "a:1": Holder(collector="other", address="x", claimed=1.0, seen=99.0, state=place.LOADED),
            "b:1": Holder(collector="me", address="y", claimed=2.0, seen=99.0, state=place.LOADED),
            "c:1": Holder(collector="me", address="z", claimed=3.0, seen=99.0, state=place.LOADED),
        },
    )
    p = place.plan(
        rec, me="me", replicas=1, now=100.0, ttl=30, local={"b:1", "c:1"}, candidates=[],
        loaded_here={"b:1", "c:1"},
    )  # fmt: skip
    assert sorted(p.released) == ["b:1", "c:1"]
    assert p.record.holders["a:1"].state == place.LOADED


def test_dead_collectors_claims_expire_and_ours_follow_the_node() -> None:
    rec = Record(
        holders={
            "a:1": Holder(collector="dead", address="x", claimed=1.0, seen=10.0),
            "b:1": Holder(collector="me", address="y", claimed=2.0, seen=99.0),
        }
    )
    p = place.plan(rec, me="me", replicas=2, now=100.0, ttl=30, local=set(), candidates=[], loaded_here=set())
    assert sorted(p.dropped) == ["a:1", "b:1"] and not p.record.holders


def test_spec_parsing_and_routing_targets() -> None:
    text = """
adapters:
  - {name: sql-lora, source: /a/sql, replicas: 2, pool: llama}
  - {name: other-pool, source: /a/o, pool: elsewhere}
defaults: {source: "/adapters/{name}", replicas: 1}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: canary, namespace: default}
spec:
  poolRef: {name: llama}
  rules:
    - matches: [{model: {type: Exact, value: chat}}]
      targets: [{modelRewrite: chat-v1, weight: 90}, {modelRewrite: chat-v2, weight: 10},
                {modelRewrite: base, weight: 1}]
"""
    spec = load_text(text, "adapters.yaml")
    want, undeclared = wanted(spec, "default", "llama", base_models={"base"})
    assert set(want) == {"sql-lora", "chat-v1", "chat-v2"}
    assert want["sql-lora"].replicas == 2 and not want["sql-lora"].implied
    assert want["chat-v2"].source == "/adapters/chat-v2" and want["chat-v2"].implied
    assert undeclared == []
    no_default = load_text(text.replace('defaults: {source: "/adapters/{name}", replicas: 1}', ""))
    want, undeclared = wanted(no_default, "default", "llama", base_models={"base"})
    assert set(want) == {"sql-lora"} and undeclared == ["chat-v1", "chat-v2"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("adapters: [{name: a}]", "adapters[0].source: is required"),
        ("adapters: [{name: a, source: s, replicas: -1}]", "adapters[0].replicas"),
        ("adapters: [{name: a, source: s, bogus: 1}]", "unknown field(s) bogus"),
        ("adapters: [{name: a, source: s}, {name: a, source: t}]", "adapters[1]: duplicate of adapters[0]"),
        ("adapters: {name: a}", "adapters must be a list"),
        ("adapters: [", "invalid YAML"),
    ],
)
def test_bad_specs_name_the_entry(text: str, error: str) -> None:
    with pytest.raises(
        AdaptersError,
        match=error.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        load_text(text, "f.yaml")


async def test_memory_kv_compare_and_set() -> None:
    kv = MemoryKv()
    rev = await kv.create("k", b"1")
    with pytest.raises(Conflict):
        await kv.create("k", b"2")
    rev2 = await kv.update("k", b"2", rev)
    with pytest.raises(Conflict):
        await kv.update("k", b"3", rev)
    assert (await kv.get("k")).value == b"2" and rev2 > rev
    assert kv_token("my.adapter/v1") == "my=2eadapter=2fv1"
    assert place.record_key("default", "llama", "a.b") == "default.llama.a=2eb"


def test_deploy_examples_parse() -> None:
    """The documented examples are valid: the ConfigMap's spec and the marked rewrite."""
    from pathlib import Path

    import yaml

    from picker.models import ModelTable
    from picker.rollout.spec import rollouts_of
    from shared import crds

    root = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    docs = [d for d in yaml.safe_load_all((root / "lora-adapters.yaml").read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    spec = load_text(cm["data"]["adapters.yaml"], "example")
    want, _ = wanted(spec, "default", "vllm-llama2-7b")
    assert want["chat-lora-v2"].replicas == 2
    table = ModelTable(crds.load_yaml((root / "rollout.yaml").read_text()), "vllm-llama2-7b")
    (r,) = rollouts_of(table.rewrites, table.rule_of)
    assert (r.model, r.stable, r.canary, r.settings.steps) == (
        "chat",
        "chat-lora-v1",
        "chat-lora-v2",
        (5, 25, 50, 100),
    )


def test_an_orphaned_copy_is_adopted_while_short_and_released_once_full() -> None:
    """A managed adapter loaded on our server with no holder (its record or holder was lost)."""
    other = Holder(collector="other", address="x", claimed=1.0, seen=99.0, state=place.LOADED)
    short = place.plan(
        Record(replicas=2, holders={"a:1": other}), me="me", replicas=2, now=100.0, ttl=30,
        local={"b:1"}, candidates=[cand("b:1", serving=True)], loaded_here={"b:1"},
    )  # fmt: skip
    assert short.claimed == "b:1" and short.record.holders["b:1"].state == place.LOADED
    full = place.plan(
        Record(replicas=1, holders={"a:1": other}), me="me", replicas=1, now=100.0, ttl=30,
        local={"b:1"}, candidates=[cand("b:1", serving=True)], loaded_here={"b:1"},
    )  # fmt: skip
    assert full.released == ["b:1"] and full.record.holders["b:1"].state == place.RELEASING
    assert full.record.holders["b:1"].collector == "me" and full.changed
    # a copy the spec does not ask for (no candidates) is someone else's: never touched
    unmanaged = place.plan(
        None, me="me", replicas=0, now=100.0, ttl=30, local={"b:1"}, candidates=[],
        loaded_here={"b:1"},
    )  # fmt: skip
    assert not unmanaged.record.holders and not unmanaged.released
