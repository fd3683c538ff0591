"""vLLM compatibility of the block hash chain and the event layout, proven without our code.

The reference values are computed here straight from vLLM's documented algorithm
(``hash_block_tokens`` with ``sha256_cbor``: ``sha256(cbor2.dumps((parent, tuple(tokens),
extra_keys), canonical=True))``, ``NONE_HASH = sha256_cbor(PYTHONHASHSEED)``, the external
hash the low 64 bits read big-endian) with ``hashlib`` and ``cbor2``, the same libraries
vLLM uses; our implementation writes its CBOR by hand. The message layout is checked
against msgspec structs declared the way ``vllm/distributed/kv_events.py`` declares them,
and against a byte string written out from the msgpack specification.
"""

from __future__ import annotations

import hashlib
import random

import cbor2
import msgspec
import pytest

from shared import kvevents as kv
from shared.kvhash import BlockHasher, block_hash, external, none_hash, sha256_cbor


def ref_sha256_cbor(obj) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def ref_chain(tokens: list[int], block_size: int, seed: str, extra_keys=None) -> list[bytes]:
    parent = ref_sha256_cbor(seed)  # vLLM: init_none_hash(sha256_cbor) with PYTHONHASHSEED=seed
    out = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = ref_sha256_cbor((parent, tuple(tokens[start : start + block_size]), extra_keys))
        out.append(parent)
    return out


def test_pinned_vectors_seed_0():
    # Pinned once from the reference functions above (cbor2 5.x, hashlib): they guard against
    # the reference and the implementation drifting together.
    assert none_hash("0").hex() == "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e"
    h = BlockHasher(block_size=16, seed="0")
    digests = h.digests([*list(range(1, 33)), 99])  # the trailing partial block is not hashed
    assert [d.hex() for d in digests] == [
        "202da172482d928bbc42ab25b0151e2b895f13f41002e27b2ceabcfae6d332ea",
        "4a0a393805c6d2f0ed831000d41bb65980336c4c04895d5e26470bbec927f5bf",
    ]
    assert h.hashes(list(range(1, 33))) == [3236607068019569386, 2758186210834249151]


@pytest.mark.parametrize("seed", ["0", "42", "1234567"])
@pytest.mark.parametrize("block_size", [1, 16, 32])
def test_chain_matches_reference(seed, block_size):
    rng = random.Random(hash((seed, block_size)) & 0xFFFF)
    # token ids across every CBOR integer width: < 24, < 256, < 65536, < 2**32, < 2**64
    pool = [0, 5, 23, 24, 255, 256, 32_000, 65_535, 65_536, 151_935, 2**32 - 1, 2**32, 2**63]
    tokens = [
        rng.choice(pool) if rng.random() < 0.3 else rng.randrange(200_000) for _ in range(block_size * 7 + 3)
    ]
    want = ref_chain(tokens, block_size, seed)
    got = BlockHasher(block_size=block_size, seed=seed).digests(tokens)
    assert got == want
    assert BlockHasher(block_size=block_size, seed=seed).hashes(tokens) == [
        int.from_bytes(d, "big") & (2**64 - 1) for d in want
    ]


def test_extra_keys_and_general_objects_match_cbor2():
    # extra_keys as vLLM builds them (LoRA name, cache salt...) and the generic encoder
    for obj in [
        "0",
        "",
        "é" * 30,
        b"\x00" * 32,
        (1, "x", None, True, False),
        ((b"ab", (1, 2)), None),
        2**64 - 1,
    ]:
        assert sha256_cbor(obj) == ref_sha256_cbor(obj)
    parent = ref_sha256_cbor("7")
    toks = list(range(100, 116))
    for extra in [("my-lora",), ("salt-1",), ("my-lora", "salt-1")]:
        assert block_hash(parent, toks, extra) == ref_sha256_cbor((parent, tuple(toks), extra))


def test_external_is_low_64_bits_big_endian():
    d = bytes(range(32))
    assert external(d) == int.from_bytes(d[-8:], "big")


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unsupported"):
        BlockHasher(algo="sha256")


# -- the message layout ------------------------------------------------------------------------


class VEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list
    data_parallel_rank: int | None = None


class VKVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(VKVCacheEvent):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None


class BlockRemoved(VKVCacheEvent):
    block_hashes: list[int | bytes]
    medium: str | None


class AllBlocksCleared(VKVCacheEvent):
    pass


