"""Routes, local replies and the HTTP connection manager.

Routing on the destination header is what makes FailOpen work: before the picker
answers, and whenever it never answers, the request has no ``x-gateway-destination-endpoint``
header and matches the ``unpicked`` route; once the picker sets the header with
``clear_route_cache: true`` Envoy re-matches and picks the ``picked`` route, whose
cluster walks the picker's list. In FailClose ``unpicked`` is a 503.

Only the inference API paths (``BootstrapOptions.inference_paths``) match those routes;
every other path falls to ``not_found``, a 404 from Envoy itself with the picker switched
off for it, so no client reaches a model server's admin endpoints through the gateway.
"""

from __future__ import annotations

import re

from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLog,
    AccessLogFilter,
    ComparisonFilter,
    ComparisonFilterOp,
    ExtensionFilter,
    StatusCodeFilter,
)
from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    HttpProtocolOptions,
    RuntimeUInt32,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RetryPolicy,
    RetryPolicyRetryBackOff,
    RetryPolicyRetryHostPredicate,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ExtProcPerRoute
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher
from envoy_data_plane.google.protobuf import Any, Struct

from picker.envoy.clusters import MODEL_SERVERS_CLUSTER, POOL_CLUSTER, seconds
from picker.envoy.filters import EXT_PROC_FILTER, http_filters, strip_headers
from picker.envoy.options import DESTINATION_HEADER, SERVED_HEADER, BootstrapOptions, FailureMode, Mode
from shared.errors import error_dict

# Failures worth a retry on another endpoint: the request never reached a model server
# that answered. A 5xx from vLLM is an answer and goes back to the client as is.
RETRY_ON = "connect-failure,refused-stream,reset"

PICKER_DOWN_MESSAGE = "the endpoint picker is unavailable, so no model server was chosen for this request"
NO_DESTINATION_MESSAGE = "the endpoint picker did not choose a model server for this request"
NOT_FOUND_MESSAGE = "not found: this gateway serves the inference API only"

# Statuses Envoy itself may answer with; each gets an OpenAI-style error of the right type.
_LOCAL_STATUSES = (400, 404, 408, 413, 429, 431, 500, 502, 503, 504)


def _retry_policy(retries: int, *, other_hosts: bool) -> RetryPolicy:
    predicates = []
    if other_hosts:
        predicates = [
            RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=Any.pack(PreviousHostsPredicate()),
            )
        ]
    return RetryPolicy(
        retry_on=RETRY_ON,
        num_retries=retries,
        # Each retry goes to a different endpoint, so Envoy's default back-off (25 ms base,
        # jittered) only delays the request: measured ~19 ms added per refused endpoint.
        retry_back_off=RetryPolicyRetryBackOff(base_interval=seconds(0.001), max_interval=seconds(0.01)),
        retry_host_predicate=predicates,
        host_selection_retry_max_attempts=5 if other_hosts else 0,
    )


def _forward(opts: BootstrapOptions, cluster: str, retry: RetryPolicy | None) -> RouteAction:
    return RouteAction(
        cluster=cluster,
        # 0 disables the overall deadline: a long generation is not an error. Inactivity
        # is still bounded by idle_timeout (per route) and the HCM's stream_idle_timeout.
        timeout=seconds(opts.route_timeout_s),
        idle_timeout=seconds(opts.stream_idle_timeout_s),
        retry_policy=retry,
    )


