"""``infergate-bench``: the demo, the benchmark sweep and the fault report.

Each subcommand lives in its own module; this file only dispatches, so that
``python -m bench <command>`` and the console script behave the same.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("bench.demo", "the real-stack run: NATS, Envoy, sim pods, collectors, pickers, autoscaler"),
    "sweep": ("bench.sweep", "the discrete-event reproduction of the published benchmark"),
    "faults": ("bench.faults", "the fault report through a real Envoy"),
    "peers": ("bench.peers", "InferGate next to sglang-router and vllm-router on the same pods and load"),
    "soak": ("bench.soak", "minutes of valid and hostile traffic on the stack: RSS growth, crashes"),
    "loadgen": ("bench.loadgen", "send a workload or a recorded trace to an OpenAI-compatible endpoint"),
}


def usage() -> str:
    lines = ["usage: infergate-bench <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(entry[0])
    except ModuleNotFoundError as exc:
        if exc.name != entry[0]:
            raise
        print(f"{args[0]}: not built yet ({entry[0]} is missing)", file=sys.stderr)
        return 0 if args[0] == "demo" else 2
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
