"""The generated Envoy bootstrap, checked by the real Envoy 1.40 binary.

First every variant must pass ``envoy --mode validate``; then each variant runs once
in front of tiny aiohttp model servers and a stub Endpoint Picker, and the test
checks where requests land: the endpoint the picker names, the next one when the
first refuses connections, the round-robin pool when the picker is gone (FailOpen),
an OpenAI-style 503 when it is gone (FailClose).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shlex
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from picker.envoy.__main__ import main as cli_main
from picker.envoy.bootstrap import build_bootstrap
from picker.envoy.options import BootstrapOptions, HostPort
from picker.envoy.process import EnvoyProcess, EnvoyStartError, validate
from shared.natsd import free_port

sys.path.insert(0, str(Path(__file__).parent))
from envoy_stub_picker import StubPicker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "envoy-bootstrap.yaml"
SERVED = "x-gateway-destination-endpoint-served"


# --------------------------------------------------------------------------- helpers


@dataclass
class Upstream:
    """A tiny model server that says who it is and how many body bytes it got."""

    name: str
    runner: web.AppRunner
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _start_upstream(name: str) -> Upstream:
    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.query.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream", "x-server": name})
            await resp.prepare(request)
            for i in range(3):
                await resp.write(f"data: {json.dumps({'server': name, 'chunk': i})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({"server": name, "bytes": len(body)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Upstream(name, runner, port)


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    a, b = await _start_upstream("a"), await _start_upstream("b")
    try:
        yield a, b
    finally:
        await a.runner.cleanup()
        await b.runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def _ports() -> dict[str, int]:
    return {"listen_port": free_port(), "admin_port": free_port()}


def _dead_address() -> str:
    """A loopback port with nothing listening: connecting to it is refused at once."""
    return f"127.0.0.1:{free_port()}"


async def _post(
    http: aiohttp.ClientSession, port: int, body: object = None, path: str = "/v1/completions", **kw: object
) -> tuple[int, dict, str]:
    payload = body if body is not None else {"model": "m", "prompt": "hello"}
    async with http.post(f"http://127.0.0.1:{port}{path}", json=payload, **kw) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.text()


def _server(text: str) -> str:
    return json.loads(text)["server"]


# --------------------------------------------------------------------------- validate

VARIANTS = {
    "picker-failclose-full-duplex": dict(),
    "picker-failclose-buffered": dict(request_body_mode="BUFFERED", response_body_mode="NONE"),
    "picker-failclose-response-streamed": dict(response_body_mode="STREAMED"),
    "picker-failopen-buffered": dict(
        failure_mode="FailOpen", pool_endpoints=("10.0.0.1:8000", "10.0.0.2:8000")
    ),
    "picker-dns-pickers-one-attempt": dict(
        pickers=("infergate-picker.default.svc.cluster.local:9002",),
        max_endpoint_attempts=1,
        max_request_bytes=0,
    ),
    "round-robin": dict(mode="round-robin", pool_endpoints=("10.0.0.1:8000", "vllm-1.default:8000")),
    "picker-access-log-no-served-header": dict(access_log=True, served_header=False),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
async def test_every_variant_passes_envoy_validate(name: str, envoy_binary: str) -> None:
    ok, output = await validate(build_bootstrap(BootstrapOptions(**VARIANTS[name])), envoy_binary)
    assert ok, output


def test_options_reject_combinations_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="BUFFERED"):
        BootstrapOptions(
            failure_mode="FailOpen",
            pool_endpoints=("10.0.0.1:8000",),
            request_body_mode="FULL_DUPLEX_STREAMED",
        )
    with pytest.raises(ValueError, match="pool endpoints"):
        BootstrapOptions(failure_mode="FailOpen")
    with pytest.raises(ValueError, match="pool endpoints"):
        BootstrapOptions(mode="round-robin")
    with pytest.raises(ValueError, match="host:port"):
        BootstrapOptions(pickers=("no-port",))
    assert (
        BootstrapOptions(failure_mode="FailOpen", pool_endpoints=("10.0.0.1:8000",)).request_body_mode
        == "BUFFERED"
    )
    assert BootstrapOptions().request_body_mode == "FULL_DUPLEX_STREAMED"
    assert str(HostPort.parse("[::1]:9002")) == "[::1]:9002"


def test_processing_mode_and_failure_mode_follow_the_options() -> None:
    def ext_proc(opts: BootstrapOptions) -> dict:
        hcm = build_bootstrap(opts)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        filters = hcm["typed_config"]["http_filters"]
        return next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]

    close = ext_proc(BootstrapOptions())
    assert close["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED",
        "response_body_mode": "FULL_DUPLEX_STREAMED",
        "request_trailer_mode": "SEND",
        "response_trailer_mode": "SEND",
    }
    assert not close.get("failure_mode_allow")
    assert close["allow_mode_override"] is True
    opened = ext_proc(
        BootstrapOptions(
            failure_mode="FailOpen", pool_endpoints=("10.0.0.1:8000",), response_body_mode="NONE"
        )
    )
    assert opened["failure_mode_allow"] is True
    assert opened["processing_mode"]["request_body_mode"] == "BUFFERED"
    # NONE is the proto default, so proto JSON leaves it out.
    assert opened["processing_mode"].get("response_body_mode", "NONE") == "NONE"
    assert opened["processing_mode"]["request_trailer_mode"] == "SKIP"


def test_example_yaml_stays_in_sync_with_the_generator(capsys: pytest.CaptureFixture[str]) -> None:
    """deploy/examples/envoy-bootstrap.yaml names the command that made it; rerun it and compare."""
    text = EXAMPLE.read_text()
    command = next(line for line in text.splitlines() if line.startswith("# command: "))
    argv = shlex.split(command.removeprefix("# command: "))
    assert argv[:3] == ["python", "-m", "picker.envoy"]
    assert cli_main(argv[3:]) == 0
    generated = capsys.readouterr().out
    assert yaml.safe_load(text) == yaml.safe_load(generated), (
        "deploy/examples/envoy-bootstrap.yaml is stale; regenerate it with the command it names"
    )


def test_cli_reads_list_flags_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INFERGATE_ENVOY_PICKERS", "10.1.0.1:9002,10.1.0.2:9002")
    monkeypatch.setenv("INFERGATE_ENVOY_FAILURE_MODE", "FailOpen")
    monkeypatch.setenv("INFERGATE_ENVOY_POOL_ENDPOINTS", "10.2.0.1:8000")
    assert cli_main(["--format", "json"]) == 0
    clusters = {c["name"]: c for c in json.loads(capsys.readouterr().out)["static_resources"]["clusters"]}
    hosts = [
        e["endpoint"]["address"]["socket_address"]["address"]
        for e in clusters["infergate_picker"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert hosts == ["10.1.0.1", "10.1.0.2"]
    assert "infergate_pool" in clusters


# --------------------------------------------------------------------------- real runs


async def test_envoy_process_reports_a_config_envoy_rejects(envoy_binary: str) -> None:
    bootstrap = build_bootstrap(BootstrapOptions(**_ports()))
    bootstrap["static_resources"]["clusters"][0]["no_such_field"] = 1
    envoy = EnvoyProcess(bootstrap, envoy_binary)
    with pytest.raises(EnvoyStartError, match="no_such_field"):
        await envoy.start()
    assert envoy.proc is None


async def test_round_robin_alternates_between_upstreams(
    upstreams: tuple[Upstream, Upstream], http: aiohttp.ClientSession, envoy_binary: str
) -> None:
    a, b = upstreams
    opts = BootstrapOptions(
        mode="round-robin", pool_endpoints=(a.address, b.address), max_request_bytes=64 * 1024, **_ports()
    )
    async with EnvoyProcess(build_bootstrap(opts), envoy_binary) as envoy:
        served = [_server((await _post(http, opts.listen_port))[2]) for _ in range(6)]
        assert Counter(served) == {"a": 3, "b": 3}
        assert all(x != y for x, y in itertools.pairwise(served)), served
        assert (await envoy.stats("cluster.infergate_pool."))["cluster.infergate_pool.upstream_rq_total"] == 6
        # The baseline exposes the inference API only, too.
        status, _, text = await _post(http, opts.listen_port, path="/v1/unload_lora_adapter")
        assert status == 404, text

        # Envoy's own errors come back as OpenAI-style JSON too.
        status, headers, text = await _post(http, opts.listen_port, {"prompt": "x" * 100_000})
        assert status == 413
        assert headers["content-type"] == "application/json"
        assert json.loads(text)["error"]["type"] == "BadRequestError"


async def test_picker_full_duplex_routes_to_named_endpoint_and_walks_fallbacks(
    upstreams: tuple[Upstream, Upstream], http: aiohttp.ClientSession, envoy_binary: str
) -> None:
    a, b = upstreams
    stub = await StubPicker(full_duplex=True, response_full_duplex=True).start()
    opts = BootstrapOptions(
        pickers=(f"127.0.0.1:{stub.port}",), picker_health_port=stub.health_port, **_ports()
    )
    try:
        async with EnvoyProcess(build_bootstrap(opts), envoy_binary):
            for target in (b, a, b):
                stub.destination = target.address
                status, headers, text = await _post(http, opts.listen_port)
                assert (status, _server(text)) == (200, target.name)
                assert headers[SERVED] == target.address

            # The body the picker streamed back reaches the model server intact.
            big = {"model": "m", "prompt": "y" * 200_000}
            status, _, text = await _post(http, opts.listen_port, big)
            assert status == 200
            assert json.loads(text)["bytes"] == len(json.dumps(big))

            # A client cannot choose the endpoint itself: the header is stripped before routing.
            stub.destination = a.address
            _, _, text = await _post(
                http, opts.listen_port, headers={"x-gateway-destination-endpoint": b.address}
            )
            assert _server(text) == "a"

            # Fallbacks: the first (and second) named endpoints refuse connections.
            stub.destination = f"{_dead_address()},{b.address}"
            status, headers, text = await _post(http, opts.listen_port)
            assert (status, _server(text), headers[SERVED]) == (200, "b", b.address)
            stub.destination = f"{_dead_address()}, {_dead_address()}, {a.address}"
            status, _, text = await _post(http, opts.listen_port)
            assert (status, _server(text)) == (200, "a")
            # The retry replays the whole body, not only its first chunk.
            status, _, text = await _post(http, opts.listen_port, big)
            assert (status, json.loads(text)) == (200, {"server": "a", "bytes": len(json.dumps(big))})

            # A picker that puts the whole list in the header (--destination-header-list)
            # and sends no metadata: the walk reads the header instead.
            stub.header_list = True
            stub.destination = f"{_dead_address()},{b.address}"
            status, headers, text = await _post(http, opts.listen_port)
            assert (status, _server(text), headers[SERVED]) == (200, "b", b.address)
            stub.header_list = False

            # Only the inference API goes through; the picker is not even asked for the rest.
            streams = stub.streams
            for path in ("/metrics", "/v1/load_lora_adapter", "/v1/completions/../../metrics", "/"):
                async with http.post(f"http://127.0.0.1:{opts.listen_port}{path}", json={}) as resp:
                    assert resp.status == 404, path
                    assert (await resp.json())["error"]["type"] == "NotFoundError"
            assert stub.streams == streams
            status, _, text = await _post(http, opts.listen_port, path="/v1/completions?x=1")
            assert status == 200

            # Every named endpoint dead: an OpenAI-style 503, not a hang.
            stub.destination = _dead_address()
            status, headers, text = await _post(http, opts.listen_port)
            assert status == 503
            assert json.loads(text)["error"]["type"] == "ServiceUnavailableError"

            # Streaming responses pass through the picker's response path chunk by chunk.
            stub.destination = b.address
            async with http.post(
                f"http://127.0.0.1:{opts.listen_port}/v1/completions?stream=1",
                json={"model": "m", "prompt": "p"},
            ) as resp:
                events = [line async for line in resp.content if line.startswith(b"data: ")]
            assert events[-1] == b"data: [DONE]\n"
            assert [json.loads(e[6:])["chunk"] for e in events[:-1]] == [0, 1, 2]

            # The picker's own error (ImmediateResponse) reaches the client unchanged.
            stub.reject = (429, b'{"error": {"message": "shed", "type": "RateLimitError", "code": 429}}')
            status, _, text = await _post(http, opts.listen_port)
            assert (status, json.loads(text)["error"]["message"]) == (429, "shed")
    finally:
        await stub.stop()


async def test_picker_buffered_routes_to_named_endpoint_and_walks_fallbacks(
    upstreams: tuple[Upstream, Upstream], http: aiohttp.ClientSession, envoy_binary: str
) -> None:
    a, b = upstreams
    stub = await StubPicker(full_duplex=False, response_full_duplex=False).start()
    opts = BootstrapOptions(
        pickers=(f"127.0.0.1:{stub.port}",),
        picker_health_port=stub.health_port,
        request_body_mode="BUFFERED",
        response_body_mode="NONE",
        served_header=False,
        access_log=True,
        **_ports(),
    )
    try:
        async with EnvoyProcess(build_bootstrap(opts), envoy_binary) as envoy:
            for target in (a, b):
                stub.destination = target.address
                status, headers, text = await _post(http, opts.listen_port)
                assert (status, _server(text)) == (200, target.name)
                assert SERVED not in headers
            stub.destination = f"{_dead_address()},{a.address}"
            status, _, text = await _post(http, opts.listen_port, headers={"x-request-id": "walk-1"})
            assert (status, _server(text)) == (200, "a")
            assert stub.bodies[-1] == json.dumps({"model": "m", "prompt": "hello"}).encode()

            # The access log shows the walk: two attempts, the second on the live server.
            async def walk_logged() -> dict | None:
                for line in (await asyncio.to_thread(envoy.log_tail, 100)).splitlines():
                    if line.startswith("{") and '"walk-1"' in line:
                        return json.loads(line)
                return None

            entry = None
            for _ in range(100):
                if (entry := await walk_logged()) is not None:
                    break
                await asyncio.sleep(0.05)
            assert entry is not None, envoy.log_tail()
            assert (entry["attempts"], entry["upstream_host"], entry["status"]) == (2, a.address, 200)
    finally:
        await stub.stop()


async def test_fail_close_without_picker_answers_503_json(
    upstreams: tuple[Upstream, Upstream], http: aiohttp.ClientSession, envoy_binary: str
) -> None:
    no_picker = HostPort.parse(_dead_address())
    opts = BootstrapOptions(pickers=(no_picker,), picker_health_port=0, **_ports())
    async with EnvoyProcess(build_bootstrap(opts), envoy_binary):
        for _ in range(2):
            status, headers, text = await _post(http, opts.listen_port)
            assert status == 503
            assert headers["content-type"] == "application/json"
            error = json.loads(text)["error"]
            assert error["type"] == "ServiceUnavailableError"
            assert error["code"] == 503
            assert "endpoint picker is unavailable" in error["message"]


async def test_fail_open_without_picker_uses_the_pool(
    upstreams: tuple[Upstream, Upstream], http: aiohttp.ClientSession, envoy_binary: str
) -> None:
    a, b = upstreams
    stub = await StubPicker(full_duplex=False, response_full_duplex=False).start()
    opts = BootstrapOptions(
        pickers=(f"127.0.0.1:{stub.port}",),
        picker_health_port=stub.health_port,
        failure_mode="FailOpen",
        pool_endpoints=(a.address, b.address),
        response_body_mode="NONE",
        **_ports(),
    )
    async with EnvoyProcess(build_bootstrap(opts), envoy_binary):
        # While the picker runs, its choice wins over the pool's round robin.
        stub.destination = b.address
        served = [_server((await _post(http, opts.listen_port))[2]) for _ in range(3)]
        assert served == ["b", "b", "b"]
        await stub.stop()
        # Without it, every request still succeeds, spread over the pool.
        served = []
        for _ in range(4):
            status, _, text = await _post(
                http, opts.listen_port, headers={"x-gateway-destination-endpoint": "10.9.9.9:1"}
            )
            assert status == 200
            served.append(_server(text))
        assert Counter(served) == {"a": 2, "b": 2}
