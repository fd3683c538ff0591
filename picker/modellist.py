"""The gateway's own ``GET /v1/models``: OpenAI's model list, built from the pool view.

Kept apart from the director because it is a pure function of the configuration's
client-facing names and the endpoints' snapshots, and every replica must answer the same
bytes for the same view.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["model_list"]


def model_list(client: Iterable[str], endpoints: Iterable[Any], created: int) -> bytes:
    """OpenAI's model list, in a stable order.

    First the client-facing names of the configuration (InferenceModels, rewrite rules),
    then the base models and the adapters that some ready pod serves, each group sorted and
    every name once. ``endpoints`` are the view's entries (``.snapshot``); ``created`` is
    the same on every replica.
    """
    bases: set[str] = set()
    adapters: dict[str, str] = {}  # adapter -> a base model serving it
    for ev in endpoints:
        s = ev.snapshot
        if not (s.ready and s.healthy):
            continue
        if s.model:
            bases.add(s.model)
        for name in (*s.served_models, *s.lora.running):
            if name and name != s.model:
                adapters.setdefault(name, s.model)
    cards: dict[str, dict] = {}
    base = {"object": "model", "created": created, "owned_by": "infergate"}
    for name in sorted(client):
        cards.setdefault(name, {"id": name, **base})
    for name in sorted(bases):
        cards.setdefault(name, {"id": name, **base, "root": name})
    for name in sorted(adapters):
        parent = adapters[name]
        cards.setdefault(name, {"id": name, **base, "root": name, "parent": parent or None})
    return json.dumps({"object": "list", "data": list(cards.values())}, separators=(",", ":")).encode()