def test_encoding_is_byte_identical_to_vllms_structs():
    vb = VEventBatch(
        ts=1700000000.25,
        events=[
            BlockStored([2**64 - 1, 7], None, list(range(32)), 16, None, "GPU", None),
            BlockRemoved([7], "GPU"),
            AllBlocksCleared(),
        ],
        data_parallel_rank=0,
    )
    ours = kv.EventBatch(
        1700000000.25,
        [
            kv.BlockStored([2**64 - 1, 7], None, list(range(32)), 16, None, "GPU", None),
            kv.BlockRemoved([7], "GPU"),
            kv.AllBlocksCleared(),
        ],
        0,
    )
    assert kv.encode_batch(ours) == msgspec.msgpack.encode(vb)


def test_decoding_a_captured_message_written_from_the_msgpack_spec():
    payload = bytes.fromhex(
        "93"  # array(3): [ts, events, rank]
        "cb41d954fc40100000"  # float64 1700000000.25
        "92"  # events: array(2)
        "98"  # BlockStored: array(8)
        "ab426c6f636b53746f726564"  # "BlockStored"
        "92cf000000000000000a07"  # block_hashes [10 (uint64 form), 7]
        "c0"  # parent nil
        "920102"  # token_ids [1, 2]
        "02"  # block_size 2
        "c0a3435055c0"  # lora_id nil, medium "CPU", lora_name nil
        "93ac426c6f636b52656d6f766564"  # BlockRemoved: array(3), "BlockRemoved"
        "91c4020102"  # block_hashes [bin 0x0102]
        "c0"  # medium nil
        "01"  # data_parallel_rank 1
    )
    b = kv.decode_batch(payload)
    assert b.ts == 1700000000.25 and b.data_parallel_rank == 1
    stored, removed = b.events
    assert stored == kv.BlockStored([10, 7], None, [1, 2], 2, None, "CPU", None)
    assert removed == kv.BlockRemoved([0x0102], None)  # 32-byte digests: low 64 bits


def test_decoder_tolerates_older_and_newer_layouts_and_the_map_form():
    older = msgspec.msgpack.encode([1.0, [["BlockStored", [1], None, [5], 1, None], ["BlockRemoved", [1]]]])
    b = kv.decode_batch(older)
    assert b.events == [kv.BlockStored([1], None, [5], 1), kv.BlockRemoved([1])]
    newer = msgspec.msgpack.encode(
        [2.0, [["BlockStored", [3], 1, [6], 1, None, "GPU", None, [None], 0, "full", None], ["Future", 1]], 0]
    )
    b = kv.decode_batch(newer)
    assert b.events == [kv.BlockStored([3], 1, [6], 1, None, "GPU", None)]  # unknown tags skipped
    as_map = msgspec.msgpack.encode({"ts": 3.0, "events": [{"type": "BlockRemoved", "block_hashes": [9]}]})
    assert kv.decode_batch(as_map).events == [kv.BlockRemoved([9])]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgspec.msgpack.encode([1.0]),
        msgspec.msgpack.encode(["x", []]),
        msgspec.msgpack.encode([1.0, [["BlockStored", "nope", None, [], 1]]]),
        msgspec.msgpack.encode([1.0, [["BlockRemoved", [True]]]]),
        msgspec.msgpack.encode([1.0, [5]]),
    ],
)
def test_malformed_batches_are_refused_whole(payload):
    with pytest.raises(kv.KVEventError):
        kv.decode_batch(payload)


def test_sequence_frames():
    assert kv.seq_of(kv.seq_bytes(2**40)) == 2**40
    assert kv.seq_of(kv.END_SEQ) == -1
    with pytest.raises(kv.KVEventError):
        kv.seq_of(b"\x00")


def test_delta_and_digest_round_trip():
    d = kv.KVDelta("10.0.0.1:8000", "ep", 3, 1.5, [1, 2**64 - 1], [3], [4], [], True, 16)
    assert kv.decode_delta(kv.encode_delta(d)) == d
    g = kv.KVDigest("10.0.0.1:8000", "ep", 3, 1.5, [1, 2], [3], 16, False)
    assert kv.decode_digest(kv.encode_digest(g)) == g
    with pytest.raises(kv.KVEventError):
        kv.decode_delta(msgspec.msgpack.encode({"a": "x", "s": 1, "+": ["no"]}))
