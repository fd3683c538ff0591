"""Command-line flags with environment-variable fallbacks.

Every long flag ``--some-name`` of a service also reads ``<ENV_PREFIX>SOME_NAME`` (for
example ``INFERGATE_SCRAPE_INTERVAL``); an explicit flag wins over the environment,
which wins over the default. The variable is named in ``--help`` so the two never drift.
Flags in argument groups get the same treatment, because the fallback is applied at
parse time over every registered action.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
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

    Booleans use ``action=argparse.BooleanOptionalAction`` (env: 1/0, true/false, yes/no);
    list flags (``nargs='*'``/``'+'``) take a comma-separated variable.
    """

    def __init__(self, *args: Any, env_prefix: str = ENV_PREFIX, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix

    def env_vars(self) -> dict[str, str]:
        """``dest -> variable`` for every flag with a fallback (docs and manifest tests use it)."""
        return {a.dest: self._env_of(a) for a in self._actions if self._env_of(a)}

    def _env_of(self, action: argparse.Action) -> str:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return ""
        return env_name(longs[0], self.env_prefix)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        for action in self._actions:
            env = self._env_of(action)
            raw = os.environ.get(env) if env else None
            if raw is not None:
                action.default = self._convert(action, raw, env)
                action.required = False
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        for action in self._actions:
            env = self._env_of(action)
            if env and env not in (action.help or ""):
                action.help = f"{action.help or ''} [env: {env}]".strip()
        return super().format_help()

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
