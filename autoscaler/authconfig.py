"""Read the front-proxy settings from the cluster, as every aggregated API server does.

kube-apiserver publishes its ``--requestheader-*`` settings in the ConfigMap
``kube-system/extension-apiserver-authentication`` (readable through the built-in Role
``extension-apiserver-authentication-reader``). Reading it at start-up means the
Deployment needs no mounted CA and follows the cluster's own configuration; explicit
``--requestheader-*`` flags still win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kubernetes_asyncio import client

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"


@dataclass(frozen=True, slots=True)
class RequestHeaderSettings:
    client_ca_pem: str
    allowed_names: list[str]
    username_headers: list[str]


def _json_list(text: str | None) -> list[str]:
    if not text:
        return []
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a JSON list of strings, got {text!r}")
    return value


async def requestheader_from_cluster(api: client.ApiClient) -> RequestHeaderSettings | None:
    """The cluster's request-header settings, or ``None`` when it has no front proxy configured."""
    cm = await client.CoreV1Api(api).read_namespaced_config_map(CONFIGMAP_NAME, CONFIGMAP_NAMESPACE)
    data = cm.data or {}
    ca = data.get("requestheader-client-ca-file")
    if not ca:
        return None
    return RequestHeaderSettings(
        client_ca_pem=ca,
        allowed_names=_json_list(data.get("requestheader-allowed-names")),
        username_headers=_json_list(data.get("requestheader-username-headers")) or ["X-Remote-User"],
    )
