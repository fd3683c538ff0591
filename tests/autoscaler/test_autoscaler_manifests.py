"""deploy/base/autoscaler validates offline and agrees with the code (flags, metric names, ports)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import yaml

from autoscaler.__main__ import build_parser
from autoscaler.aggregate import METRICS

DIR = Path(__file__).resolve().parents[2] / "deploy" / "base" / "autoscaler"


def docs() -> dict[str, dict]:
    out = {}
    for path in sorted(DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def test_every_manifest_validates_and_is_listed_in_the_kustomization():
    listed = set(yaml.safe_load((DIR / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DIR.glob("*.yaml")} - {"kustomization.yaml"}
    version = kubernetes_validate.latest_version()
    for doc in docs().values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_deployment_flags_parse_and_the_pod_is_locked_down():
    deploy = docs()["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = [re.sub(r"\$\((\w+)\)", "x", a) for a in container["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.authentication_from_cluster and parsed.watch_inference_models and parsed.secure_port == 6443
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": parsed.secure_port, "metrics": parsed.ops_port}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_apiservice_points_at_the_service_and_hpa_uses_served_metrics():
    d = docs()
    api = d["APIService"]
    assert api["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    assert api["spec"]["service"]["name"] == d["Service"]["metadata"]["name"]
    assert api["spec"]["service"]["port"] in {p["port"] for p in d["Service"]["spec"]["ports"]}
    # Only what the code uses: list/watch InferenceModels and InferenceModelRewrites (both
    # groups), get the one authentication ConfigMap.
    assert d["ClusterRole"]["rules"] == [
        {
            "apiGroups": ["inference.networking.x-k8s.io"],
            "resources": ["inferencemodels", "inferencemodelrewrites"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": ["llm-d.ai"], "resources": ["inferencemodelrewrites"], "verbs": ["list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["extension-apiserver-authentication"],
            "verbs": ["get"],
        },
    ]
    assert d["ClusterRoleBinding"]["roleRef"]["name"] == d["ClusterRole"]["metadata"]["name"]
    assert d["ClusterRoleBinding"]["subjects"][0]["name"] == d["ServiceAccount"]["metadata"]["name"]
    for metric in d["HorizontalPodAutoscaler"]["spec"]["metrics"]:
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] in METRICS
        assert metric["external"]["target"]["type"] == "AverageValue"
        keys = {e["key"] for e in metric["external"]["metric"]["selector"]["matchExpressions"]}
        assert keys <= {"model_name", "pool", "target_model"}
