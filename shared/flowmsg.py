"""Flow control's per-replica message on ``<prefix>.<ns>.<pool>.fc.<replica>`` (see picker/flow/pool.py).

Published by every picker replica with flow control on, every ``publish_interval`` (100 ms):
its demand (requests queued plus its own in flight) for the pool-wide shares, the tokens
of service it gave each flow since its last message (least-attained-service, shared), and
its queue length per target model, which the autoscaler serves as an external metric so
that an HPA can scale a model up from zero while requests wait for it.
"""

from __future__ import annotations

import msgspec

__all__ = ["FlowMessage", "decode_flow", "encode_flow"]


class FlowMessage(msgspec.Struct, array_like=True):
    replica: str
    ts: float
    demand: int
    service: dict[str, float] = {}
    queued: dict[str, int] = {}  # target model -> requests waiting in this replica
    top: int | None = None  # the highest priority waiting in this replica (None: nothing waits)


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(FlowMessage)


def encode_flow(msg: FlowMessage) -> bytes:
    return _enc.encode(msg)


def decode_flow(data: bytes) -> FlowMessage:
    """Raises ``msgspec.DecodeError`` (or ``ValueError``) on a malformed payload."""
    return _dec.decode(data)
