"""The External Metrics API (``external.metrics.k8s.io/v1beta1``) as an aiohttp application.

What the kube-aggregator and the HPA call, and nothing more:

* ``GET /apis/external.metrics.k8s.io/v1beta1`` -> ``APIResourceList``, one namespaced
  resource per metric with verbs ``[get]``. The aggregator's availability controller
  probes exactly this path (through the Service, with its front-proxy certificate,
  5 attempts, any 2xx/3xx passes) to mark the ``APIService`` ``Available``.
* ``GET .../namespaces/{ns}/{metric}?labelSelector=`` -> ``ExternalMetricValueList``.
* ``GET /apis`` (``APIGroupList``) and ``GET /apis/external.metrics.k8s.io`` (``APIGroup``):
  the aggregator's discovery reads ``/apis`` of the backend and falls back to the
  group-version document when the aggregated (v2) format is not offered, as here.
* ``/healthz``, ``/livez``, ``/readyz`` without authentication, for kubelet probes.
  ``/openapi/v2`` and ``/openapi/v3`` answer 404: the aggregator logs it and carries on
  (the API then has no published schema, which ``kubectl get --raw`` does not need).

Errors are Kubernetes ``Status`` objects: 404 for an unknown metric or path, 400 for a
malformed selector, 401 when front-proxy authentication is required and missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from autoscaler import selector
from autoscaler.aggregate import ARRIVAL_RATE, METRICS, OUTPUT_TOKENS, Aggregator
from autoscaler.quantity import quantity, rfc3339
from autoscaler.tls import common_name

log = logging.getLogger(__name__)

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
PREFIX = f"/apis/{GROUP_VERSION}"
_OPEN = frozenset({"/healthz", "/livez", "/readyz"})
RATES = frozenset({ARRIVAL_RATE, OUTPUT_TOKENS})
USER = web.RequestKey("user", str)  # the front-proxied user name, for handlers and logs


@dataclass(slots=True)
class FrontProxyAuth:
    """Request-header authentication, as kube-apiserver's ``--requestheader-*`` flags define it.

    The client certificate itself is verified against the request-header CA during the
    TLS handshake; here we require that one was presented, that its CN is allowed (an
    empty list allows any CN the CA signed) and that it carries a user name header.
    """

    allowed_names: list[str] = field(default_factory=list)
    username_headers: list[str] = field(default_factory=lambda: ["X-Remote-User"])

    def user(self, request: web.Request) -> tuple[str | None, str]:
        """The authenticated user, or ``None`` and the reason."""
        cn = common_name(request.transport.get_extra_info("peercert") if request.transport else None)
        if cn is None:
            return None, "a front-proxy client certificate is required"
        if self.allowed_names and cn not in self.allowed_names:
            return None, f"client certificate CN {cn!r} is not an allowed request-header name"
        for header in self.username_headers:
            if request.headers.get(header):
                return request.headers[header], ""
        return None, f"missing {self.username_headers[0]} header"


def status(code: int, reason: str, message: str, details: dict | None = None) -> web.Response:
    body: dict = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def _group() -> dict:
    gv = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [gv], "preferredVersion": gv}


class MetricsAPI:
    """Routes over an :class:`Aggregator`; ``on_request(code)`` feeds the request counter."""

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        auth: FrontProxyAuth | None = None,
        ready: Callable[[], bool] = lambda: True,
        on_request: Callable[[int], None] = lambda code: None,
    ) -> None:
        self.aggregator, self.auth, self.ready, self.on_request = aggregator, auth, ready, on_request
        self.app = web.Application(middlewares=[self._middleware])
        r = self.app.router
        r.add_get("/healthz", self._ok)
        r.add_get("/livez", self._ok)
        r.add_get("/readyz", self._readyz)
        r.add_get("/apis", self._apis)
        r.add_get(f"/apis/{GROUP}", self._api_group)
        r.add_get(PREFIX, self._resources)
        r.add_get(PREFIX + "/namespaces/{namespace}/{metric}", self._values)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            if self.auth is not None and request.path not in _OPEN:
                user, why = self.auth.user(request)
                if user is None:
                    return self._count(status(401, "Unauthorized", why))
                request[USER] = user
            response = await handler(request)
        except web.HTTPNotFound:
            response = status(
                404, "NotFound", f"the server could not find the requested resource {request.path}"
            )
        except web.HTTPMethodNotAllowed:
            response = status(405, "MethodNotAllowed", f"{request.method} is not supported")
        return self._count(response)

    def _count(self, response: web.StreamResponse) -> web.StreamResponse:
        self.on_request(response.status)
        return response

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok") if self.ready() else web.Response(text="not ready", status=503)

    async def _apis(self, request: web.Request) -> web.Response:
        group = _group()
        del group["kind"], group["apiVersion"]
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})

    async def _api_group(self, request: web.Request) -> web.Response:
        return web.json_response(_group())

    async def _resources(self, request: web.Request) -> web.Response:
        resources = [
            {
                "name": name,
                "singularName": "",
                "namespaced": True,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            }
            for name in METRICS
        ]
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": GROUP_VERSION,
                "resources": resources,
            }
        )

    async def _values(self, request: web.Request) -> web.Response:
        namespace, metric = request.match_info["namespace"], request.match_info["metric"]
        if metric not in METRICS:
            return status(
                404,
                "NotFound",
                f'externalmetric "{metric}" not found',
                {"name": metric, "group": GROUP, "kind": "externalmetric"},
            )
        try:
            sel = selector.parse(request.query.get("labelSelector"))
        except selector.SelectorError as exc:
            return status(400, "BadRequest", f"unable to parse labelSelector: {exc}")
        items = []
        for s in self.aggregator.series():
            if s.metric != metric or s.namespace != namespace or not sel.matches(s.labels):
                continue
            item = {
                "metricName": s.metric,
                "metricLabels": s.labels,
                "timestamp": rfc3339(s.ts),
                "value": quantity(s.value),
            }
            if s.metric in RATES:  # ExternalMetricValue.window: the span a rate was computed over
                item["window"] = round(self.aggregator.window)
            items.append(item)
        items.sort(key=lambda i: (i["metricLabels"]["pool"], i["metricLabels"]["target_model"]))
        return web.json_response(
            {"kind": "ExternalMetricValueList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}
        )
