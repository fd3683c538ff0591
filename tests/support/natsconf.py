"""The NATS configuration shipped in deploy/base/nats/configmap.yaml, made runnable on loopback.

Only what cannot be the same on a test machine is substituted: the listen addresses and
ports, the JetStream store directory, the certificate paths, and the included
``cluster.conf`` (a test supplies its own, e.g. one node without routes). Users,
permissions and TLS settings are the shipped ones, so the tests check the shipped file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGMAP = ROOT / "deploy" / "base" / "nats" / "configmap.yaml"
PASSWORD_VARS = {
    "collector": "COLLECTOR_PASSWORD",
    "picker": "PICKER_PASSWORD",
    "autoscaler": "AUTOSCALER_PASSWORD",
}


def shipped() -> dict[str, str]:
    """The ConfigMap's files: ``nats.conf`` and ``cluster.conf``."""
    return yaml.safe_load(CONFIGMAP.read_text())["data"]


@dataclass(frozen=True)
class Paths:
    port: int
    monitor_port: int
    store_dir: Path
    cert: Path
    key: Path
    ca: Path


def write(directory: Path, paths: Paths, cluster_conf: str) -> Path:
    """Write the runnable ``nats.conf`` (and its ``cluster.conf``) into ``directory``."""
    files = shipped()
    conf = files["nats.conf"]
    replacements = {
        "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{paths.port}",
        "http: 0.0.0.0:8222": f"http: 127.0.0.1:{paths.monitor_port}",
        "store_dir: /data": f'store_dir: "{paths.store_dir}"',
        "/etc/nats/tls/tls.crt": str(paths.cert),
        "/etc/nats/tls/tls.key": str(paths.key),
        "/etc/nats/tls/ca.crt": str(paths.ca),
    }
    for old, new in replacements.items():
        assert old in conf or old.endswith("ca.crt"), f"the shipped nats.conf no longer has {old!r}"
        conf = conf.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.conf").write_text(cluster_conf)
    path = directory / "nats.conf"
    path.write_text(conf)
    return path


def cluster_conf_for_tls(paths: Paths, text: str) -> str:
    """The shipped ``cluster.conf`` with the test's certificate paths (for a syntax check)."""
    for old, new in (("/etc/nats/tls/tls.crt", paths.cert), ("/etc/nats/tls/tls.key", paths.key),
                     ("/etc/nats/tls/ca.crt", paths.ca)):  # fmt: skip
        text = text.replace(old, str(new))
    return text
