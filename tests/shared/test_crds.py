import pytest

from shared import crds

POOL_V1 = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool, namespace: ml}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}, {number: 8001}]
  endpointPickerRef: {name: epp, port: {number: 9002}, failureMode: FailOpen}
"""
POOL_V1ALPHA2 = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: old-pool}
spec: {selector: {app: vllm}, targetPortNumber: 8000, extensionRef: {name: epp}}
"""
MODEL = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: chat}
spec:
  modelName: chat
  criticality: Critical
  poolRef: {name: pool}
  targetModels: [{name: chat-v1, weight: 90}, {name: chat-v2, weight: 10}]
"""


def test_load_multi_document_yaml_with_other_kinds():
    text = "\n---\n".join(
        [POOL_V1, POOL_V1ALPHA2, MODEL, "apiVersion: v1\nkind: Service\nmetadata: {name: s}"]
    )
    pool, old, model = crds.load_yaml(text)
    assert pool.key == ("ml", "pool") and pool.target_ports == (8000, 8001)
    assert pool.picker == crds.EndpointPickerRef("epp", 9002, "FailOpen")
    assert pool.selects({"app": "vllm", "x": "y"}) and not pool.selects({"app": "other"})
    assert old.namespace == "default" and old.target_ports == (8000,) and old.picker.port == 9002
    assert model.criticality == "Critical" and [t.weight for t in model.target_models] == [90, 10]


def test_from_kubernetes_list_object():
    import yaml

    items = [yaml.safe_load(MODEL)]
    assert crds.load_yaml(yaml.safe_dump({"kind": "List", "items": items}))[0].model_name == "chat"


def _model(spec_patch: dict) -> dict:
    import yaml

    obj = yaml.safe_load(MODEL)
    obj["spec"].update(spec_patch)
    return obj


def _pool(spec_patch: dict) -> dict:
    import yaml

    obj = yaml.safe_load(POOL_V1)
    obj["spec"].update(spec_patch)
    return obj


@pytest.mark.parametrize(
    ("obj", "path", "words"),
    [
        (
            _model({"targetModels": [{"name": "a", "weight": 1}, {"name": "b"}]}),
            "spec.targetModels",
            "all targets",
        ),
        (_model({"targetModels": [{"name": "a", "weight": 0}]}), "spec.targetModels[0].weight", "between 1"),
        (
            _model({"targetModels": [{"name": "a", "weight": 1_000_001}]}),
            "spec.targetModels[0].weight",
            "1000000",
        ),
        (_model({"targetModels": [{"name": f"m{i}"} for i in range(11)]}), "spec.targetModels", "at most 10"),
        (_model({"modelName": "x" * 257}), "spec.modelName", "at most 256"),
        (_model({"modelName": ""}), "spec.modelName", "required"),
        (_model({"criticality": "Urgent"}), "spec.criticality", "one of"),
        (_model({"poolRef": None}), "spec.poolRef", "required"),
        (_model({"targetModels": [{"weight": 3}]}), "spec.targetModels[0].name", "required"),
        (_pool({"targetPorts": [{"number": 0}]}), "spec.targetPorts[0].number", "between 1 and 65535"),
        (_pool({"targetPorts": [{"number": 70000}]}), "spec.targetPorts[0].number", "between 1 and 65535"),
        (_pool({"targetPorts": []}), "spec.targetPorts", "required"),
        (_pool({"targetPorts": [{"number": 1}, {"number": 1}]}), "spec.targetPorts[1].number", "duplicate"),
        (_pool({"selector": None}), "spec.selector", "required"),
        (_pool({"selector": {"matchLabels": {}}}), "spec.selector.matchLabels", "at least one"),
        (
            _pool({"endpointPickerRef": {"name": "e", "failureMode": "Maybe"}}),
            "spec.endpointPickerRef.failureMode",
            "one of",
        ),
    ],
)
def test_validation_names_the_field(obj, path, words):
    with pytest.raises(crds.CRDValidationError) as err:
        crds.from_object(obj)
    assert any(e.path == path and words in e.message for e in err.value.errors), str(err.value)
    assert path in str(err.value)


def test_v1alpha2_port_and_selector_rules():
    import yaml

    obj = yaml.safe_load(POOL_V1ALPHA2)
    obj["spec"]["targetPortNumber"] = "8000"
    del obj["spec"]["selector"]
    with pytest.raises(crds.CRDValidationError) as err:
        crds.from_object(obj)
    assert {e.path for e in err.value.errors} == {"spec.targetPortNumber", "spec.selector"}


def test_unsupported_version_and_bad_yaml():
    with pytest.raises(crds.CRDValidationError, match="apiVersion"):
        crds.from_object({"apiVersion": "inference.networking.x-k8s.io/v9", "kind": "InferencePool"})
    with pytest.raises(ValueError, match="invalid YAML"):
        crds.load_yaml("a: [", source="f.yaml")


def test_load_files_from_directory(tmp_path):
    (tmp_path / "a.yaml").write_text(POOL_V1)
    (tmp_path / "b.yml").write_text(MODEL)
    assert [type(r).__name__ for r in crds.load_files([tmp_path])] == ["InferencePool", "InferenceModel"]
