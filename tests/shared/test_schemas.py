import msgspec
import pytest

from shared import schemas
from shared.schemas import Assignment, Completion, EndpointSnapshot, EventBatch, LoraState, Tombstone


def snapshot(**kw) -> EndpointSnapshot:
    base = dict(
        namespace="ns",
        pool="pool",
        pod="pod-0",
        address="10.0.0.1:8000",
        waiting=3,
        running=7,
        kv_usage=0.42,
        kv_capacity_tokens=119408,
        lora=LoraState(running=["a"], waiting=["b"], max_lora=4),
        ts=1700000000.5,
        seq=9,
        epoch="e1",
    )
    base.update(kw)
    return EndpointSnapshot(**base)


@pytest.mark.parametrize(
    "message",
    [
        snapshot(),
        Tombstone(namespace="ns", pool="pool", pod="pod-0", address="10.0.0.1:8000", reason="deleted", seq=3),
        Assignment(
            request_id="r1",
            replica="p0",
            address="10.0.0.1:8000",
            model="m",
            target_model="m-v2",
            prompt_tokens=120,
            prefix_hashes=[1, 2, 3],
        ),
        Completion(request_id="r1", replica="p0", address="10.0.0.1:8000", output_tokens=50, latency_s=1.2),
    ],
)
def test_round_trip(message):
    dec = schemas.SafeDecoder(schemas.AnyMessage)
    assert dec.decode(schemas.encode(message)) == message


def test_decoded_messages_are_not_tracked_by_the_garbage_collector():
    """Pickers hold and replace thousands of snapshots a second: untracked, no collection walks them."""
    import gc

    dec = schemas.SafeDecoder(schemas.AnyMessage)
    snap = dec.decode(schemas.encode(snapshot()))
    done = Completion(request_id="r", replica="p0", address="a:1")
    batch = schemas.event_decoder().decode(schemas.encode(EventBatch(replica="p0", events=[done])))
    assert not gc.is_tracked(snap) and not gc.is_tracked(snap.lora)
    assert not gc.is_tracked(batch) and not gc.is_tracked(batch.events[0])


def test_batch_round_trip():
    batch = EventBatch(
        replica="p0",
        events=[
            Assignment(request_id="r1", replica="p0", address="a:1", model="m", target_model="m"),
            Completion(request_id="r1", replica="p0", address="a:1"),
        ],
    )
    assert schemas.event_decoder().decode(schemas.encode(batch)) == batch


def test_endpoint_decoder_reads_both_kinds():
    dec = schemas.endpoint_decoder()
    assert isinstance(dec.decode(schemas.encode(snapshot())), EndpointSnapshot)
    assert isinstance(
        dec.decode(schemas.encode(Tombstone(namespace="n", pool="p", pod="x", address="a:1"))), Tombstone
    )


def test_newer_writer_extra_fields_are_ignored():
    """A rolling upgrade: a v2 collector adds fields; a v1 picker still reads the message."""
    raw = msgspec.msgpack.decode(schemas.encode(snapshot()))
    raw["v"] = 2
    raw["gpu_temperature_c"] = 71.5
    raw["lora"]["adapter_ranks"] = {"a": 16}
    got = schemas.endpoint_decoder().decode(msgspec.msgpack.encode(raw))
    assert isinstance(got, EndpointSnapshot)
    assert got.v == 2 and got.waiting == 3 and got.lora.running == ["a"]


def test_garbage_is_counted_and_dropped():
    errors = []
    dec = schemas.endpoint_decoder(on_error=lambda data, exc: errors.append(exc))
    for junk in [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgspec.msgpack.encode({"kind": "snap"}),
        msgspec.msgpack.encode({"kind": "unknown-kind"}),
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode(
            {"kind": "snap", "namespace": "n", "pool": "p", "pod": "x", "address": "a:1", "waiting": "three"}
        ),
    ]:
        assert dec.decode(junk) is None
    assert dec.failures == 7 and len(errors) == 7


def test_omitted_defaults_keep_messages_small():
    assert len(schemas.encode(snapshot())) < 300
