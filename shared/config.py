"""Command-line flags with environment-variable fallbacks.

Every flag ``--some-name`` of a service also reads ``<ENV_PREFIX>SOME_NAME`` (for
example ``INFERGATE_SCRAPE_INTERVAL``); an explicit flag wins over the environment,
which wins over the default. The variable is named in ``--help`` so the two never drift.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

ENV_PREFIX = "INFERGATE_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str, prefix: str = ENV_PREFIX) -> str:
    """``--scrape-interval`` -> ``INFERGATE_SCRAPE_INTERVAL``."""
    return prefix + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


class EnvArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose long options fall back to environment variables.

    Pass ``env=None`` to an ``add_argument`` call to opt a flag out, or ``env="NAME"``
    to choose the variable. Booleans use ``action=argparse.BooleanOptionalAction``.
    """

    def __init__(self, *args: Any, env_prefix: str = ENV_PREFIX, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix
        self.env_vars: dict[str, str] = {}  # dest -> variable, for docs and tests

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:  # type: ignore[override]
        long_names = [n for n in names if n.startswith("--")]
        env = kwargs.pop("env", "") if "env" in kwargs else ""
        if env == "" and long_names:
            env = env_name(long_names[0], self.env_prefix)
        action = super().add_argument(*names, **kwargs)
        if env:
            self.env_vars[action.dest] = env
            action.help = f"{action.help or ''} [env: {env}]".strip()
            raw = os.environ.get(env)
            if raw is not None:
                action.default = self._convert(action, raw, env)
                action.required = False
        return action

    def _convert(self, action: argparse.Action, raw: str, env: str) -> Any:
        try:
            if isinstance(action, argparse.BooleanOptionalAction) or action.const is True:
                return parse_bool(raw)
            if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
                items = [x.strip() for x in raw.split(",") if x.strip()]
                return [action.type(x) if action.type else x for x in items]  # type: ignore[misc]
            return action.type(raw) if action.type else raw  # type: ignore[misc]
        except (TypeError, ValueError) as exc:
            self.error(f"environment variable {env}={raw!r}: {exc}")
