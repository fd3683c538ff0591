"""Client-facing model names for the targets the pods serve.

The pickers' assignments say which client-facing name maps to which target, but only once
a request has been made: after a restart with no recent traffic, an HPA selecting
``model_name=chat`` would find nothing and could not scale an idle model down. Reading the
configuration itself (from files, or watched in Kubernetes) names every target from the
start. Declared names win over the names learned from events. Two kinds declare names:

- InferenceModelRewrite (``inference.networking.x-k8s.io`` and ``llm-d.ai``, v1alpha2): each
  Exact match of a rule names every target of that rule (generic rules name nothing);
- InferenceModel (v1alpha2, deprecated): ``modelName`` names its ``targetModels`` (none: itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes_asyncio import client

from autoscaler.aggregate import ModelKey
from shared import crds
from shared.kube import (
    INFERENCE_MODEL_REWRITE_LLMD,
    INFERENCE_MODEL_REWRITE_V1ALPHA2,
    INFERENCE_MODEL_V1ALPHA2,
    ListWatcher,
    custom,
)

log = logging.getLogger(__name__)

# What the autoscaler reads; InferenceObjectives carry no names, so they are not watched.
NAME_COLLECTIONS = (INFERENCE_MODEL_V1ALPHA2, INFERENCE_MODEL_REWRITE_V1ALPHA2, INFERENCE_MODEL_REWRITE_LLMD)


def names_of(resources: Iterable[Any]) -> dict[ModelKey, str]:
    """target -> client-facing name.

    When several names share a target, the alphabetically first is kept (deterministic
    across restarts and replicas).
    """
    pairs: list[tuple[str, str, str, str]] = []  # (client name, namespace, pool, target)
    for res in resources:
        if isinstance(res, crds.InferenceModel):
            targets = [t.name for t in res.target_models] or [res.model_name]
            pairs.extend((res.model_name, res.namespace, res.pool_ref, t) for t in targets)
        elif isinstance(res, crds.InferenceModelRewrite):
            for rule in res.rules:
                for name in rule.matches:
                    targets = [t.model for t in rule.targets] or [name]
                    pairs.extend((name, res.namespace, res.pool_ref, t) for t in targets)
    out: dict[ModelKey, str] = {}
    for name, namespace, pool, target in sorted(pairs):
        out.setdefault(ModelKey(namespace, pool, target), name)
    return out


def names_from_files(paths: list[str]) -> dict[ModelKey, str]:
    return names_of(crds.load_files(paths))


class ModelWatcher:
    """Watches InferenceModels and InferenceModelRewrites (cluster-wide or in some namespaces)."""

    def __init__(
        self, api: client.ApiClient, namespaces: list[str], on_change: Callable[[dict[ModelKey, str]], None]
    ) -> None:
        self.on_change = on_change
        self.watchers = [
            ListWatcher(api, custom(api, *coll, namespace=ns or None), self._changed)
            for ns in (namespaces or [""])
            for coll in NAME_COLLECTIONS
        ]

    def is_synced(self) -> bool:
        """Every collection listed, or failing to (its CRD is not installed) after two tries."""
        settled = all(w.synced.is_set() or w.relists >= 2 for w in self.watchers)
        return settled and any(w.synced.is_set() for w in self.watchers)

    def _changed(self, kind: str, obj: dict[str, Any]) -> None:
        resources = []
        for watcher in self.watchers:
            for item in watcher.objects.values():
                try:
                    parsed = crds.from_object(item)
                except crds.CRDValidationError as exc:
                    log.warning("invalid %s ignored", exc.kind, extra={"error": str(exc)})
                    continue
                if parsed is not None:
                    resources.append(parsed)
        self.on_change(names_of(resources))
