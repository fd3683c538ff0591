"""The shipped NATS configuration (deploy/base/nats) is valid and wired consistently.

The e2e test (tests/e2e/test_nats_secure.py) runs its permissions on a real server; this
checks, offline and fast, what that test cannot: the cluster part (routes, route TLS) parses
with the real nats-server, every variable the configuration reads is set by the StatefulSet,
and each service's user, Secret and inbox prefix match a user of the configuration.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from shared.natsd import find_binary
from tests.support import natsconf
from tests.support.certs import TestCA
from tests.support.kustomize import containers, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = {
    "collector": "infergate-collector",
    "picker": "infergate-picker",
    "autoscaler": "infergate-autoscaler",
}


def test_shipped_configuration_with_its_cluster_routes_is_valid(tmp_path):
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("nats")
    paths = natsconf.Paths(4222, 8222, tmp_path / "store", server.cert, server.key, ca.cert)
    cluster = natsconf.cluster_conf_for_tls(paths, natsconf.shipped()["cluster.conf"])
    conf = natsconf.write(tmp_path / "conf", paths, cluster)
    env = {**os.environ, "POD_NAME": "nats-0", **{v: "x" for v in natsconf.PASSWORD_VARS.values()}}
    result = subprocess.run(
        [find_binary("nats-server"), "-t", "-c", str(conf)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout
    # And the server refuses it when a password variable is missing (so the check above is real).
    env.pop("PICKER_PASSWORD")
    result = subprocess.run(
        [find_binary("nats-server"), "-t", "-c", str(conf)], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0


def test_statefulset_sets_every_variable_and_mounts_what_the_configuration_reads():
    objs = {(o["kind"], o["metadata"]["name"]): o for o in render(DEPLOY / "base" / "nats")}
    sts = objs[("StatefulSet", "nats")]
    files = natsconf.shipped()
    text = files["nats.conf"] + files["cluster.conf"]
    wanted = set(re.findall(r"(?<![\w\"])\$([A-Z_]+)\b", text))  # $VAR, not "$JS.API..."
    env = {e["name"]: e for e in containers(sts)[0]["env"]}
    assert wanted == {"POD_NAME", *natsconf.PASSWORD_VARS.values()}
    assert wanted <= set(env), wanted - set(env)
    for user, var in natsconf.PASSWORD_VARS.items():
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": f"infergate-nats-{user}", "key": "password"}
    mounts = {m["mountPath"]: m["name"] for m in containers(sts)[0]["volumeMounts"]}
    assert mounts["/etc/nats/config"] == "config" and mounts["/etc/nats/tls"] == "tls"
    assert (
        "--config" in containers(sts)[0]["args"]
        and "/etc/nats/config/nats.conf" in containers(sts)[0]["args"]
    )
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "nats-cluster"
    for i in range(3):
        assert f"nats-{i}.nats-cluster:6222" in files["cluster.conf"]


def test_each_service_uses_its_own_user_secret_and_inbox():
    conf = natsconf.shipped()["nats.conf"]
    tree = {
        o["metadata"]["name"]: o for o in render(DEPLOY / "base") if o["kind"] in ("Deployment", "DaemonSet")
    }
    for user, name in SERVICES.items():
        c = containers(tree[name])[0]
        env = {e["name"]: e for e in c["env"]}
        assert env["INFERGATE_NATS_USER"]["value"] == user
        assert env["INFERGATE_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == f"infergate-nats-{user}"
        assert env["INFERGATE_NATS_INBOX_PREFIX"]["value"] == f"_INBOX_{user}"
        assert f'"_INBOX_{user}.>"' in conf and f"password: ${natsconf.PASSWORD_VARS[user]}" in conf
        assert env["INFERGATE_NATS_STREAM_REPLICAS"]["value"] == "3"
        ca_dir = env["INFERGATE_NATS_TLS_CA"]["value"].rsplit("/", 1)[0]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == ca_dir)
        volume = next(
            v for v in tree[name]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
        )
        # The services get the CA certificate only, never the server's private key.
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