def _served_header(opts: BootstrapOptions) -> list[HeaderValueOption]:
    """Tell the client which model server answered (upstream reports the same as ``...-served``)."""
    if not opts.served_header:
        return []
    return [
        HeaderValueOption(
            header=HeaderValue(key=SERVED_HEADER, value="%UPSTREAM_HOST%"),
            append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    ]


def _body_limit(opts: BootstrapOptions) -> int | None:
    # A retry replays the request body, which Envoy only can if it kept the whole body.
    return opts.max_request_bytes or None


def _inference_match(opts: BootstrapOptions, headers: list[HeaderMatcher] | None = None) -> RouteMatch:
    """The inference API paths, exactly (Envoy matches the path without its query string)."""
    alternatives = "|".join(re.escape(p) for p in sorted(set(opts.inference_paths)))
    return RouteMatch(safe_regex=RegexMatcher(regex=f"^({alternatives})$"), headers=headers or [])


def _not_found() -> Route:
    """Every other path: a 404 from Envoy, without consulting the picker."""
    return Route(
        name="not_found",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(status=404, body=DataSource(inline_string=NOT_FOUND_MESSAGE)),
        typed_per_filter_config={EXT_PROC_FILTER: Any.pack(ExtProcPerRoute(disabled=True))},
    )


def _pool_route(opts: BootstrapOptions, name: str) -> Route:
    """Round robin over the pool; a refused connection is retried on another server."""
    retries = max(0, min(opts.max_endpoint_attempts, len(opts.pool_endpoints)) - 1)
    return Route(
        name=name,
        match=_inference_match(opts),
        route=_forward(opts, POOL_CLUSTER, _retry_policy(retries, other_hosts=True)),
        response_headers_to_add=_served_header(opts),
        request_body_buffer_limit=_body_limit(opts),
    )


def routes(opts: BootstrapOptions) -> list[Route]:
    if opts.mode is Mode.ROUND_ROBIN:
        return [_pool_route(opts, "round_robin"), _not_found()]
    picked = Route(
        name="picked",
        match=_inference_match(opts, [HeaderMatcher(name=DESTINATION_HEADER, present_match=True)]),
        route=_forward(
            opts, MODEL_SERVERS_CLUSTER, _retry_policy(opts.max_endpoint_attempts - 1, other_hosts=False)
        ),
        response_headers_to_add=_served_header(opts),
        request_body_buffer_limit=_body_limit(opts),
    )
    if opts.failure_mode is FailureMode.FAIL_OPEN:
        return [picked, _pool_route(opts, "unpicked_round_robin"), _not_found()]
    unpicked = Route(
        name="unpicked_unavailable",
        match=_inference_match(opts),
        direct_response=DirectResponseAction(
            status=503, body=DataSource(inline_string=NO_DESTINATION_MESSAGE)
        ),
    )
    return [picked, unpicked, _not_found()]


def _error_format(status: int, message: str = "%LOCAL_REPLY_BODY%") -> SubstitutionFormatString:
    body = error_dict(status, message)
    body["error"]["code"] = "%RESPONSE_CODE%"
    return SubstitutionFormatString(json_format=Struct.from_dict(body), content_type="application/json")


def _status_is(status: int) -> AccessLogFilter:
    return AccessLogFilter(
        status_code_filter=StatusCodeFilter(
            comparison=ComparisonFilter(
                op=ComparisonFilterOp.EQ,
                value=RuntimeUInt32(default_value=status, runtime_key="infergate.unused"),
            )
        )
    )


def _cel(expression: str) -> AccessLogFilter:
    cel = ExpressionFilter(expression=expression)
    return AccessLogFilter(
        extension_filter=ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel", typed_config=Any.pack(cel)
        )
    )


# Envoy names an ext_proc failure (stream refused, reset, timed out) "ext_proc_error_...".
PICKER_FAILED = "response.code_details.startsWith('ext_proc_error')"
# A reply that already says it is JSON came from the picker (an ext_proc ImmediateResponse,
# e.g. 429 shed) and is already an OpenAI-style error: keep it as is.
ALREADY_JSON = (
    "'content-type' in response.headers && response.headers['content-type'].startsWith('application/json')"
)


def local_reply_config() -> LocalReplyConfig:
    """Turn Envoy's own plain-text error replies into OpenAI-style JSON errors.

    Mappers are tried in order: a picker failure becomes a 503 that says so (FailClose);
    a reply that is already JSON (the picker's own ImmediateResponse) passes untouched;
    every other local reply (no healthy upstream, 413, timeouts, ...) is wrapped with the
    error type of its status.
    """
    mappers = [
        ResponseMapper(
            filter=_cel(PICKER_FAILED),
            status_code=503,
            body_format_override=_error_format(503, PICKER_DOWN_MESSAGE),
        ),
        ResponseMapper(
            filter=_cel(ALREADY_JSON),
            body_format_override=SubstitutionFormatString(
                text_format_source=DataSource(inline_string="%LOCAL_REPLY_BODY%"),
                content_type="application/json",
            ),
        ),
    ]
    mappers += [
        ResponseMapper(filter=_status_is(status), body_format_override=_error_format(status))
        for status in _LOCAL_STATUSES
    ]
    return LocalReplyConfig(mappers=mappers, body_format=_error_format(500))


ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "destination": f"%REQ({DESTINATION_HEADER.upper()})%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    # Time to the first response byte from the model server: close to TTFT for a stream.
    "first_byte_ms": "%RESPONSE_DURATION%",
}


def access_logs(opts: BootstrapOptions) -> list[AccessLog]:
    if not opts.access_log:
        return []
    stdout = StdoutAccessLog(
        log_format=SubstitutionFormatString(json_format=Struct.from_dict(ACCESS_LOG_FIELDS))
    )
    return [AccessLog(name="envoy.access_loggers.stdout", typed_config=Any.pack(stdout))]


def connection_manager(opts: BootstrapOptions) -> HttpConnectionManager:
    return HttpConnectionManager(
        stat_prefix="infergate",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(
            name="infergate",
            virtual_hosts=[VirtualHost(name="inference_pool", domains=["*"], routes=routes(opts))],
        ),
        early_header_mutation_extensions=strip_headers(opts) if opts.mode is Mode.PICKER else [],
        http_filters=http_filters(opts),
        access_log=access_logs(opts),
        local_reply_config=local_reply_config(),
        stream_idle_timeout=seconds(opts.stream_idle_timeout_s),
        request_timeout=seconds(0),
        common_http_protocol_options=HttpProtocolOptions(
            idle_timeout=seconds(opts.connection_idle_timeout_s)
        ),
        # An edge proxy: the client's address is the peer's. Keep a client's x-request-id
        # though (Envoy would replace it on external requests): the picker generates one
        # only when it is absent, and logs correlate on it.
        use_remote_address=True,
        preserve_external_request_id=True,
    )


__all__ = ["connection_manager", "local_reply_config", "routes"]
