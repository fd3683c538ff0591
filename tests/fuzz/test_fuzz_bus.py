"""Fuzz every bus subject the picker and the autoscaler read, through a real nats-server.

A running picker (pool view + peer sharing) and a running autoscaler follow their
subjects while random bytes, random msgpack trees and near-valid messages (every schema's
fields with hostile values: NaN, infinities, huge and negative numbers, wrong types, long
strings) are published on the endpoint and event subjects. After each batch:

* every payload that does not decode is counted in the reader's metric (view decode
  failures, sharing decode errors, autoscaler decode failures), exactly once;
* nothing crashed (no supervised task restarted, no error logged);
* the views are not corrupted: a valid snapshot from the real collector and a peer's valid
  assignment published afterwards are applied (same values on both readers), the picker
  routes a request, and every autoscaler series is a finite, non-negative number.
"""

from __future__ import annotations

import itertools
import json
import logging
import math

import msgspec
import nats
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.quantity import quantity
from autoscaler.service import Autoscaler, AutoscalerConfig
from picker.envoy_client import _headers
from picker.extproc import Exchange
from picker.service import Picker
from picker.sharing import SharingSettings
from shared import schemas
from shared.feed import endpoint_key
from shared.natsconn import NatsOptions, ensure_streams
from shared.schemas import Assignment, Completion, EventBatch, encode, now
from shared.subjects import Subjects
from tests.fuzz.budget import budget
from tests.support.pickers import loopback_config
from tests.support.snapshots import snapshot
from tests.support.waiting import wait_until

SUBJ = Subjects("infergate")
POOL, NS = "pool", "default"
MARK = "10.0.0.1:8000"  # the real collector's endpoint: fuzz payloads target it too
OTHER = "10.0.0.2:8000"
# The real collector's incarnation: random in production, and no fuzz value can equal it (a
# message forging it with a higher seq would be indistinguishable from the real collector's).
REAL_EPOCH = "collector-incarnation-5f0e1d2c"
REPLICA = "fuzz-picker"
PEER = "peer-real"
EP_SUBJECTS = [
    SUBJ.endpoint(NS, POOL, "pod-10-0-0-1-8000", 8000),
    SUBJ.endpoint(NS, POOL, "pod-x", 1),
    SUBJ.endpoint(NS, "other-pool", "pod-y", 8000),
]
EV_SUBJECTS = [
    SUBJ.events(NS, POOL, "peer-fuzz"),
    SUBJ.events(NS, POOL, PEER),
    SUBJ.events(NS, "other-pool", "p"),
]
MODELS = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: base}
spec: {modelName: base, criticality: Critical, poolRef: {name: pool}}
"""

# -- strategies ----------------------------------------------------------------------------------

INT64 = 2**63 - 1
weird_float = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1.0, 0.0, 1e18, 2.5]), st.floats()
)
weird_int = st.one_of(
    st.sampled_from([-1, 0, INT64, -(2**63), 2**64 - 1, 10**12]), st.integers(-(2**63), 2**64 - 1)
)
weird_str = st.one_of(
    st.sampled_from(["", " ", NS, POOL, MARK, OTHER, "x" * 600, "\x00", "10.0.0.1", "a:b:c", PEER, REPLICA]),
    st.text(max_size=16),
)
leaf = st.one_of(st.none(), st.booleans(), weird_int, weird_float, weird_str, st.binary(max_size=16))
tree = st.recursive(
    leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(weird_str, kids, max_size=4)),
    max_leaves=12,
)


SPECIAL = {  # fields whose hostile values matter most, drawn more often
    "ts": st.sampled_from([math.nan, math.inf, -math.inf, 1e18, 4e9, 0.0, -1.0]),
    "seq": st.sampled_from([0, 1, -1, INT64, 2**64 - 1]),
    "epoch": st.sampled_from(["", "evil", "e1"]),
    "kv_usage": st.sampled_from([math.nan, math.inf, -1.0, 2.0, 1e308]),
    "waiting": st.sampled_from([-1, INT64, 2**64 - 1]),
    "running": st.sampled_from([-1, INT64, 2**64 - 1]),
    "block_size": st.sampled_from([0, -1, INT64]),
    "kv_capacity_tokens": st.sampled_from([0, -1, INT64, 2**64 - 1]),
}


def _typed(name: str, annotation: str) -> st.SearchStrategy:
    if name in SPECIAL:
        return st.one_of(SPECIAL[name], _typed("", annotation))
    if "float" in annotation:
        return weird_float
    if "int" in annotation and "list" not in annotation:
        return weird_int
    if "bool" in annotation:
        return st.booleans()
    if "str" in annotation and "list" not in annotation:
        return weird_str
    if annotation.startswith("list"):
        inner = weird_int if "int" in annotation else weird_str
        return st.lists(inner, max_size=6)
    return tree


def message_of(cls: type[msgspec.Struct], tag: str) -> st.SearchStrategy[dict]:
    """A dict with ``cls``'s tag and a random subset of its fields: each of a hostile value of
    the right type (so the message decodes and must be judged on its values), or anything."""

    def build(wild: bool) -> st.SearchStrategy[dict]:
        fields = {
            f: st.one_of(_typed(f, str(a)), tree) if wild else _typed(f, str(a))
            for f, a in cls.__annotations__.items()
            if f != "v"
        }
        fields["v"] = st.one_of(st.just(1), weird_int)
        kind = st.one_of(st.just(tag), weird_str) if wild else st.just(tag)
        return st.fixed_dictionaries({"kind": kind}, optional=fields)

    return st.one_of(build(False), build(True))


def _endpoint_facts(d: dict, aim: bool) -> dict:
    """Half the endpoint messages are about the real collector's endpoint, whatever else they say."""
    facts = {"namespace": NS, "pool": POOL, "address": MARK, "pod": "pod-fuzz"}
    if aim:
        return {**d, **facts}
    return {**facts, **d}


