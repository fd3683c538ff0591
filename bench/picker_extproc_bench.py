"""CPU per request and requests/s through the picker's ext_proc path, against a gRPC floor.

``.venv/bin/python -m bench.picker_extproc_bench [--requests N] [--quick]``

Two processes: this one plays Envoy (grpc aio client) and a server subprocess is either

* ``picker``: the real :class:`picker.service.Picker` with the default scheduler profile,
  eight endpoints in its view, an InferenceModel that rewrites the model name (so the
  body is re-encoded on the way in and the response restored on the way out);
* ``echo``: a bare ext_proc server that answers every message with an empty CONTINUE,
  i.e. the cost of grpc aio itself: the floor any Python ext_proc server pays.

Each request is a full exchange as Envoy drives it: request headers, a ~2 KB chat body,
response headers and a JSON response body with ``usage`` (4 messages each way). The
server's CPU time comes from ``/proc/<pid>/stat`` (user + system) around the timed run,
so it counts everything the server process does, gRPC included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import grpc

from picker.envoy_client import EnvoyStream
from shared.schemas import EndpointSnapshot

CHAT = json.dumps(
    {
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 20},
            {
                "role": "user",
                "content": "Summarize the following text in two sentences: " + "lorem ipsum " * 110,
            },
        ],
        "max_tokens": 200,
        "temperature": 0.7,
    }
).encode()
RESPONSE = json.dumps(
    {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": "llama-2-7b",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok " * 60}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 520, "completion_tokens": 60, "total_tokens": 580},
    }
).encode()


def sse_chunks(n: int) -> list[bytes]:
    """A streamed chat response as the server sends it: one SSE event per token, then usage, [DONE]."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama-2-7b"}
    out = [
        b"data: "
        + json.dumps(
            {**head, "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}]}
        ).encode()
        + b"\n\n"
        for i in range(n)
    ]
    usage = {"prompt_tokens": 520, "completion_tokens": n, "total_tokens": 520 + n}
    out.append(
        b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"
    )
    return out


# -- servers ---------------------------------------------------------------------------------
async def serve_echo(port: int) -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

    answers = {
        "request_headers": ep.ProcessingResponse(request_headers=ep.HeadersResponse()),
        "request_body": ep.ProcessingResponse(request_body=ep.BodyResponse()),
        "response_headers": ep.ProcessingResponse(response_headers=ep.HeadersResponse()),
        "response_body": ep.ProcessingResponse(response_body=ep.BodyResponse()),
    }

    class Echo(ep_grpc.ExternalProcessorServicer):
        async def Process(self, request_iterator, context):
            async for req in request_iterator:
                yield answers[req.WhichOneof("request")]

    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


def _pod_snapshot(i: int, seq: int, ts: float) -> EndpointSnapshot:
    """The i-th of the eight endpoints in the picker's view, with varied load."""
    return EndpointSnapshot(
        namespace="default",
        pool="pool",
        pod=f"pod-{i + 1}",
        address=f"10.0.0.{i + 1}:8000",
        epoch="e1",
        seq=seq,
        ts=ts,
        waiting=i % 3,
        running=4,
        kv_usage=0.1 * (i % 5),
        kv_capacity_tokens=119_408,
        model="llama-2-7b",
    )


async def serve_picker(port: int, request_log: bool) -> None:
    import logging

    from picker.config import PickerConfig
    from picker.models import ModelTable
    from picker.service import Picker
    from shared.crds import InferenceModel, TargetModel
    from shared.log import setup_logging

    setup_logging("picker", "INFO" if request_log else "WARNING", "json")
    if request_log:
        logging.getLogger("picker.requests").setLevel(logging.INFO)
    cfg = PickerConfig(
        pool_name="pool",
        grpc_host="127.0.0.1",
        grpc_port=port,
        grpc_health_port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
    )
    p = Picker(cfg)
    p._set_models(
        ModelTable(
            [InferenceModel("chat", "default", "chat", "pool", "Standard", (TargetModel("llama-2-7b"),))],
            "pool",
        )
    )
    await p.start()

    async def feed() -> None:  # fresh metrics, as a collector would publish them
        seq = 0
        while True:
            seq += 1
            for i in range(8):
                p.view.apply(_pod_snapshot(i, seq=seq, ts=time.time()))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(feed())
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        task.cancel()


# -- client ----------------------------------------------------------------------------------
async def one_request(ch: grpc.aio.Channel, mode: str, sse: list[bytes] | None = None) -> None:
    s = EnvoyStream(ch, mode).open()
    s.request_headers(headers={"x-request-id": os.urandom(8).hex()})
    buffered = mode == "BUFFERED"
    if buffered:
        await s.recv()
    s.request_body(CHAT, True)
    r = await s.recv()
    if r.WhichOneof("response") == "immediate_response":
        raise RuntimeError(f"rejected: {r.immediate_response.body!r}")
    if not buffered and r.WhichOneof("response") == "request_headers":
        while True:  # the streamed body comes back
            b = await s.recv()
            sr = b.request_body.response.body_mutation.streamed_response
            if (
                sr.end_of_stream
                or b.request_body.response.body_mutation.WhichOneof("mutation") != "streamed_response"
            ):
                break
    if sse is None:
        s.response_headers()
        await s.recv()
        s.response_body(RESPONSE, True)
        await s.recv()
    else:  # one message and one answer per SSE event, as Envoy streams a response
        s.response_headers(content_type="text/event-stream")
        await s.recv()
        last = len(sse) - 1
        for i, chunk in enumerate(sse):
            s.response_body(chunk, i == last)
            await s.recv()
    await s.close()


def in_process(n: int = 5000) -> float:
    """CPU µs per request of the picker's own logic: ``Exchange.handle`` over the same 4
    serialized messages (protobuf parse and serialize included), no gRPC, no event loop.
    Less sensitive to other load on the machine than the two-process figures."""
    import logging

    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

    from picker.config import PickerConfig
    from picker.extproc import FULL_DUPLEX, Exchange
    from picker.models import ModelTable
    from picker.service import Picker
    from shared.crds import InferenceModel, TargetModel

    logging.getLogger("picker.requests").setLevel(logging.WARNING)
    p = Picker(PickerConfig(pool_name="pool"))
    p._set_models(
        ModelTable(
            [InferenceModel("chat", "default", "chat", "pool", "Standard", (TargetModel("llama-2-7b"),))],
            "pool",
        )
    )
    for i in range(8):
        p.view.apply(_pod_snapshot(i, seq=1, ts=time.time() + 3600))

    def hm(items):
        return base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in items]
        )

    rh = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(
            headers=hm(
                [
                    (":method", "POST"),
                    (":path", "/v1/chat/completions"),
                    (":authority", "gw"),
                    ("content-type", "application/json"),
                    ("x-request-id", "0"),
                    ("user-agent", "bench"),
                    ("accept", "*/*"),
                ]
            )
        )
    )
    rh.protocol_config.request_body_mode = FULL_DUPLEX
    rh.protocol_config.response_body_mode = FULL_DUPLEX
    msgs = [
        rh,
        ep.ProcessingRequest(request_body=ep.HttpBody(body=CHAT, end_of_stream=True)),
        ep.ProcessingRequest(
            response_headers=ep.HttpHeaders(
                headers=hm([(":status", "200"), ("content-type", "application/json")])
            )
        ),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=RESPONSE, end_of_stream=True)),
    ]
    raw = [m.SerializeToString() for m in msgs]
    parse = ep.ProcessingRequest.FromString

    def one(i: int) -> None:
        ex = Exchange(p.director)
        first = parse(raw[0])
        first.request_headers.headers.headers[4].raw_value = str(i).encode()
        for m in (first, parse(raw[1]), parse(raw[2]), parse(raw[3])):
            for out in ex.handle(m):
                out.SerializeToString()
        ex.close()

    for i in range(500):
        one(i)
    t0 = time.process_time()
    for i in range(n):
        one(i)
    return (time.process_time() - t0) / n * 1e6


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    port: int, pid: int, mode: str, concurrency: int, n: int, sse: list[bytes] | None = None
) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        for _ in range(50):  # warm up
            await one_request(ch, mode, sse)
        remaining = n
        lat: list[float] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                await one_request(ch, mode, sse)
                lat.append(time.perf_counter() - t)

        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    lat.sort()
    return {
        "rps": n / wall,
        "cpu_us": cpu / n * 1e6,
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
    }


