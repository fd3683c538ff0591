"""Cost of InferGate's fallback chain, measured against upstream's single-ORIGINAL_DST layout.

Run: ``.venv/bin/python tests/e2e/envoy_bench_chain.py [requests]`` (default 400). Three
Envoys run one after another in front of the same aiohttp model server and stub picker, and
each gets the same sequential requests: upstream's layout (one ORIGINAL_DST cluster reading
the header, with no Lua filter), the InferGate chain (Lua split plus composite cluster), and
the chain when the first named endpoint refuses connections. The script prints p50 and p90
latency and the p50 ratio to the baseline measured in the same run. This is not a test.
"""

import asyncio
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import ClientSession, web
from envoy_stub_picker import StubPicker

from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions
from picker.envoy.process import EnvoyProcess
from shared.natsd import free_port

N = int(sys.argv[1]) if len(sys.argv) > 1 else 400


async def upstream():
    async def h(req):
        await req.read()
        return web.json_response({"ok": 1})

    app = web.Application()
    app.router.add_route("*", "/{p:.*}", h)
    r = web.AppRunner(app, access_log=None)
    await r.setup()
    port = free_port()
    await web.TCPSite(r, "127.0.0.1", port).start()
    return r, port


def plain_odst(bs):
    """Upstream's layout: one ORIGINAL_DST cluster reading x-gateway-destination-endpoint, no Lua."""
    bs = copy.deepcopy(bs)
    hcm = bs["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.lua"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["cluster"] = "infergate_model_servers_attempt_0"
    for c in bs["static_resources"]["clusters"]:
        if c["name"] == "infergate_model_servers_attempt_0":
            c["original_dst_lb_config"]["http_header_name"] = "x-gateway-destination-endpoint"
    return bs


async def once(s: ClientSession, port: int) -> float:
    t = time.perf_counter()
    async with s.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "m", "prompt": "hello"}) as r:
        await r.read()
        assert r.status == 200, r.status
    return (time.perf_counter() - t) * 1000


async def main() -> None:
    runner, port = await upstream()
    live, dead = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    # One stub names the live server, the other a refused port first: Envoy must walk on.
    direct = await StubPicker(live).start()
    walk = await StubPicker(f"{dead},{live}").start()

    def opts(stub: StubPicker) -> BootstrapOptions:
        return BootstrapOptions(
            listen_port=free_port(),
            admin_port=free_port(),
            pickers=(f"127.0.0.1:{stub.port}",),
            picker_health_port=stub.health_port,
        )

    variants = {
        "upstream layout (1 ORIGINAL_DST, no Lua)": (o := opts(direct), plain_odst(build_bootstrap(o))),
        "InferGate chain (Lua split + composite)": (o := opts(direct), build_bootstrap(o)),
        "InferGate chain, first endpoint refused": (o := opts(walk), build_bootstrap(o)),
    }
    envoys = [EnvoyProcess(bs) for _, bs in variants.values()]
    for envoy in envoys:
        await envoy.start()
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    try:
        async with ClientSession() as s:
            # Interleaved, so load from anything else on the machine hits every variant alike.
            for i in range(N + 50):
                for name, (o, _) in variants.items():
                    ms = await once(s, o.listen_port)
                    if i >= 50:  # warm-up
                        latencies[name].append(ms)
    finally:
        for envoy in envoys:
            await envoy.stop()
        await direct.stop()
        await walk.stop()
        await runner.cleanup()
    base = statistics.median(next(iter(latencies.values())))
    print(f"{N} sequential requests per variant, interleaved")
    for name, lat in latencies.items():
        lat.sort()
        p50, p90 = statistics.median(lat), lat[int(0.9 * len(lat))]
        print(f"{name:42s} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  p50 ratio {p50 / base:5.2f}")


asyncio.run(main())
