"""Every header, metadata key and value of the Endpoint Picker protocol, in one place.

The names come from upstream: the Gateway API Inference Extension (GIE, ``x-gateway-*``,
proposal 004 and ``pkg/epp/metadata``) and llm-d-router, where the EPP moved
(``x-llm-d-*``, its ``pkg/epp/metadata`` and ``pkg/common/error``). The picker, the Envoy
bootstrap generator and the test helpers import them from here, so a rename happens once.

Where both families name the same control header, the llm-d name is read first (as
llm-d-router does: the ``x-gateway-*`` names are its deprecated aliases); either alone
works.
"""

from __future__ import annotations

__all__ = [
    "ATTEMPT_HEADER_PREFIX",
    "CONFORMANCE_SELECTION",
    "CONFORMANCE_SERVED",
    "CONFORMANCE_SERVED_MISSING",
    "DEFAULT_FAIRNESS_ID",
    "DESTINATION",
    "DESTINATION_SERVED",
    "DESTINATION_SUBSET",
    "DROPPED_REASON",
    "EXT_PROC_SERVICE",
    "FAIRNESS_ID",
    "HEALTH_LIVENESS",
    "HEALTH_READINESS",
    "HEALTH_SERVICES",
    "INFERENCE_PATHS",
    "LB_NAMESPACE",
    "MODELS_PATH",
    "MODEL_REWRITE",
    "OBJECTIVE",
    "REQUEST_ID",
    "SLO_TTFT",
    "SUBSET_NAMESPACE",
    "Dropped",
]

# -- destination (picker -> proxy) ---------------------------------------------------------
# Request header with exactly ONE ip:port, the choice: an ORIGINAL_DST cluster parses one
# address (a list there is a 503 "invalid override header value" in Envoy 1.40).
DESTINATION = "x-gateway-destination-endpoint"
# Dynamic metadata namespace and key carrying the ordered list "choice,fallback1,...";
# Envoy keeps it only when the ext_proc filter lists the namespace in
# metadata_options.receiving_namespaces.untyped.
LB_NAMESPACE = "envoy.lb"
# Response metadata (same namespace) a gateway may fill with the endpoint that served.
DESTINATION_SERVED = "x-gateway-destination-endpoint-served"
# Subset hint (proxy -> picker): filter_metadata[SUBSET_NAMESPACE][DESTINATION_SUBSET].
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
DESTINATION_SUBSET = "x-gateway-destination-endpoint-subset"

# -- control request headers (client or gateway -> picker), llm-d name first ---------------
REQUEST_ID = "x-request-id"
OBJECTIVE = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
FAIRNESS_ID = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
MODEL_REWRITE = ("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite")
# Latency objectives in milliseconds (picker/latency/README.md; TTFT is also flow control's
# EDF deadline); llm-d's names first.
SLO_TTFT = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")
SLO_TPOT = ("x-llm-d-slo-tpot-ms", "x-slo-tpot-ms")
# The flow a request without a fairness id belongs to (upstream's value).
DEFAULT_FAIRNESS_ID = "default-flow"

# -- rejections -----------------------------------------------------------------------------
DROPPED_REASON = "x-llm-d-request-dropped-reason"


class Dropped:
    """Values of ``x-llm-d-request-dropped-reason``: upstream's, then InferGate's own."""

    SATURATED = "rejected-saturated"  # 429: shed under load
    NO_ENDPOINTS = "rejected-no-endpoints"  # 503: no candidate endpoint
    TTL_EXPIRED = "rejected-ttl-expired"  # 429: queued in flow control past its TTL
    INTERNAL = "rejected-internal"  # 500
    # InferGate's: the request itself is wrong, or the picker cannot route yet.
    BAD_REQUEST = "rejected-bad-request"  # 400 / 413
    UNKNOWN_MODEL = "rejected-unknown-model"  # 404 under --unknown-model-policy reject
    NOT_READY = "rejected-not-ready"  # 503: the picker is starting or stopping


# -- conformance test hooks (only with --conformance-test-hooks) -----------------------------
CONFORMANCE_SELECTION = "test-epp-endpoint-selection"
CONFORMANCE_SERVED = "x-conformance-test-served-endpoint"
# Upstream's reference picker's value when the gateway did not report the served endpoint.
CONFORMANCE_SERVED_MISSING = "fail: missing destination endpoint served metadata"

# -- gRPC health (grpc.health.v1), on the ext_proc port and on the health port --------------
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_LIVENESS = "liveness"
HEALTH_READINESS = "readiness"
HEALTH_SERVICES = ("", HEALTH_LIVENESS, HEALTH_READINESS, EXT_PROC_SERVICE)

# -- paths ----------------------------------------------------------------------------------
MODELS_PATH = "/v1/models"  # answered by the picker itself (an ImmediateResponse)
# What a gateway in front of the pool should expose: the OpenAI inference API, nothing of
# vLLM's admin surface (/v1/load_lora_adapter, /metrics, /reset_prefix_cache, ...).
INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", MODELS_PATH)

# -- InferGate's own Envoy bootstrap --------------------------------------------------------
# One header per attempt, written by the generated config's split filter from the list.
ATTEMPT_HEADER_PREFIX = "x-infergate-endpoint-"
