"""What the picker reads from Envoy's ext_proc messages: request headers and metadata.

Kept apart from :mod:`picker.extproc` (which drives the exchange and writes the answers)
because it is the one place that knows the header names of both families (InferGate's /
upstream's and llm-d's) and the metadata namespaces Envoy passes.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from .director import RequestHeaders, new_request_id
from .ids import bounded_request_id
from .protocol import (
    CONFORMANCE_SELECTION,
    DESTINATION,
    DESTINATION_SERVED,
    DESTINATION_SUBSET,
    FAIRNESS_ID,
    LB_NAMESPACE,
    MODEL_REWRITE,
    OBJECTIVE,
    REQUEST_ID,
    SLO_TPOT,
    SLO_TTFT,
    SUBSET_NAMESPACE,
)

__all__ = ["header_value", "read_request_headers", "read_served", "read_subset"]

# Control headers of both families -> the RequestHeaders field they fill, and whether the
# name is llm-d's (read first when a request carries both).
_CONTROL = {
    **{name: ("rewrite", i == 0) for i, name in enumerate(MODEL_REWRITE)},
    **{name: ("objective", i == 0) for i, name in enumerate(OBJECTIVE)},
    **{name: ("fairness_id", i == 0) for i, name in enumerate(FAIRNESS_ID)},
    **{name: ("slo_ttft", i == 0) for i, name in enumerate(SLO_TTFT)},
    **{name: ("slo_tpot", i == 0) for i, name in enumerate(SLO_TPOT)},
}


def header_value(h: base_pb2.HeaderValue) -> str:
    return h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value


def read_request_headers(msg: ep.HttpHeaders) -> RequestHeaders:
    hdr = RequestHeaders()
    llmd: set[str] = set()  # fields already set from an x-llm-d-* header
    hdr.count = len(msg.headers.headers)
    for h in msg.headers.headers:
        k = h.key.lower()
        if not k:
            continue
        if k[0] == ":":
            if k == ":path":
                hdr.path = header_value(h)
            elif k == ":method":
                hdr.method = header_value(h)
        elif k.startswith("x-"):
            if k == REQUEST_ID:
                hdr.request_id = bounded_request_id(header_value(h).strip())
            elif k in _CONTROL:
                name, canonical = _CONTROL[k]
                value = header_value(h).strip() or None
                if value is not None and (canonical or name not in llmd):
                    setattr(hdr, name, value)
                    if canonical:
                        llmd.add(name)
            elif k.startswith(DESTINATION) and k != DESTINATION:
                hdr.strip.append(k)
        elif k == CONFORMANCE_SELECTION:
            hdr.selection = header_value(h)
        elif k == "content-length":
            try:
                hdr.content_length = int(header_value(h))
            except ValueError:
                hdr.content_length = None
    if not hdr.request_id:
        hdr.request_id = new_request_id()
        hdr.request_id_generated = True
    return hdr


def read_subset(req: ep.ProcessingRequest) -> list[str] | None:
    """The subset hint: ``None`` when absent, else the listed ``ip:port`` (maybe empty)."""
    fm = req.metadata_context.filter_metadata
    if SUBSET_NAMESPACE not in fm:
        return None
    fields = fm[SUBSET_NAMESPACE].fields
    if DESTINATION_SUBSET not in fields:
        return None
    v = fields[DESTINATION_SUBSET]
    kind = v.WhichOneof("kind")
    if kind == "list_value":
        return [x.string_value for x in v.list_value.values if x.string_value]
    if kind == "string_value":
        return [s for s in v.string_value.split(",") if s.strip()]
    return []


def read_served(req: ep.ProcessingRequest) -> str | None:
    """The endpoint the gateway says served the request (``envoy.lb`` response metadata)."""
    fm = req.metadata_context.filter_metadata
    if LB_NAMESPACE not in fm:
        return None
    v = fm[LB_NAMESPACE].fields.get(DESTINATION_SERVED)
    if v is None or v.WhichOneof("kind") != "string_value":
        return None
    return v.string_value