snapshots = st.builds(_endpoint_facts, message_of(schemas.EndpointSnapshot, "snap"), st.booleans())
tombstones = st.builds(_endpoint_facts, message_of(schemas.Tombstone, "gone"), st.booleans())
assignments = message_of(schemas.Assignment, "assign")
completions = message_of(schemas.Completion, "done")
batches = st.builds(
    lambda d, evs: {**d, "events": evs},
    message_of(schemas.EventBatch, "batch"),
    st.lists(st.one_of(assignments, completions, tree), max_size=4),
)


def _pack(obj) -> bytes:
    return msgspec.msgpack.encode(obj)


def payloads(structured: st.SearchStrategy[dict]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=80),
        structured.map(_pack),
        structured.map(_pack),
        st.builds(lambda d, junk: _pack(d) + junk, structured, st.binary(min_size=1, max_size=4)),
        structured.map(lambda d: json.dumps(d, default=repr).encode()),  # JSON where msgpack is expected
    )


endpoint_pubs = st.tuples(
    st.sampled_from(EP_SUBJECTS), payloads(st.one_of(snapshots, snapshots, tombstones, tree))
)
event_pubs = st.tuples(
    st.sampled_from(EV_SUBJECTS), payloads(st.one_of(assignments, completions, batches, tree))
)
publications = st.lists(st.one_of(endpoint_pubs, event_pubs), min_size=1, max_size=10)


# -- the readers under test ----------------------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def readers(nats_server, tmp_path):
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    nc = await nats.connect(nats_server.url)
    await ensure_streams(nc.jetstream(), SUBJ)
    errors = _Errors()
    for name in ("picker", "autoscaler", "shared"):
        logging.getLogger(name).addHandler(errors)
    opts = NatsOptions(servers=[nats_server.url], reconnect_wait=0.1)
    picker = Picker(
        loopback_config(
            config_files=[str(models)],
            replica_name=REPLICA,
            nats=opts,
            sharing=SharingSettings(replica=REPLICA, peer_timeout_s=0),
            metrics_staleness_threshold=3600,
        )
    )
    scaler = Autoscaler(
        AutoscalerConfig(nats=opts, secure_host="127.0.0.1", secure_port=0, ops_host="127.0.0.1", ops_port=0)
    )
    try:
        await picker.start()
        await scaler.start()
        await picker.wait_ready(15)
        await wait_until(scaler.health.ready, 15, "autoscaler ready")
        yield nc, picker, scaler, errors
    finally:
        await picker.stop(grace=0.5)
        await scaler.stop()
        await nc.close()
        for name in ("picker", "autoscaler", "shared"):
            logging.getLogger(name).removeHandler(errors)


