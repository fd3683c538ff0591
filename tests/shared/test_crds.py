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


# -- InferencePool v1 in full --------------------------------------------------------------


def test_pool_v1_ports_protocol_picker_defaults_and_endpoints():
    obj = _pool(
        {
            "targetPorts": [{"number": 8000 + i} for i in range(8)],
            "appProtocol": "kubernetes.io/h2c",
            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
        }
    )
    obj["metadata"]["labels"] = {"tier": "gold"}
    pool = crds.from_object(obj)
    assert pool.target_ports == tuple(range(8000, 8008))
    assert pool.app_protocol == "kubernetes.io/h2c" and pool.labels == {"tier": "gold"}
    assert pool.picker == crds.EndpointPickerRef("epp", 9002, "FailClose", "Service", "")
    assert pool.endpoints("10.0.0.1")[:2] == ["10.0.0.1:8000", "10.0.0.1:8001"]
    assert pool.endpoints("fd00::1")[0] == "[fd00::1]:8000"
    bare = _pool({})
    del bare["spec"]["endpointPickerRef"]  # optional since GIE v1.5
    plain = crds.from_object(bare)
    assert plain.picker is None and plain.app_protocol == "http"


@pytest.mark.parametrize(
    ("patch", "path", "words"),
    [
        ({"targetPorts": [{"number": 8000 + i} for i in range(9)]}, "spec.targetPorts", "at most 8"),
        ({"appProtocol": "grpc"}, "spec.appProtocol", "one of http, kubernetes.io/h2c"),
        ({"endpointPickerRef": {"name": "epp"}}, "spec.endpointPickerRef.port", "Service"),
        ({"endpointPickerRef": {"port": {"number": 9002}}}, "spec.endpointPickerRef.name", "required"),
        (
            {"endpointPickerRef": {"name": "e", "port": {"number": 1}, "kind": "bad/kind"}},
            "spec.endpointPickerRef.kind",
            "invalid",
        ),
        (
            {"endpointPickerRef": {"name": "e", "port": {"number": 9002}, "failureMode": "failopen"}},
            "spec.endpointPickerRef.failureMode",
            "FailOpen, FailClose",
        ),
        ({"selector": {"matchLabels": {f"k{i}": "v" for i in range(65)}}}, "spec.selector.matchLabels", "64"),
    ],
)
def test_pool_v1_validation(patch, path, words):
    with pytest.raises(crds.CRDValidationError) as err:
        crds.from_object(_pool(patch))
    assert any(e.path == path and words in e.message for e in err.value.errors), str(err.value)


def test_pool_picker_ref_without_port_is_fine_for_a_non_service_kind():
    pool = crds.from_object(
        _pool({"endpointPickerRef": {"name": "e", "kind": "Picker", "group": "example.com"}})
    )
    assert (pool.picker.kind, pool.picker.group) == ("Picker", "example.com")


# -- InferenceObjective and InferenceModelRewrite, both API groups ------------------------

GROUPS = ["inference.networking.x-k8s.io/v1alpha2", "llm-d.ai/v1alpha2"]

OBJECTIVE = """
apiVersion: {api}
kind: InferenceObjective
metadata: {{name: premium, namespace: ml, creationTimestamp: "2026-03-01T10:00:00Z"}}
spec:
  priority: 10
  poolRef: {{group: inference.networking.k8s.io, name: pool}}
"""
REWRITE = """
apiVersion: {api}
kind: InferenceModelRewrite
metadata: {{name: chat-canary, namespace: ml}}
spec:
  poolRef: {{name: pool}}
  rules:
    - matches:
        - model: {{type: Exact, value: chat}}
        - model: {{value: chat-latest}}
      targets:
        - {{modelRewrite: chat-v1, weight: 90}}
        - {{modelRewrite: chat-v2, weight: 10}}
    - targets: [{{modelRewrite: base}}]
"""


@pytest.mark.parametrize("api", GROUPS)
def test_objective_and_rewrite_parse_in_both_groups(api):
    objective, rewrite = crds.load_yaml(OBJECTIVE.format(api=api) + "---" + REWRITE.format(api=api))
    assert isinstance(objective, crds.InferenceObjective)
    assert (objective.key, objective.priority, objective.pool_refs) == (("ml", "premium"), 10, ("pool",))
    assert objective.created == 1772359200.0 and objective.api_version == api
    assert objective.applies_to("pool") and not objective.applies_to("other")
    assert isinstance(rewrite, crds.InferenceModelRewrite)
    assert rewrite.pool_ref == "pool" and rewrite.created is None
    exact, generic = rewrite.rules
    assert exact.matches == ("chat", "chat-latest") and not exact.generic
    assert exact.targets == (crds.RewriteTarget("chat-v1", 90), crds.RewriteTarget("chat-v2", 10))
    assert generic.generic and generic.targets == (crds.RewriteTarget("base"),)


