"""Render the subset of kustomize that deploy/ uses, so manifests can be tested offline.

No kustomize binary is installable here, so the tests build the trees themselves. The
subset: ``resources`` (files and directories with a kustomization.yaml), ``namespace``
(set on namespaced objects that have none), ``images`` (``newName``/``newTag``), and
``patches`` with an inline JSON 6902 ``patch`` and a ``target`` of kind and name.
Anything else in a kustomization.yaml is an error, so the subset cannot silently drift
from what deploy/ actually uses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "GatewayClass",
    "APIService",
    "PriorityClass",
    "StorageClass",
}


def render(directory: Path) -> list[dict[str, Any]]:
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{kfile}: fields outside the tested kustomize subset: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
        else:
            raise FileNotFoundError(f"{kfile}: resource {entry} does not exist")
    objects = [copy.deepcopy(o) for o in objects]
    for patch in spec.get("patches") or []:
        target = patch["target"]
        matched = [
            o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        if not matched:
            raise ValueError(f"{kfile}: patch target {target} matches nothing")
        ops = jsonpatch.JsonPatch(yaml.safe_load(patch["patch"]))
        for obj in matched:
            objects[objects.index(obj)] = ops.apply(obj)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images") or []:
        for obj in objects:
            for container in _containers(obj):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', _tag)}"
    return objects


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    return [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return _containers(obj)
