"""Pure parts of the autoscaler: quantities, selectors, and every aggregation rule (fake clock)."""

import pytest

from autoscaler import aggregate as A
from autoscaler.quantity import parse_quantity, quantity, rfc3339
from autoscaler.selector import SelectorError, parse
from shared.schemas import Assignment, Completion, EndpointSnapshot, EventBatch, LoraState, Tombstone

NOW = 1_700_000_000.0  # a fixed time in the past: readers drop snapshots from the future


@pytest.mark.parametrize(
    ("value", "text"), [(12, "12"), (1.5, "1500m"), (0, "0"), (0.42, "420m"), (2.9999, "3"), (0.0004, "0")]
)
def test_quantity_formats_whole_numbers_plainly_and_fractions_in_milli(value, text):
    assert quantity(value) == text
    assert parse_quantity(text) == pytest.approx(round(value, 3))


def test_rfc3339_is_utc_seconds():
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


LABELS = {"model_name": "llama", "pool": "p1", "target_model": "llama-lora"}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("model_name=llama", True),
        ("model_name==llama", True),
        ("model_name!=llama", False),
        ("model_name=other", False),
        ("pool in (p1, p2)", True),
        ("pool notin (p1,p2)", False),
        ("pool, model_name", True),
        ("!pool", False),
        ("!missing", True),
        ("missing!=x", True),
        ("model_name=llama,pool in (p2)", False),
        ("example.com/team=x", False),
    ],
)
def test_selector_semantics_follow_kubernetes(text, matches):
    assert parse(text).matches(LABELS) is matches


@pytest.mark.parametrize("text", ["a in ()", "a in (b", "a)", "=x", "a=b=c", "a in ((b))", "bad key=x"])
def test_malformed_selectors_raise(text):
    with pytest.raises(SelectorError):
        parse(text)


def test_an_empty_value_is_a_legal_selector():
    assert parse("model_name=").matches({"model_name": ""})


def snap(
    pod="pod-a",
    *,
    waiting=0,
    kv=0.0,
    ts=NOW,
    seq=1,
    model="llama",
    lora=(),
    lora_waiting=(),
    ready=True,
    healthy=True,
    address=None,
    epoch="e1",
):
    return EndpointSnapshot(
        namespace="ns",
        pool="p1",
        pod=pod,
        address=address or f"{pod}:8000",
        model=model,
        waiting=waiting,
        kv_usage=kv,
        ts=ts,
        seq=seq,
        epoch=epoch,
        ready=ready,
        healthy=healthy,
        lora=LoraState(running=list(lora), waiting=list(lora_waiting)),
    )


def assign(rid, *, target="llama", model="llama", address="pod-a:8000", ts=NOW):
    return Assignment(
        request_id=rid,
        replica="r1",
        address=address,
        model=model,
        target_model=target,
        pool="p1",
        namespace="ns",
        ts=ts,
    )


def done(rid, *, tokens=0, target="llama", ts=NOW):
    return Completion(
        request_id=rid,
        replica="r1",
        address="pod-a:8000",
        target_model=target,
        pool="p1",
        namespace="ns",
        output_tokens=tokens,
        ts=ts,
    )


def values(agg, now=NOW, target="llama"):
    return {s.metric: s.value for s in agg.series(now) if s.labels["target_model"] == target}


def test_inflight_is_assignments_minus_completions_idempotent_by_request_id():
    agg = A.Aggregator(window=30, staleness=10, inflight_ttl=60)
    agg.on_endpoint(snap())
    for rid in ("r1", "r2", "r3"):
        agg.on_event(assign(rid), NOW)
    agg.on_event(assign("r1"), NOW)  # duplicate: counted once
    agg.on_event(EventBatch(replica="r1", events=[done("r1"), done("r1")]), NOW)  # duplicate completion
    assert values(agg)[A.INFLIGHT] == 2
    agg.on_event(done("r9"), NOW)  # a completion that overtakes its assignment...
    agg.on_event(assign("r9"), NOW)  # ...cancels it
    assert values(agg)[A.INFLIGHT] == 2