def test_objective_priority_unset_means_zero_and_yaml_timestamps_parse():
    import yaml

    obj = yaml.safe_load(OBJECTIVE.format(api=GROUPS[0]))
    del obj["spec"]["priority"]
    obj["metadata"]["creationTimestamp"] = yaml.safe_load("t: 2026-03-01T10:00:00Z")["t"]  # a datetime
    parsed = crds.from_object(obj)
    assert parsed.priority is None and parsed.effective_priority == 0
    assert parsed.created == 1772359200.0


def test_llmd_objective_pool_refs_and_selector():
    import yaml

    obj = yaml.safe_load(OBJECTIVE.format(api=GROUPS[1]))
    del obj["spec"]["poolRef"]
    obj["spec"]["poolRefs"] = [{"name": "a"}, {"name": "b"}]
    assert crds.from_object(obj).pool_refs == ("a", "b")
    del obj["spec"]["poolRefs"]
    obj["spec"]["poolSelector"] = {"matchLabels": {"tier": "gold"}}
    sel = crds.from_object(obj)
    assert sel.pool_refs == () and sel.applies_to("p", {"tier": "gold"}) and not sel.applies_to("p", {})


def _routing(text: str, api: str, path: list, value) -> dict:
    import yaml

    obj = yaml.safe_load(text.format(api=api))
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize("api", GROUPS)
@pytest.mark.parametrize(
    ("doc", "path", "value", "error_path", "words"),
    [
        (OBJECTIVE, ["spec", "priority"], "high", "spec.priority", "integer"),
        (OBJECTIVE, ["spec", "priority"], 2**31, "spec.priority", "between"),
        (OBJECTIVE, ["spec", "poolRef", "kind"], "Service", "spec.poolRef.kind", "InferencePool"),
        (OBJECTIVE, ["spec", "poolRef", "name"], "", "spec.poolRef.name", "required"),
        (OBJECTIVE, ["spec", "poolRef"], _DELETE, "spec.poolRef", "required"),
        (OBJECTIVE, ["metadata", "creationTimestamp"], "yesterday", "metadata.creationTimestamp", "RFC 3339"),
        (REWRITE, ["spec", "rules"], _DELETE, "spec.rules", "required"),
        (REWRITE, ["spec", "poolRef"], _DELETE, "spec.poolRef", "required"),
        (
            REWRITE,
            ["spec", "rules", 0, "matches", 0, "model", "type"],
            "Prefix",
            "spec.rules[0].matches[0].model.type",
            "Exact",
        ),
        (
            REWRITE,
            ["spec", "rules", 0, "matches", 1, "model", "value"],
            "",
            "spec.rules[0].matches[1].model.value",
            "required",
        ),
        (
            REWRITE,
            ["spec", "rules", 0, "matches", 0, "model"],
            _DELETE,
            "spec.rules[0].matches[0].model",
            "required",
        ),
        (
            REWRITE,
            ["spec", "rules", 0, "targets", 1, "weight"],
            0,
            "spec.rules[0].targets[1].weight",
            "between 1",
        ),
        (
            REWRITE,
            ["spec", "rules", 0, "targets", 1, "weight"],
            1_000_001,
            "spec.rules[0].targets[1].weight",
            "1000000",
        ),
        (
            REWRITE,
            ["spec", "rules", 0, "targets", 1, "weight"],
            _DELETE,
            "spec.rules[0].targets",
            "all targets",
        ),
        (
            REWRITE,
            ["spec", "rules", 0, "targets", 0, "modelRewrite"],
            _DELETE,
            "spec.rules[0].targets[0].modelRewrite",
            "required",
        ),
        (REWRITE, ["spec", "rules", 1, "targets"], [], "spec.rules[1].targets", "at least 1"),
        (REWRITE, ["spec", "rules", 1], "everything", "spec.rules[1]", "object"),
    ],
)
def test_routing_validation_names_the_field(api, doc, path, value, error_path, words):
    with pytest.raises(crds.CRDValidationError) as err:
        crds.from_object(_routing(doc, api, path, value))
    assert any(e.path == error_path and words in e.message for e in err.value.errors), str(err.value)


def test_unsupported_routing_version_and_file_name_in_errors(tmp_path):
    with pytest.raises(crds.CRDValidationError, match=r"supported: inference\.networking\.x-k8s\.io/"):
        crds.from_object(
            {"apiVersion": "llm-d.ai/v1", "kind": "InferenceObjective", "metadata": {"name": "x"}}
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(OBJECTIVE.format(api=GROUPS[0]).replace("priority: 10", "priority: ten"))
    with pytest.raises(crds.CRDValidationError, match=r"bad\.yaml: invalid InferenceObjective 'premium'"):
        crds.load_files([tmp_path])


def test_inference_model_keeps_its_creation_timestamp():
    obj = _model({})
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    assert crds.from_object(obj).created == 1767225600.0
