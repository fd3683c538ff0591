"""``infergate-sim`` / ``python -m sim``: run simulated vLLM (or SGLang) pods, or calibrate the engine.

Subcommands: ``serve`` (default) and ``calibrate``. See ``sim/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from shared.config import EnvArgumentParser
from shared.log import add_logging_flags, setup_logging
from shared.ops import Health, OpsServer, add_ops_flags
from shared.portfile import add_port_file_flag, report_ports
from shared.service import run
from sim.engine import EngineConfig
from sim.kvevents import KVEventsConfig
from sim.server import PodSpec, SimCluster

log = logging.getLogger("sim")

ENV_PREFIX = "INFERGATE_SIM_"


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(
        prog="infergate-sim serve",
        env_prefix=ENV_PREFIX,
        description="Run simulated vLLM servers (one port each) in one process.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the pods listen on")
    p.add_argument("--base-port", type=int, default=8000, help="port of the first pod; the others follow")
    p.add_argument("--pods", type=int, default=1, help="number of pods (ignored with --ports or --pods-file)")
    p.add_argument("--ports", type=_csv, default=[], help="comma-separated ports, one pod each")
    p.add_argument(
        "--pods-file",
        default="",
        help="YAML/JSON list of pods (name, port, model, lora_adapters, engine, accelerator)",
    )
    p.add_argument("--name-prefix", default="sim", help="pod names are <prefix>-<i>")
    p.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="served base model")
    p.add_argument(
        "--engine",
        default="vllm",
        choices=["vllm", "sglang"],
        help="model server to imitate: its /metrics page (and SGLang's /get_model_info, /get_load)",
    )
    p.add_argument("--lora-adapters", type=_csv, default=[], help="comma-separated adapters to preload")
    p.add_argument(
        "--fail-adapters",
        type=_csv,
        default=[],
        help="fault injection: requests for these adapters fail with 500 (comma-separated)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per simulated second (10 = ten times slower than an H100)",
    )
    p.add_argument("--kv-capacity-tokens", type=int, default=EngineConfig.kv_capacity_tokens)
    p.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    p.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens)
    p.add_argument("--max-model-len", type=int, default=EngineConfig.max_model_len)
    p.add_argument("--max-loras", type=int, default=EngineConfig.max_loras)
    p.add_argument("--max-cpu-loras", type=int, default=EngineConfig.max_cpu_loras)
    p.add_argument(
        "--enable-lora",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="LoRA support (also applies lora_enabled_factor to step times)",
    )
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--slowdown", type=float, default=EngineConfig.slowdown, help="global step-time factor")
    p.add_argument("--lora-enabled-factor", type=float, default=EngineConfig.lora_enabled_factor)
    p.add_argument("--lora-load-s", type=float, default=EngineConfig.lora_load_s)
    p.add_argument("--api-overhead-s", type=float, default=EngineConfig.api_overhead_s)
    p.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "priority"])
    p.add_argument(
        "--kv-events-config",
        default=None,
        help="vLLM's KV events config (JSON: endpoint, replay_endpoint, topic, hash_seed); "
        "pod i adds i to the ports (sim/README.md, KV events)",
    )
    p.add_argument(
        "--accelerator",
        default="",
        help="accelerator profile (h100-80gb, a100-80gb, l40s-48gb, or one from --accelerators-file): "
        "its step-time coefficients and KV capacity replace the defaults",
    )
    p.add_argument("--accelerators-file", default="", help="extra accelerator profiles (YAML, sim/README.md)")
    add_ops_flags(p, default_port=9100)
    add_logging_flags(p)
    add_port_file_flag(p)
    return p


def engine_config(args: argparse.Namespace, model: str, accelerator: str = "") -> EngineConfig:
    cfg = _engine_config(args, model)
    name = accelerator or getattr(args, "accelerator", "")
    if not name:
        return cfg
    from sim.accel import load_profiles

    extra = [args.accelerators_file] if getattr(args, "accelerators_file", "") else []
    profs = load_profiles(*extra)
    if name not in profs:
        raise SystemExit(f"unknown accelerator {name!r} (known: {', '.join(sorted(profs))})")
    return profs[name].engine_config(cfg)


def _engine_config(args: argparse.Namespace, model: str) -> EngineConfig:
    return EngineConfig(
        model=model,
        kv_capacity_tokens=args.kv_capacity_tokens,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        max_loras=args.max_loras,
        max_cpu_loras=args.max_cpu_loras,
        enable_lora=args.enable_lora,
        enable_prefix_caching=args.enable_prefix_caching,
        slowdown=args.slowdown,
        lora_enabled_factor=args.lora_enabled_factor,
        lora_load_s=args.lora_load_s,
        api_overhead_s=args.api_overhead_s,
        scheduling_policy=args.scheduling_policy,
    )


def _kv_events(args: argparse.Namespace, index: int) -> KVEventsConfig | None:
    text = getattr(args, "kv_events_config", None)
    return KVEventsConfig.from_json(text).for_pod(index) if text else None


def pod_specs(args: argparse.Namespace) -> list[PodSpec]:
    if args.pods_file:
        import yaml

        with open(args.pods_file) as f:
            text = f.read()
        items = json.loads(text) if args.pods_file.endswith(".json") else yaml.safe_load(text)
        if isinstance(items, dict):
            items = items.get("pods", [])
        specs = []
        for i, it in enumerate(items):
            model = it.get("model", args.model)
            loras = it.get("lora_adapters", args.lora_adapters)
            if isinstance(loras, str):
                loras = _csv(loras)
            specs.append(
                PodSpec(
                    name=it.get("name", f"{args.name_prefix}-{i}"),
                    port=int(it.get("port", args.base_port + i)),
                    host=args.host,
                    model=model,
                    lora_adapters=list(loras),
                    engine=engine_config(args, model, str(it.get("accelerator", ""))),
                    time_scale=float(it.get("time_scale", args.time_scale)),
                    flavor=str(it.get("engine", args.engine)),
                    fail_adapters=list(it.get("fail_adapters", args.fail_adapters)),
                    kv_events=_kv_events(args, i),
                )
            )
        return specs
    ports = [int(p) for p in args.ports] if args.ports else [args.base_port + i for i in range(args.pods)]
    return [
        PodSpec(
            name=f"{args.name_prefix}-{i}",
            port=port,
            host=args.host,
            model=args.model,
            lora_adapters=list(args.lora_adapters),
            engine=engine_config(args, args.model),
            time_scale=args.time_scale,
            flavor=args.engine,
            fail_adapters=list(args.fail_adapters),
            kv_events=_kv_events(args, i),
        )
        for i, port in enumerate(ports)
    ]


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

    cluster = SimCluster(pod_specs(args))
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    up = Gauge("infergate_sim_pods_up", "Simulated pods serving", registry=registry)
    up.set_function(lambda: sum(p.running for p in cluster.pods))
    health = Health()
    health.add_check("pods", lambda: all(p.running for p in cluster.pods))
    ops = OpsServer(args.ops_host, args.ops_port, registry, health)
    await cluster.start()
    await ops.start()
    log.info("sim serving", extra={"pods": [f"{p.name}={p.address}" for p in cluster.pods]})
    ports = {"ops": ops.port, **{f"pod-{i}": p.port for i, p in enumerate(cluster.pods)}}
    report_ports("sim", ports, args.port_file)
    try:
        await stop.wait()
    finally:
        await ops.stop()
        await cluster.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = "serve"
    if argv and argv[0] in ("serve", "calibrate"):
        cmd = argv.pop(0)
    if cmd == "calibrate":
        from sim.calibrate import main as calibrate_main

        return calibrate_main(argv)
    args = build_parser().parse_args(argv)
    setup_logging("sim", args.log_level, args.log_format)
    return run(lambda stop: serve(args, stop))


if __name__ == "__main__":
    sys.exit(main())