def test_inflight_entries_expire_after_the_ttl():
    agg = A.Aggregator(window=30, staleness=1000, inflight_ttl=60)
    agg.on_endpoint(snap(ts=NOW))
    agg.on_event(assign("lost"), NOW)
    assert values(agg, NOW + 59)[A.INFLIGHT] == 1
    assert values(agg, NOW + 61)[A.INFLIGHT] == 0
    assert agg.counters["expired"] == 1


def test_rates_are_counts_over_the_sliding_window():
    agg = A.Aggregator(window=10, staleness=100, inflight_ttl=600)
    agg.on_endpoint(snap())
    for i in range(20):
        agg.on_event(assign(f"a{i}", ts=NOW + i * 0.5), NOW + i * 0.5)  # 2/s for 10 s
        agg.on_event(done(f"a{i}", tokens=100, ts=NOW + i * 0.5), NOW + i * 0.5)
    v = values(agg, NOW + 9.5)
    assert v[A.ARRIVAL_RATE] == pytest.approx(2.0)
    assert v[A.OUTPUT_TOKENS] == pytest.approx(200.0)
    v = values(agg, NOW + 14.6)  # only the last ~5 s of events are still in the window
    assert v[A.ARRIVAL_RATE] == pytest.approx(1.0, abs=0.11)


def test_replayed_events_land_in_the_window_not_all_at_now():
    agg = A.Aggregator(window=10, staleness=100, inflight_ttl=600)
    agg.on_endpoint(snap())
    for i in range(10):  # replay on restart: old picker timestamps, all received now
        agg.on_event(assign(f"a{i}", ts=NOW - 30 + i * 3), NOW)
    # those older than the window are clamped to its start and leave it right away
    assert values(agg, NOW + 0.5)[A.ARRIVAL_RATE] == pytest.approx(3 / 10)


def test_waiting_kv_and_replicas_come_from_ready_healthy_pods_only():
    agg = A.Aggregator(window=30, staleness=10)
    agg.on_endpoint(snap("a", waiting=3, kv=0.5))
    agg.on_endpoint(snap("b", waiting=5, kv=0.7))
    agg.on_endpoint(snap("c", waiting=100, kv=1.0, ready=False))
    agg.on_endpoint(snap("d", waiting=100, kv=1.0, healthy=False))
    v = values(agg)
    assert v[A.WAITING] == 8
    assert v[A.KV_CACHE] == pytest.approx(0.6)
    assert v[A.READY_REPLICAS] == 2


def test_each_lora_adapter_is_its_own_model_and_shares_the_queue_by_inflight():
    agg = A.Aggregator(window=30, staleness=10)
    agg.on_endpoint(snap("a", waiting=8, kv=0.4, lora=("sql-lora",)))
    for i in range(3):
        agg.on_event(assign(f"s{i}", target="sql-lora", model="sql", address="a:8000"), NOW)
    agg.on_event(assign("b0", address="a:8000"), NOW)
    base, lora = values(agg), values(agg, target="sql-lora")
    assert lora[A.WAITING] == 6 and base[A.WAITING] == 2
    assert lora[A.INFLIGHT] == 3 and base[A.INFLIGHT] == 1
    assert lora[A.READY_REPLICAS] == base[A.READY_REPLICAS] == 1
    labels = next(s.labels for s in agg.series(NOW) if s.labels["target_model"] == "sql-lora")
    assert labels == {"pool": "p1", "target_model": "sql-lora", "model_name": "sql"}


def test_queue_without_inflight_goes_to_waiting_adapters_else_base_model():
    agg = A.Aggregator(window=30, staleness=10)
    agg.on_endpoint(snap("a", waiting=4, lora=("x",), lora_waiting=("x", "y")))
    agg.on_endpoint(snap("b", waiting=5))
    assert values(agg, target="x")[A.WAITING] == 2
    assert values(agg, target="y")[A.WAITING] == 2
    assert values(agg)[A.WAITING] == 5


