"""The HTTP filter chain: cap the body, ask the picker, split its endpoint list, route.

Before the chain, ``strip_headers`` (an HCM early header mutation, which runs before
route selection) removes client-sent ``x-gateway-destination-endpoint`` and the
per-attempt headers. The picker strips them too, but in FailOpen a dead picker never
sees the request: an unstripped header would let any client aim the ORIGINAL_DST
clusters at an arbitrary host, or, removed later by a filter, leave a stale route cached.

Order matters and each step has one job:

1. ``buffer`` (when ``max_request_bytes`` > 0) answers 413 for an oversized body before
   the picker spends work on it, and keeps the body so a fallback retry can replay it.
2. ``ext_proc`` talks to the picker, and accepts the ``envoy.lb`` dynamic metadata it
   sends (``metadata_options.receiving_namespaces``): the picker's ordered list
   ``choice,fallback1,...``. The ``x-gateway-destination-endpoint`` header carries the
   choice only, as upstream's protocol says.
3. ``lua`` splits that list (from the metadata; from the header when the metadata is
   absent, e.g. a picker run with ``--destination-header-list``) into one header per
   attempt (see clusters.py for why ORIGINAL_DST needs that).
4. ``router``.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutation
from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.extensions.filters.http.buffer.v3 import Buffer
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    MetadataOptions,
    MetadataOptionsMetadataNamespaces,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    HeaderMutation as EarlyHeaderMutation,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any

from picker.envoy.clusters import PICKER_CLUSTER, attempt_header, seconds
from picker.envoy.options import (
    ATTEMPT_HEADER_PREFIX,
    DESTINATION_HEADER,
    LB_NAMESPACE,
    BootstrapOptions,
    FailureMode,
    Mode,
)

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"

_SEND = ProcessingModeHeaderSendMode.SEND
_SKIP = ProcessingModeHeaderSendMode.SKIP

_SPLIT_LUA = """\
-- Split the picker's "ip:port,ip:port,..." into one header per attempt, because an
-- ORIGINAL_DST cluster parses exactly one address. Attempt i reads {prefix}i.
-- The list comes from the ext_proc dynamic metadata {namespace}/{destination}; the
-- header (the choice alone, or the list with --destination-header-list) is the fallback.
function envoy_on_request(handle)
  local headers = handle:headers()
  local list = nil
  local lb = handle:streamInfo():dynamicMetadata():get("{namespace}")
  if lb ~= nil then
    list = lb["{destination}"]
  end
  if list == nil then
    list = headers:get("{destination}")
  end
  if list == nil then
    return
  end
  local i = 0
  for address in string.gmatch(list, "[^,%s]+") do
    if i >= {attempts} then
      break
    end
    headers:replace("{prefix}" .. i, address)
    i = i + 1
  end
end
"""


def _filter(name: str, config: object) -> HttpFilter:
    return HttpFilter(name=name, typed_config=Any.pack(config))


def strip_headers(opts: BootstrapOptions) -> list[TypedExtensionConfig]:
    """HCM ``early_header_mutation_extensions``: applied before routing, so no stale route."""
    names = [DESTINATION_HEADER] + [attempt_header(i) for i in range(opts.max_endpoint_attempts)]
    mutation = EarlyHeaderMutation(mutations=[HeaderMutation(remove=n) for n in names])
    return [
        TypedExtensionConfig(
            name="envoy.http.early_header_mutation.header_mutation", typed_config=Any.pack(mutation)
        )
    ]


def processing_mode(opts: BootstrapOptions) -> ProcessingMode:
    """Headers both ways; bodies as configured. Envoy requires trailers SEND with FULL_DUPLEX_STREAMED."""
    request_body = ProcessingModeBodySendMode[opts.request_body_mode.value]
    response_body = ProcessingModeBodySendMode[opts.response_body_mode.value]
    full_duplex = ProcessingModeBodySendMode.FULL_DUPLEX_STREAMED
    return ProcessingMode(
        request_header_mode=_SEND,
        response_header_mode=_SEND,
        request_body_mode=request_body,
        response_body_mode=response_body,
        request_trailer_mode=_SEND if request_body == full_duplex else _SKIP,
        response_trailer_mode=_SEND if response_body == full_duplex else _SKIP,
    )


def ext_proc_filter(opts: BootstrapOptions) -> HttpFilter:
    """The Endpoint Picker. FailOpen lets requests through without a destination header
    (the route table then sends them to the round-robin pool); FailClose answers 503."""
    config = ExternalProcessor(
        grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=PICKER_CLUSTER)),
        processing_mode=processing_mode(opts),
        failure_mode_allow=opts.failure_mode is FailureMode.FAIL_OPEN,
        # The picker may skip response processing for requests it does not care about.
        allow_mode_override=True,
        message_timeout=seconds(opts.message_timeout_s),
        max_message_timeout=seconds(max(opts.message_timeout_s, 60.0)),
        status_on_error=HttpStatus(code=StatusCode.ServiceUnavailable),
        # Keep the picker's envoy.lb metadata (the endpoint list): Envoy drops namespaces
        # that are not listed here.
        metadata_options=MetadataOptions(
            receiving_namespaces=MetadataOptionsMetadataNamespaces(untyped=[LB_NAMESPACE])
        ),
    )
    return _filter(EXT_PROC_FILTER, config)


def split_filter(opts: BootstrapOptions) -> HttpFilter:
    source = (
        _SPLIT_LUA.replace("{destination}", DESTINATION_HEADER)
        .replace("{namespace}", LB_NAMESPACE)
        .replace("{prefix}", ATTEMPT_HEADER_PREFIX)
        .replace("{attempts}", str(opts.max_endpoint_attempts))
    )
    return _filter("envoy.filters.http.lua", Lua(default_source_code=DataSource(inline_string=source)))


def buffer_filter(opts: BootstrapOptions) -> HttpFilter:
    return _filter("envoy.filters.http.buffer", Buffer(max_request_bytes=opts.max_request_bytes))


def router_filter() -> HttpFilter:
    # Keep x-envoy-* headers off the model servers: vLLM does not need them.
    return _filter("envoy.filters.http.router", Router(suppress_envoy_headers=True))


def http_filters(opts: BootstrapOptions) -> list[HttpFilter]:
    chain: list[HttpFilter] = []
    if opts.max_request_bytes:
        chain.append(buffer_filter(opts))
    if opts.mode is Mode.PICKER:
        chain += [ext_proc_filter(opts), split_filter(opts)]
    chain.append(router_filter())
    return chain