def _counts(picker: Picker, scaler: Autoscaler) -> tuple[int, int, int, int]:
    fails = scaler.metrics.decode_failures
    return (
        picker.view.decoder.failures,
        int(picker.sharing.listener.metrics.decode_errors._value.get()),
        int(fails.labels("endpoints")._value.get()),
        int(fails.labels("events")._value.get()),
    )


def _expected(pubs: list[tuple[str, bytes]]) -> tuple[int, int, int, int]:
    """Decode failures each reader must count, by the schema's own decoders."""
    ep_dec, ev_dec = schemas.endpoint_decoder(), schemas.event_decoder()
    view = sharing = scaler_ep = scaler_ev = 0
    for subject, data in pubs:
        origin = SUBJ.parse(subject)
        assert origin is not None
        if origin.kind == "endpoint":
            bad = ep_dec.decode(data) is None
            scaler_ep += bad
            view += bad and origin.pool == POOL
        else:
            bad = ev_dec.decode(data) is None
            scaler_ev += bad
            sharing += bad and origin.pool == POOL
    return view, sharing, scaler_ep, scaler_ev


def _route_one(picker: Picker) -> int:
    """A normal request through the picker's ext_proc state machine; returns the status."""
    ex = Exchange(picker.director)
    ex.handle(
        ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=_headers([(":path", "/v1/completions")])))
    )
    body = json.dumps({"model": "base", "prompt": "hello"}).encode()
    out = ex.handle(ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=True)))
    ex.close()
    first = out[0]
    return first.immediate_response.status.code if first.HasField("immediate_response") else 200


_round = itertools.count(1)


@budget(60, shrink=False)
@given(pubs=publications)
async def test_hostile_bus_payloads_are_counted_and_never_corrupt_the_views(readers, pubs):
    nc, picker, scaler, errors = readers
    n = next(_round)
    before = _counts(picker, scaler)
    for subject, data in pubs:
        await nc.publish(subject, data)
    # The real collector's next snapshot of MARK and a real peer's assignment: published after
    # the fuzz on the same connection, so once they are applied every fuzz payload was read.
    snap = snapshot(
        MARK,
        pool=POOL,
        pod="pod-10-0-0-1-8000",
        epoch=REAL_EPOCH,
        seq=n,
        ts=now(),
        waiting=n,
        model="base",
        served_models=["base"],
    )
    await nc.publish(EP_SUBJECTS[0], encode(snap))
    rid = f"real-{n}"
    assign = Assignment(
        request_id=rid, replica=PEER, address=OTHER, model="base", target_model="base", ts=now()
    )
    await nc.publish(EV_SUBJECTS[1], encode(EventBatch(replica=PEER, events=[assign], ts=now())))
    await nc.flush()

    key = endpoint_key(snap)
    view = picker.view
    await wait_until(
        lambda: MARK in view.endpoints and view.endpoints[MARK].snapshot.waiting == n,
        5,
        "the picker applied the real snapshot",
    )
    agg = scaler.aggregator
    await wait_until(
        lambda: key in agg._endpoints and agg._endpoints[key].waiting == n,
        5,
        "the autoscaler applied the real snapshot",
    )
    ledger = picker.sharing.listener.applier.ledger
    await wait_until(lambda: (PEER, rid) in ledger._seen, 5, "the peer's assignment applied")
    await wait_until(lambda: (PEER, rid) in agg._flights, 5, "the autoscaler saw the assignment")

    got = [c - b for c, b in zip(_counts(picker, scaler), before, strict=True)]
    assert got == list(_expected(pubs)), (got, pubs)
    assert view.endpoints[MARK].snapshot.epoch == REAL_EPOCH
    assert _route_one(picker) == 200
    for series in agg.series():
        assert math.isfinite(series.value) and series.value >= 0, series
        quantity(series.value)
    assert not picker.supervisor.restarts and not scaler.supervisor.restarts
    assert not errors.records, [r.getMessage() for r in errors.records]
    # Release the peer's request, as the real peer would.
    done = Completion(request_id=rid, replica=PEER, address=OTHER, ts=now())
    await nc.publish(EV_SUBJECTS[1], encode(EventBatch(replica=PEER, events=[done], ts=now())))
