"""Fuzz the CRD loader with the shipped examples, mutated, and with random YAML.

Every InferencePool / InferenceModel / InferenceObjective / InferenceModelRewrite document
the project ships is parsed, then its tree is mutated (a field replaced by a value of
another type, deleted, a list emptied, a string made huge or odd) or its text is cut and
spliced. :func:`shared.crds.load_yaml` either returns resources or raises ``ValueError``
(a :class:`~shared.crdcheck.CRDValidationError` for a bad field, naming it, or "invalid
YAML"); nothing else escapes, so a bad file is reported, never a crash.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from shared import crds
from shared.crdcheck import CRDValidationError
from tests.fuzz.budget import budget

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    doc
    for f in sorted((ROOT / "deploy" / "examples").glob("*.yaml"))
    for doc in yaml.safe_load_all(f.read_text())
    if isinstance(doc, dict) and str(doc.get("kind", "")).startswith("Inference")
]
assert {d["kind"] for d in DOCS} >= {
    "InferencePool",
    "InferenceModel",
    "InferenceObjective",
    "InferenceModelRewrite",
}

odd = st.one_of(
    st.sampled_from(
        [None, True, 0, -1, 2**70, 1.5, math.nan, math.inf, "", "x" * 300, "a b", "é", [], {}, [None]]
    ),
    st.text(max_size=8),
    st.integers(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_docs(draw) -> object:
    doc = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(DOCS))))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["replace", "delete", "replace"]))
        if op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(odd)
    return doc


def _dump(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def spliced_text(draw) -> str:
    text = _dump(draw(st.sampled_from(DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 20))
        text = (
            text[:at]
            + draw(
                st.sampled_from(["", ":", "- ", "{", "[", "\t", "&a ", "*a", "!!python/none ", "\n  ", "'"])
            )
            + text[at + cut :]
        )
    return text


texts = st.one_of(
    mutated_docs().map(_dump),
    st.lists(mutated_docs(), min_size=1, max_size=3).map(lambda ds: "---\n".join(map(_dump, ds))),
    mutated_docs().map(lambda d: _dump({"kind": "List", "apiVersion": "v1", "items": [d, d]})),
    spliced_text(),
    st.text(max_size=60),
)


@budget(150)
@given(text=texts)
def test_any_crd_yaml_loads_or_gives_a_clear_error(text):
    try:
        resources = crds.load_yaml(text, source="fuzz.yaml")
    except CRDValidationError as exc:
        assert exc.errors and str(exc), "an error must name what is wrong"
        return
    except ValueError as exc:
        assert "fuzz.yaml" in str(exc)
        return
    for r in resources:
        assert r.name and r.namespace


def test_alias_bombs_are_refused_or_cheap():
    """YAML aliases share nodes: a 'billion laughs' document must not make the loader walk 10^9 nodes."""
    lines = ["  a0: &a0 [{name: x}, {name: x}, {name: x}, {name: x}, {name: x}, {name: x}]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    doc = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nanchors:\n"
        + "\n".join(lines)
        + "\nmetadata: {name: m}\nspec:\n  modelName: m\n  poolRef: {name: p}\n  targetModels: *a8\n"
    )
    try:
        crds.load_yaml(doc)
    except ValueError:
        pass
