"""deploy/ validates offline: Kubernetes schemas, our CRD schemas, cross-references, RBAC and flags."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import crds
from tests.support.kustomize import containers, render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TREES = ["base", "overlays/dev", "overlays/production", "overlays/envoy-gateway-legacy"]
K8S_VERSION = kubernetes_validate.latest_version()
OWN_CRD_GROUPS = {"inference.networking.k8s.io", "inference.networking.x-k8s.io", "llm-d.ai"}
GATEWAY_GROUPS = {"gateway.networking.k8s.io", "gateway.envoyproxy.io"}
SERVICES = {
    "infergate-collector": "collector",
    "infergate-picker": "picker",
    "infergate-autoscaler": "autoscaler",
    "infergate-sim": "sim",
}


def group_of(obj: dict[str, Any]) -> str:
    api_version = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


@pytest.fixture(scope="module", params=TREES)
def tree(request) -> list[dict[str, Any]]:
    return render(DEPLOY / request.param)


def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> JSON schema, from our own CRD files."""
    out = {}
    for path in sorted((DEPLOY / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = _strip_k8s_extensions(version["schema"]["openAPIV3Schema"])
                out[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return out


def _strip_k8s_extensions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_k8s_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_strip_k8s_extensions(v) for v in node]
    return node


def test_builtin_kinds_validate_against_kubernetes_schemas(tree):
    checked = 0
    for obj in tree:
        if group_of(obj) in OWN_CRD_GROUPS | GATEWAY_GROUPS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 8


def test_crds_are_structural_and_have_status_and_printer_columns():
    schemas = crd_schemas()
    assert set(schemas) == {
        ("inference.networking.k8s.io", "v1", "InferencePool"),
        ("inference.networking.x-k8s.io", "v1alpha2", "InferencePool"),
        ("inference.networking.x-k8s.io", "v1alpha2", "InferenceModel"),
        ("inference.networking.x-k8s.io", "v1alpha2", "InferenceObjective"),
        ("inference.networking.x-k8s.io", "v1alpha2", "InferenceModelRewrite"),
        ("llm-d.ai", "v1alpha2", "InferenceObjective"),
        ("llm-d.ai", "v1alpha2", "InferenceModelRewrite"),
    }
    listed = yaml.safe_load((DEPLOY / "crds" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (DEPLOY / "crds").glob("*_*.yaml"))
    for path in (DEPLOY / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "CustomResourceDefinition":
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                for version in doc["spec"]["versions"]:
                    assert version["subresources"] == {"status": {}}
                    assert version["additionalPrinterColumns"]
                    _assert_structural(version["schema"]["openAPIV3Schema"], path.name)


def _assert_structural(node: dict[str, Any], where: str) -> None:
    """Every schema node has a type (or preserves unknown fields), as apiextensions requires."""
    assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), where
    for child in (node.get("properties") or {}).values():
        _assert_structural(child, where)
    if isinstance(node.get("items"), dict):
        _assert_structural(node["items"], where)
    if isinstance(node.get("additionalProperties"), dict):
        _assert_structural(node["additionalProperties"], where)


def test_own_kinds_validate_against_our_crds_and_our_parser(tree):
    schemas = crd_schemas()
    seen = 0
    for obj in tree:
        group, version = group_of(obj), obj["apiVersion"].split("/")[-1]
        if group not in OWN_CRD_GROUPS or obj["kind"] == "CustomResourceDefinition":
            continue
        jsonschema.validate(obj, schemas[(group, version, obj["kind"])])
        assert crds.from_object(obj) is not None
        seen += 1
    assert seen >= 10
    kinds = {(group_of(o), o["kind"]) for o in tree if group_of(o) in OWN_CRD_GROUPS}
    for kind in ("InferenceObjective", "InferenceModelRewrite"):  # examples of every kind, both groups
        assert {("inference.networking.x-k8s.io", kind), ("llm-d.ai", kind)} <= kinds


@pytest.mark.parametrize(
    ("kind", "doc", "bad_path", "bad"),
    [
        ("InferenceModel", "examples/inferencemodels.yaml", ("spec", "targetModels", 0, "weight"), 0),
        ("InferencePool", "examples/inferencepool.yaml", ("spec", "targetPorts", 0, "number"), 0),
        ("InferencePool", "examples/inferencepool.yaml", ("spec", "appProtocol"), "grpc"),
        (
            "InferencePool",
            "examples/inferencepool.yaml",
            ("spec", "endpointPickerRef", "failureMode"),
            "Open",
        ),
        (
            "InferencePool",
            "examples/inferencepool.yaml",
            ("spec", "targetPorts"),
            [{"number": 8000 + i} for i in range(9)],
        ),
        ("InferenceObjective", "examples/inferenceobjectives.yaml", ("spec", "priority"), "high"),
        ("InferenceObjective", "examples/inferenceobjectives.yaml", ("spec", "poolRef", "name"), ""),
        (
            "InferenceModelRewrite",
            "examples/inferencemodelrewrites.yaml",
            ("spec", "rules", 0, "targets", 0, "weight"),
            1_000_001,
        ),
        (
            "InferenceModelRewrite",
            "examples/inferencemodelrewrites.yaml",
            ("spec", "rules", 0, "matches", 0, "model", "type"),
            "Prefix",
        ),
        (
            "InferenceModelRewrite",
            "examples/inferencemodelrewrites.yaml",
            ("spec", "rules", 0, "targets"),
            [],
        ),
        ("InferenceModelRewrite", "examples/inferencemodelrewrites.yaml", ("spec", "rules"), None),
    ],
)
def test_crd_schema_rejects_what_upstream_rejects(kind, doc, bad_path, bad):
    obj = next(d for d in yaml.safe_load_all((DEPLOY / doc).read_text()) if d["kind"] == kind)
    target = obj
    for key in bad_path[:-1]:
        target = target[key]
    if bad is None:
        del target[bad_path[-1]]
    else:
        target[bad_path[-1]] = bad
    group, version = group_of(obj), obj["apiVersion"].split("/")[-1]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, crd_schemas()[(group, version, kind)])
    with pytest.raises(crds.CRDValidationError):
        crds.from_object(obj)


def test_gateway_resources_reference_each_other(tree):
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in tree:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    gateway = by_kind["Gateway"]["inference-gateway"]
    assert gateway["spec"]["gatewayClassName"] in by_kind["GatewayClass"]
    for route in by_kind["HTTPRoute"].values():
        for parent in route["spec"]["parentRefs"]:
            assert parent["name"] in by_kind["Gateway"]
        for rule in route["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert ref["kind"] == "InferencePool" and ref["name"] in by_kind["InferencePool"]
    pool = by_kind["InferencePool"]["vllm-llama2-7b"]
    picker_service = by_kind["Service"][pool["spec"]["endpointPickerRef"]["name"]]
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] in {
        p["port"] for p in picker_service["spec"]["ports"]
    }
    # A second ext_proc only where the gateway cannot wire the pool's picker in itself.
    if "EnvoyExtensionPolicy" not in by_kind:
        return
    assert any(o["kind"] == "EnvoyExtensionPolicy" for o in render(DEPLOY / "overlays/envoy-gateway-legacy"))
    policy = by_kind["EnvoyExtensionPolicy"]["infergate-picker"]
    for target in policy["spec"]["targetRefs"]:
        assert target["name"] in by_kind[target["kind"]]
    ext = policy["spec"]["extProc"][0]
    assert ext["processingMode"]["request"]["body"] == "FullDuplexStreamed"
    service = by_kind["Service"][ext["backendRefs"][0]["name"]]
    assert ext["backendRefs"][0]["port"] in {p["port"] for p in service["spec"]["ports"]}


def test_only_the_legacy_overlay_adds_a_second_ext_proc():
    for tree in ("base", "overlays/dev", "overlays/production"):
        assert not [o for o in render(DEPLOY / tree) if o["kind"] == "EnvoyExtensionPolicy"], tree
    legacy = [
        o for o in render(DEPLOY / "overlays/envoy-gateway-legacy") if o["kind"] == "EnvoyExtensionPolicy"
    ]
    assert len(legacy) == 1
    assert "harmless" not in (DEPLOY / "overlays/envoy-gateway-legacy/envoyextensionpolicy.yaml").read_text()


ADMIN_PATHS = ["/v1/unload_lora_adapter", "/v1/load_lora_adapter", "/metrics", "/health", "/v1/"]
INFERENCE_PATHS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]


def _route_matches(route: dict[str, Any], method: str, path: str) -> bool:
    """Gateway API HTTPRoute path matching (Exact, PathPrefix on segment boundaries) and method."""
    for rule in route["spec"]["rules"]:
        for m in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
            p = m.get("path") or {"type": "PathPrefix", "value": "/"}
            value = p["value"]
            if p["type"] == "Exact":
                hit = path == value
            elif p["type"] == "PathPrefix":
                prefix = value.rstrip("/")
                hit = path == prefix or path.startswith(prefix + "/") or prefix == ""
            else:
                raise AssertionError(f"unexpected path match type {p['type']}")
            if hit and m.get("method", method) == method:
                return True
    return False


@pytest.mark.parametrize("tree_name", TREES)
def test_http_route_exposes_only_the_inference_api(tree_name):
    routes = [o for o in render(DEPLOY / tree_name) if o["kind"] == "HTTPRoute"]
    assert routes
    for method, path in INFERENCE_PATHS:
        assert any(_route_matches(r, method, path) for r in routes), path
    for path in ADMIN_PATHS:
        for method in ("GET", "POST"):
            assert not any(_route_matches(r, method, path) for r in routes), (method, path)


def test_workloads_are_non_root_with_read_only_root_fs(tree):
    for obj in tree:
        if obj["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for c in containers(obj):
            if c["name"] == "vllm":  # vLLM writes compiled kernels and caches to its root FS
                continue
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]


def test_collector_daemonset_targets_gpu_nodes_with_node_name():
    tree = render(DEPLOY / "base")
    ds = next(o for o in tree if o["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] and pod["affinity"]["nodeAffinity"]
    env = {e["name"]: e for e in containers(ds)[0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert containers(ds)[0]["resources"]["requests"]


def test_picker_is_highly_available():
    tree = render(DEPLOY / "base")
    dep = next(o for o in tree if o["kind"] == "Deployment" and o["metadata"]["name"] == "infergate-picker")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert containers(dep)[0]["readinessProbe"]["grpc"]["port"] == 9003
    pdb = next(o for o in tree if o["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]


# -- RBAC: derived from the code's API calls --------------------------------------------

_KUBE_CALL = re.compile(r"(?<![\w.])(?:kube\.)?(pods|custom)\(([^)]*)\)")  # kube.custom( or custom(
_CONSTANTS = {
    "INFERENCE_POOL_V1": ("inference.networking.k8s.io", "inferencepools"),
    "INFERENCE_POOL_V1ALPHA2": ("inference.networking.x-k8s.io", "inferencepools"),
    "INFERENCE_MODEL_V1ALPHA2": ("inference.networking.x-k8s.io", "inferencemodels"),
    "INFERENCE_OBJECTIVE_V1ALPHA2": ("inference.networking.x-k8s.io", "inferenceobjectives"),
    "INFERENCE_OBJECTIVE_LLMD": ("llm-d.ai", "inferenceobjectives"),
    "INFERENCE_MODEL_REWRITE_V1ALPHA2": ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
    "INFERENCE_MODEL_REWRITE_LLMD": ("llm-d.ai", "inferencemodelrewrites"),
}
# Tuples of constants in shared/kube.py that code iterates over.
_COLLECTION_GROUPS = {
    "MODEL_CONFIG_COLLECTIONS": [
        "INFERENCE_OBJECTIVE_V1ALPHA2",
        "INFERENCE_OBJECTIVE_LLMD",
        "INFERENCE_MODEL_REWRITE_V1ALPHA2",
        "INFERENCE_MODEL_REWRITE_LLMD",
        "INFERENCE_MODEL_V1ALPHA2",
    ]
}


def test_collection_groups_match_shared_kube():
    from shared import kube

    for name, members in _COLLECTION_GROUPS.items():
        assert getattr(kube, name) == tuple(getattr(kube, m) for m in members)
    for name, (group, plural) in _CONSTANTS.items():
        assert getattr(kube, name)[0] == group and getattr(kube, name)[2] == plural


def kube_access_of(package: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the package's code uses through shared.kube's ListWatcher."""
    needed: set[tuple[str, str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        text = path.read_text()
        for fn, args in _KUBE_CALL.findall(text):
            targets = [("", "pods")] if fn == "pods" else [v for k, v in _CONSTANTS.items() if k in args]
            if fn == "custom" and not targets:  # a variable holding one of the constants
                names = {k for k in _CONSTANTS if re.search(rf"\b{k}\b", text)}
                for group, members in _COLLECTION_GROUPS.items():
                    if re.search(rf"\b{group}\b", text):
                        names |= set(members)
                targets = [_CONSTANTS[k] for k in sorted(names)]
            for group, resource in targets:
                needed |= {(group, resource, "list"), (group, resource, "watch")}
    return needed


def granted(tree: list[dict[str, Any]], account: str) -> set[tuple[str, str, str]]:
    roles = {(o["kind"], o["metadata"]["name"]): o for o in tree if o["kind"] in ("Role", "ClusterRole")}
    out: set[tuple[str, str, str]] = set()
    for binding in tree:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            continue
        role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
        if role is None:
            continue  # a built-in role (auth-delegator, extension-apiserver-authentication-reader)
        for rule in role["rules"]:
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    out |= {(g, r, v) for v in rule["verbs"]}
    return out


@pytest.mark.parametrize(
    ("account", "package"),
    [
        ("infergate-collector", "collector"),
        ("infergate-picker", "picker"),
        ("infergate-autoscaler", "autoscaler"),
    ],
)
def test_rbac_grants_exactly_what_the_code_uses(account, package):
    needed = kube_access_of(package)
    assert needed, f"no Kubernetes access found in {package}/; the scan is broken"
    got = granted(render(DEPLOY / "base"), account)
    if package == "autoscaler":  # plus the one ConfigMap read through CoreV1Api (see its rbac.yaml)
        got -= {("", "configmaps", "get")}
    assert got == needed


# -- flags and env names match the services' real --help ---------------------------------


@functools.cache
def service_help(command: str) -> str:
    module = SERVICES[command]
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_manifest_flags_and_env_exist_in_help():
    objects = [o for t in TREES for o in render(DEPLOY / t)]
    objects += [d for d in yaml.safe_load_all((DEPLOY / "examples/sim-model-servers.yaml").read_text()) if d]
    helps: dict[str, str] = {}
    checked = 0
    for obj in objects:
        for c in containers(obj):
            command = (c.get("command") or [None])[0]
            if command not in SERVICES:
                continue
            if command not in helps:
                helps[command] = service_help(command)
                if command == "infergate-sim":
                    helps[command] += service_help_sub("sim", "serve")
            text = helps[command]
            for arg in c.get("args") or []:
                if arg.startswith("--"):
                    flag = arg.split("=", 1)[0]
                    assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", text), (
                        f"{command}: unknown flag {flag}"
                    )
                    checked += 1
            for env in c.get("env") or []:
                if env["name"].startswith("INFERGATE_"):
                    assert env["name"] in text.replace("\n", "").replace(" ", ""), (
                        f"{command}: unknown {env['name']}"
                    )
                    checked += 1
    assert checked >= 10


def service_help_sub(module: str, sub: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", module, sub, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dockerfile_copies_every_package_and_runs_non_root():
    text = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]*)\]", pyproject).group(1)
    for pkg in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {pkg} {pkg}" in text, pkg
    assert re.search(r"^USER 65532", text, re.M)
    assert text.count("FROM ") == 2  # multi-stage: build tools stay out of the runtime image


def listening_ports(help_text: str, args: list[str]) -> set[int]:
    """The ports a service listens on: its ``--*-port`` defaults, overridden by the manifest's args."""
    flat = " ".join(help_text.split())
    ports = {
        flag: int(default)
        for flag, default in re.findall(r"(--[a-z-]*port)\b [A-Z_]+ [^-]*?\(default: (\d+)\)", flat)
    }
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in ports and value.isdigit():
            ports[flag] = int(value)
    return set(ports.values())


def test_container_ports_and_images_match_the_services():
    objects = [o for t in TREES for o in render(DEPLOY / t)]
    helps: dict[str, str] = {}
    checked = 0
    for obj in objects:
        for c in containers(obj):
            command = (c.get("command") or [None])[0]
            if command not in SERVICES or command == "infergate-sim":
                continue
            assert c["image"].split(":")[0] == "infergate", c["image"]  # the one image of the Dockerfile
            if command not in helps:
                helps[command] = service_help(command)
            expected = listening_ports(helps[command], c.get("args") or [])
            declared = {p["containerPort"] for p in c.get("ports") or []}
            assert declared and declared <= expected, (command, declared, expected)
            named = {p["name"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                target = (c.get(probe) or {}).get("httpGet") or (c.get(probe) or {}).get("grpc") or {}
                port = target.get("port")
                assert port is None or port in named or port in declared, (command, probe, port)
            checked += 1
    assert checked >= 3
