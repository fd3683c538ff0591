"""Client-facing model names (InferenceModel ``modelName``) for the targets the pods serve.

The pickers' assignments say which ``modelName`` maps to which target, but only once a
request has been made: after a restart with no recent traffic, an HPA selecting
``model_name=chat`` would find nothing and could not scale an idle model down. Reading the
InferenceModels themselves (from files, or watched in Kubernetes) names every target from
the start. Declared names win over the names learned from events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes_asyncio import client

from autoscaler.aggregate import ModelKey
from shared import crds
from shared.kube import INFERENCE_MODEL_V1ALPHA2, ListWatcher, custom

log = logging.getLogger(__name__)


def names_of(models: Iterable[crds.InferenceModel]) -> dict[ModelKey, str]:
    """target -> modelName; a model without targetModels serves its own name.

    When several InferenceModels share a target, the alphabetically first modelName is kept
    (deterministic across restarts and replicas).
    """
    out: dict[ModelKey, str] = {}
    for m in sorted(models, key=lambda m: m.model_name):
        targets = [t.name for t in m.target_models] or [m.model_name]
        for target in targets:
            out.setdefault(ModelKey(m.namespace, m.pool_ref, target), m.model_name)
    return out


def names_from_files(paths: list[str]) -> dict[ModelKey, str]:
    return names_of(crds.models_of(crds.load_files(paths)))


class ModelWatcher:
    """Watches InferenceModels (cluster-wide or in some namespaces) and reports the name map."""

    def __init__(
        self, api: client.ApiClient, namespaces: list[str], on_change: Callable[[dict[ModelKey, str]], None]
    ) -> None:
        self.on_change = on_change
        self.watchers = [
            ListWatcher(api, custom(api, *INFERENCE_MODEL_V1ALPHA2, namespace=ns or None), self._changed)
            for ns in (namespaces or [""])
        ]

    def _changed(self, kind: str, obj: dict[str, Any]) -> None:
        models = []
        for watcher in self.watchers:
            for item in watcher.objects.values():
                try:
                    parsed = crds.from_object(item)
                except crds.CRDValidationError as exc:
                    log.warning("invalid InferenceModel ignored", extra={"error": str(exc)})
                    continue
                if isinstance(parsed, crds.InferenceModel):
                    models.append(parsed)
        self.on_change(names_of(models))