def test_stale_snapshots_and_quiet_models_have_no_value():
    agg = A.Aggregator(window=5, staleness=10)
    agg.on_endpoint(snap(waiting=4, ts=NOW))
    assert values(agg, NOW + 9)[A.WAITING] == 4
    assert values(agg, NOW + 11) == {}
    agg.on_event(assign("r1", ts=NOW + 11), NOW + 11)  # events alone keep a model fresh for a window
    assert values(agg, NOW + 12)[A.INFLIGHT] == 1
    assert values(agg, NOW + 17) == {}


def test_tombstones_remove_endpoints_and_older_snapshots_cannot_resurrect_them():
    agg = A.Aggregator(window=30, staleness=10)
    agg.on_endpoint(snap("a", waiting=1, seq=1))
    agg.on_endpoint(snap("b", waiting=2, seq=1))
    agg.on_endpoint(Tombstone(namespace="ns", pool="p1", pod="a", address="a:8000", ts=NOW + 1))
    agg.on_endpoint(snap("a", waiting=50, seq=0, ts=NOW + 0.5, epoch="old"))
    v = values(agg, NOW + 2)
    assert v[A.WAITING] == 2 and v[A.READY_REPLICAS] == 1
    agg.on_endpoint(snap("a", waiting=3, seq=7, ts=NOW + 2))  # the pod came back
    assert values(agg, NOW + 2)[A.WAITING] == 5


def test_reordered_snapshots_are_dropped():
    agg = A.Aggregator(window=30, staleness=10)
    agg.on_endpoint(snap(waiting=5, seq=5))
    agg.on_endpoint(snap(waiting=1, seq=4))
    assert values(agg)[A.WAITING] == 5
    agg.on_endpoint(snap(waiting=2, seq=1, epoch="restarted", ts=NOW + 0.1))  # new collector incarnation
    assert values(agg, NOW + 0.1)[A.WAITING] == 2


def test_model_names_become_valid_label_values():
    assert A.label_value("meta-llama/Llama-2-7b-hf") == "meta-llama_Llama-2-7b-hf"
    assert A.label_value("/x:y/") == "x_y"
    assert len(A.label_value("a" * 100)) == 63
    agg = A.Aggregator()
    agg.on_endpoint(snap(model="meta-llama/Llama-2-7b-hf"))
    assert {s.labels["model_name"] for s in agg.series(NOW)} == {"meta-llama_Llama-2-7b-hf"}
    assert parse("model_name=meta-llama_Llama-2-7b-hf").matches(agg.series(NOW)[0].labels)


def test_declared_model_names_map_targets_and_win_over_learned_ones():
    from autoscaler.models import names_of
    from shared.crds import InferenceModel, TargetModel

    names = names_of(
        [
            InferenceModel(
                "chat", "ns", "chat", "p1", target_models=(TargetModel("lora-v1"), TargetModel("lora-v2"))
            ),
            InferenceModel("base", "ns", "llama", "p1"),
            InferenceModel("alias", "ns", "assistant", "p1", target_models=(TargetModel("lora-v1"),)),
        ]
    )
    assert names[A.ModelKey("ns", "p1", "lora-v2")] == "chat"
    assert names[A.ModelKey("ns", "p1", "lora-v1")] == "assistant"  # shared target: first name, sorted
    assert names[A.ModelKey("ns", "p1", "llama")] == "llama"  # no targetModels: serves its own name
    agg = A.Aggregator()
    agg.on_endpoint(snap(lora=("lora-v2",)))
    agg.on_event(assign("r1", target="lora-v2", model="learned"), NOW)
    assert agg.model_name(A.ModelKey("ns", "p1", "lora-v2")) == "learned"
    agg.declare_names(names)
    assert agg.model_name(A.ModelKey("ns", "p1", "lora-v2")) == "chat"


def test_completed_ids_are_forgotten_after_done_ttl_so_memory_stays_bounded():
    agg = A.Aggregator(window=10, staleness=1000, inflight_ttl=600, done_ttl=60)
    agg.on_endpoint(snap())
    agg.on_event(assign("r1"), NOW)
    agg.on_event(done("r1"), NOW)
    agg.on_event(assign("r1"), NOW + 30)  # a replay within the stream's age is ignored
    assert values(agg, NOW + 30)[A.INFLIGHT] == 0
    agg.housekeep(NOW + 61)
    assert len(agg._ledger) == 0