async def start_server(kind: str, port: int, request_log: bool = False) -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "bench.picker_extproc_bench", "--serve", kind, "--port", str(port)]
    if request_log:
        args.append("--request-log")
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
    if b"READY" not in line:
        raise RuntimeError(f"{kind} server did not start")
    return proc


async def bench(
    n: int, repeat: int = 1, chunks: int = 128, stream_only: bool = False
) -> list[tuple[str, str, int, dict[str, float]]]:
    """Every point, every server, interleaved ``repeat`` times; the best run of each is kept.

    The servers run side by side and take turns, so a burst of other load on a shared
    machine hits the floor and the picker alike instead of skewing their ratio.
    """
    from shared.natsd import free_port

    points = [
        ("echo", "FULL_DUPLEX_STREAMED", False),
        ("picker", "FULL_DUPLEX_STREAMED", False),
        ("picker", "BUFFERED", False),
        ("picker+log", "FULL_DUPLEX_STREAMED", True),
        # a streamed (SSE) response of ``chunks`` events: one round trip per event
        ("echo", "FULL_DUPLEX_STREAMED+sse", False),
        ("picker", "FULL_DUPLEX_STREAMED+sse", False),
        ("picker+log", "FULL_DUPLEX_STREAMED+sse", True),
    ]
    if stream_only:
        points = [pt for pt in points if pt[1].endswith("+sse") or pt[0] == "picker+log"]
    sse = sse_chunks(chunks)
    servers: dict[str, tuple[int, asyncio.subprocess.Process]] = {}
    try:
        for kind in ("echo", "picker", "picker+log"):
            port = free_port()
            servers[kind] = (port, await start_server(kind.split("+")[0], port, kind.endswith("+log")))
        best: dict[tuple[str, str, int], dict[str, float]] = {}
        for _ in range(repeat):
            for conc in (1, 32):
                for kind, mode, _log in points:
                    port, proc = servers[kind]
                    streamed = mode.endswith("+sse")
                    r = await drive(
                        port, proc.pid, mode.removesuffix("+sse"), conc, max(20, n // 10) if streamed else n,
                        sse if streamed else None,
                    )  # fmt: skip
                    key = (kind, mode, conc)
                    old = best.get(key)
                    if old is None or r["cpu_us"] < old["cpu_us"]:
                        r["rps"] = max(r["rps"], old["rps"] if old else 0.0)
                        best[key] = r
                    else:
                        old["rps"] = max(old["rps"], r["rps"])
    finally:
        for _, proc in servers.values():
            proc.terminate()
            await proc.wait()
    rows = []
    for kind, mode, _log in points:
        for conc in (1, 32):
            r = best[(kind, mode, conc)]
            rows.append((kind, mode, conc, r))
            print(
                f"{kind:11s} {mode:21s} c={conc:<3d} {r['rps']:7.0f} req/s  "
                f"server CPU {r['cpu_us']:6.0f} us/req  p50 {r['p50_ms']:.2f} ms  "
                f"p99 {r['p99_ms']:.2f} ms",
                flush=True,
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", choices=["echo", "picker"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--request-log", action="store_true")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per point; the best one is reported")
    ap.add_argument("--quick", action="store_true", help="500 requests per point, one run")
    ap.add_argument("--chunks", type=int, default=128, help="SSE events of the streamed-response points")
    ap.add_argument(
        "--stream-only", action="store_true", help="only the streamed-response points (and picker+log JSON)"
    )
    args = ap.parse_args()
    if args.serve:
        import uvloop  # both servers on uvloop, as `shared.service.run` does in production

        uvloop.install()
        if args.serve == "echo":
            asyncio.run(serve_echo(args.port))
        else:
            asyncio.run(serve_picker(args.port, args.request_log))
        return 0
    n = 500 if args.quick else args.requests
    repeat = 1 if args.quick else max(1, args.repeat)
    print(
        f"ext_proc bench: {n} requests per point (best of {repeat}), "
        f"body {len(CHAT)} B, response {len(RESPONSE)} B, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    own = in_process()
    print(f"in-process picker logic (no gRPC): {own:.0f} us CPU per request", flush=True)
    rows = asyncio.run(bench(n, repeat, args.chunks, args.stream_only))
    floor = {(m, c): r["cpu_us"] for k, m, c, r in rows if k == "echo"}
    print("\nratio of server CPU per request to the gRPC floor (echo):")
    for kind, mode, conc, r in rows:
        f = floor.get((mode, conc)) or floor.get(("FULL_DUPLEX_STREAMED", conc))
        if kind != "echo" and f:
            print(f"  {kind:11s} {mode:25s} c={conc:<3d} {r['cpu_us'] / f:.2f}x (+{r['cpu_us'] - f:.0f} us)")
    json_cost = {(k, c): r["cpu_us"] for k, m, c, r in rows if m == "FULL_DUPLEX_STREAMED"}
    print(f"\nper SSE event ({args.chunks} events + usage/[DONE] per streamed response):")
    for kind, mode, conc, r in rows:
        if mode.endswith("+sse") and (kind, conc) in json_cost:
            per = (r["cpu_us"] - json_cost[(kind, conc)]) / (args.chunks + 1)
            print(
                f"  {kind:11s} c={conc:<3d} {r['cpu_us']:8.0f} us/request, {per:.0f} us per event over JSON"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
