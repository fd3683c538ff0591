"""One simulated model server: :class:`sim.engine.Engine` behind an OpenAI-compatible HTTP API.

One :class:`SimPod` = one aiohttp site + one engine + one asyncio task stepping it in
real time (``sleep(step_duration * time_scale)``). Many pods share one event loop
(:mod:`sim.cluster` starts N of them). The request/response wire format lives in
:mod:`sim.openai`, the metrics page in :mod:`sim.metrics`.

A pod imitates vLLM by default; ``PodSpec(flavor="sglang")`` imitates SGLang instead:
the same engine model underneath, SGLang's ``/metrics`` families, ``/get_model_info``
and ``/get_load``, and ``owned_by: sglang`` model cards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field, replace

from aiohttp import web

from shared.hashing import prefix_block_hashes
from shared.tokens import estimate_tokens
from sim import openai, tokenize
from sim.engine import ABORTED, FINISHED, Engine, EngineConfig, SimRequest
from sim.kvevents import KVEventsConfig, ZmqPublisher
from sim.metrics import ENGINES, ServerMetrics
from sim.openai import BadRequest, error_response

log = logging.getLogger(__name__)


@dataclass
class PodSpec:
    """One simulated server: a name, a port (0 = pick), a base model and LoRA adapters."""

    name: str = "sim-0"
    port: int = 0
    host: str = "127.0.0.1"
    model: str = "meta-llama/Llama-2-7b-hf"
    lora_adapters: list[str] = field(default_factory=list)
    engine: EngineConfig | None = None
    default_chat_max_tokens: int = 256
    time_scale: float = 1.0
    flavor: str = "vllm"  # the model server imitated: "vllm" or "sglang"
    # Fault injection: requests naming one of these adapters fail with 500 (a broken canary).
    fail_adapters: list[str] = field(default_factory=list)
    kv_events: KVEventsConfig | None = None  # vLLM's --kv-events-config (sim/kvevents.py)


class _Ctx:
    """Per-request handler state hung on ``SimRequest.ctx``."""

    __slots__ = ("done", "event", "reason", "stream", "visible")

    def __init__(self, stream: bool, reason: str = "length") -> None:
        self.visible = 0
        self.reason = reason
        self.done = asyncio.get_running_loop().create_future()
        self.stream = stream
        self.event: asyncio.Event | None = asyncio.Event() if stream else None


_CACHE_INFO = {
    "cache_dtype": "auto",
    "calculate_kv_scales": "False",
    "cpu_offload_gb": "0",
    "gpu_memory_utilization": "0.9",
    "is_attention_free": "False",
    "num_cpu_blocks": "0",
    "num_gpu_blocks_override": "None",
    "prefix_caching_hash_algo": "builtin",
    "sliding_window": "None",
    "swap_space": "4",
    "swap_space_bytes": str(4 << 30),
}


class SimPod:
    """A simulated vLLM (or SGLang) server on one port."""

    def __init__(self, spec: PodSpec) -> None:
        if spec.flavor not in ENGINES:
            raise ValueError(f"unknown flavor {spec.flavor!r} (one of {', '.join(ENGINES)})")
        self.spec = spec
        self.name = spec.name
        self.model = spec.model
        self.flavor = spec.flavor
        cfg = spec.engine or EngineConfig(model=spec.model)
        if cfg.model != spec.model:
            cfg = replace(cfg, model=spec.model)
        self.cfg = cfg
        self.time_scale = spec.time_scale
        self.port = spec.port
        self.host = spec.host
        self.loras: dict[str, str] = {}  # name -> path
        self.fail_adapters: set[str] = set(spec.fail_adapters)  # settable at run time
        self.requests_by_model: dict[str, int] = {}  # accepted generation requests per model (tests)
        self.lora_created: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self.running = False
        self._ids = itertools.count()
        self.kv_publisher: ZmqPublisher | None = None
        self.app = self._make_app()
        self._reset_engine()

    # lifecycle ----------------------------------------------------------

    def _kv_events_on(self) -> bool:
        kvc = self.spec.kv_events
        return kvc is not None and kvc.enable_kv_cache_events and kvc.publisher == "zmq"

    def _reset_engine(self) -> None:
        self.engine = Engine(self.cfg)
        info = {**_CACHE_INFO, "enable_prefix_caching": str(self.cfg.enable_prefix_caching)}
        if self._kv_events_on():
            info["prefix_caching_hash_algo"] = "sha256_cbor"
        self.metrics = ServerMetrics(
            self.model,
            info,
            self.cfg.max_model_len,
            kind=self.flavor,
        )
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._streams: set[SimRequest] = set()
        self.created = int(time.time())
        for name in self.spec.lora_adapters:
            self.loras.setdefault(name, f"/adapters/{name}")
            self.lora_created.setdefault(name, self.created)
            if self.cfg.enable_lora:
                self.engine.preload_lora(name)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def now(self) -> float:
        """Engine (virtual) time: wall time since start divided by ``time_scale``."""
        return (time.monotonic() - self._t0) / self.time_scale

    async def start(self) -> None:
        if self.running:
            return
        if self._task is None or self._task.done():
            self._reset_engine()
        if self._kv_events_on() and self.kv_publisher is None:
            assert self.spec.kv_events is not None
            self.kv_publisher = ZmqPublisher(self.spec.kv_events, self.cfg.block_size)
            self.kv_publisher.start()  # a fresh process's stream: seq from 0, empty cache
            self.engine.kv.sink = self.kv_publisher.recorder
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._task = asyncio.create_task(self._drive(), name=f"sim-drive-{self.name}")
        self.running = True
        log.info(
            "sim pod listening",
            extra={"pod": self.name, "address": self.address, "model": self.model, "flavor": self.flavor},
        )

    async def stop(self) -> None:
        """Stop serving (a crash or a deletion): drop every request, close the port."""
        self.running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for req in list(self.engine._by_id.values()):
            self.engine.abort(req.id)
            ctx = req.ctx
            if ctx is not None and not ctx.done.done():
                ctx.done.set_exception(ConnectionResetError("server stopped"))
                ctx.done.exception()  # mark retrieved: nobody may be waiting any more
            if ctx is not None and ctx.event is not None:
                ctx.event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.kv_publisher is not None:
            self.kv_publisher.flush()
            await self.kv_publisher.close()
            self.kv_publisher = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    # the real-time driver -------------------------------------------------

    # Back-to-back steps start exactly where the previous one ended (engine time), and the
    # sleep aims at an absolute wall deadline, so event-loop lag does not accumulate into a
    # slower server. Only when the loop falls behind by more than MAX_LAG engine-seconds is
    # the lost time dropped (the pod then looks slower, as an overloaded host would make it).
    MAX_LAG = 0.05

    async def _drive(self) -> None:
        eng = self.engine
        scale = self.time_scale
        metrics = self.metrics
        mono = time.monotonic
        t0 = self._t0
        nxt: float | None = None  # engine time at which the previous step ended
        while True:
            now = self.now()
            if nxt is not None and nxt <= now < nxt + self.MAX_LAG:
                now = nxt
            nt = eng.next_event_time(now)
            if nt is None:
                nxt = None
                self._wake.clear()
                await self._wake.wait()
                continue
            if nt > now:
                nxt = None
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), (nt - now) * scale)
                continue
            res = eng.step(now)
            if self.kv_publisher is not None:
                self.kv_publisher.flush()  # one batch per engine step, as vLLM publishes
            if res.duration <= 0.0:  # nothing schedulable this instant: yield, then look again
                nxt = None
                await asyncio.sleep(0)
                continue
            delay = t0 + res.end * scale - mono()
            await asyncio.sleep(delay if delay > 0 else 0)
            nxt = res.end
            metrics.observe_step(res.tokens, res.duration, res.num_decode)
            for req in res.finished:
                self._finish(req)
            if self._streams:
                for req in self._streams:
                    ctx = req.ctx
                    ctx.visible = eng.num_output(req)  # tokens revealed by the steps done so far
                    ctx.event.set()

    def _finish(self, req: SimRequest) -> None:
        if req.state != FINISHED:
            return
        ctx = req.ctx
        end = req.t_finished
        first = req.t_first_token
        self.metrics.observe_request(
            ttft=first - req.arrival,
            e2e=end - req.arrival,
            queue=max(0.0, req.t_scheduled - req.ready_at),
            prefill=max(0.0, first - req.t_scheduled),
            decode=max(0.0, end - first),
            prompt_tokens=req.prompt_tokens,
            gen_tokens=req.max_tokens,
            max_tokens=req.max_tokens,
            reason=ctx.reason if ctx is not None else "length",
        )
        if ctx is not None and not ctx.done.done():
            ctx.done.set_result(None)

    def submit(self, req: SimRequest) -> None:
        self.engine.add(req, self.now())
        self._wake.set()

    # HTTP: routes, health, metrics, models, LoRA admin ---------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=32 << 20)
        r = app.router
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_get("/v1/models", self._models)
        r.add_post("/v1/load_lora_adapter", self._load_lora)
        r.add_post("/v1/unload_lora_adapter", self._unload_lora)
        r.add_get("/health", self._health)
        r.add_get("/metrics", self._metrics)
        r.add_get("/ping", self._health)
        if self.flavor == "sglang":
            r.add_get("/get_model_info", self._sglang_model_info)
            r.add_get("/get_load", self._sglang_load)
        else:  # vLLM's tokenizer and render endpoints (sim/tokenize.py)
            r.add_post("/tokenize", self._tokenize)
            r.add_post("/detokenize", self._detokenize)
            r.add_post("/v1/completions/render", self._render_completion)
            r.add_post("/v1/chat/completions/render", self._render_chat)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self.render_metrics()
        return web.Response(
            body=body.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    def render_metrics(self) -> str:
        return self.metrics.render(self.engine, self.cfg.max_loras if self.cfg.enable_lora else 0)

    def _model_cards(self) -> list[dict]:
        owner = self.flavor
        perm = {
            "id": f"modelperm-{self.name}",
            "object": "model_permission",
            "created": self.created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        base = {"id": self.model, "object": "model", "created": self.created, "owned_by": owner,
                "root": self.model, "parent": None, "max_model_len": self.cfg.max_model_len,
                "permission": [perm]}  # fmt: skip
        cards = [base]
        for name, path in self.loras.items():
            created = self.lora_created.get(name, self.created)
            cards.append({"id": name, "object": "model", "created": created, "owned_by": owner, "root": path,
                          "parent": self.model, "max_model_len": None, "permission": [perm]})  # fmt: skip
        return cards

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": self._model_cards()})

    async def _sglang_model_info(self, request: web.Request) -> web.Response:
        """SGLang's ``/get_model_info``: what the server was started with."""
        return web.json_response(
            {"model_path": self.model, "tokenizer_path": self.model, "is_generation": True,
             "preferred_sampling_params": None, "weight_version": "default"}
        )  # fmt: skip

    async def _sglang_load(self, request: web.Request) -> web.Response:
        """SGLang's ``/get_load``: one entry per data-parallel rank (here one)."""
        eng = self.engine
        used = round(eng.kv_usage * self.cfg.num_gpu_blocks * self.cfg.block_size)
        return web.json_response(
            [{"dp_rank": 0, "num_reqs": len(eng.running) + eng.n_waiting, "num_waiting_reqs": eng.n_waiting,
              "num_tokens": used}]
        )  # fmt: skip

    # HTTP: vLLM's tokenizer endpoints (no engine work: they only read the request) ------

    async def _tokenizer_call(self, request: web.Request, fn) -> web.Response:
        try:
            body = openai.json_object(await request.read())
            return web.json_response(fn(body))
        except BadRequest as e:
            where = {"pod": self.name, "path": request.path, "error": e.message}
            log.info("bad tokenizer request", extra=where)
            return error_response(e.status, e.message, e.param)

    async def _tokenize(self, request: web.Request) -> web.Response:
        return await self._tokenizer_call(
            request, lambda b: tokenize.tokenize(b, self.model, self.loras, self.cfg.max_model_len)
        )

    async def _detokenize(self, request: web.Request) -> web.Response:
        return await self._tokenizer_call(request, lambda b: tokenize.detokenize(b, self.model, self.loras))

    async def _render_completion(self, request: web.Request) -> web.Response:
        return await self._tokenizer_call(
            request, lambda b: tokenize.render_completion(b, self.model, self.loras, self.cfg.max_model_len)
        )

    async def _render_chat(self, request: web.Request) -> web.Response:
        mlen, default = self.cfg.max_model_len, self.spec.default_chat_max_tokens
        return await self._tokenizer_call(
            request, lambda b: tokenize.render_chat(b, self.model, self.loras, mlen, default)
        )

    async def _load_lora(self, request: web.Request) -> web.Response:
        try:
            body = openai.json_object(await request.read())
        except BadRequest as e:
            return error_response(e.status, e.message)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return error_response(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if not self.cfg.enable_lora:
            return error_response(400, "LoRA is not enabled on this server.")
        if name in self.loras or name == self.model:
            return error_response(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.loras[name] = path
        self.lora_created[name] = int(time.time())
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        try:
            body = openai.json_object(await request.read())
        except BadRequest as e:
            return error_response(e.status, e.message)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            return error_response(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.loras:
            return error_response(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        del self.loras[name]
        self.lora_created.pop(name, None)
        self.engine.evict_lora(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # HTTP: completions ------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = openai.json_object(await request.read())
            model, lora, stream, include_usage = openai.common(body, self.model, self.loras)
            text = openai.chat_prompt(body) if chat else openai.completion_prompt(body)
            ptoks = estimate_tokens(text)
            default = self.spec.default_chat_max_tokens if chat else openai.DEFAULT_COMPLETION_MAX_TOKENS
            max_tokens, explicit = openai.max_tokens(body, ptoks, default, self.cfg.max_model_len)
            priority = openai.priority(body)
        except BadRequest as e:
            return error_response(e.status, e.message, e.param)
        self.requests_by_model[model] = self.requests_by_model.get(model, 0) + 1
        if lora is not None and lora in self.fail_adapters:
            log.info("simulated adapter fault", extra={"pod": self.name, "adapter": lora})
            return error_response(500, f"simulated fault of adapter '{lora}'")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        ids: list[int] | None = None
        if not self.cfg.enable_prefix_caching:
            hashes: list[int] = []
        elif self.kv_publisher is not None:  # vLLM's chain over the token ids (sim/kvevents.py)
            ids = tokenize.encode(text)
            hashes = self.kv_publisher.hasher.hashes(ids)
        else:
            hashes = prefix_block_hashes(model, text)
        reason = "length" if explicit else "stop"
        req = SimRequest(rid, ptoks, max_tokens, hashes, lora, priority=priority, ctx=_Ctx(stream, reason))
        req.token_ids = ids
        created = int(time.time())
        if not self.running:
            return error_response(503, "server is shutting down")
        self.submit(req)
        try:
            if not stream:
                try:
                    await req.ctx.done
                except ConnectionResetError:
                    return error_response(503, "the server stopped before the request finished")
                return openai.full_response(
                    rid, created, model, req.prompt_tokens, req.max_tokens, reason, chat
                )
            return await self._stream(request, rid, created, model, req, reason, chat, include_usage)
        finally:
            self._streams.discard(req)
            if req.state not in (FINISHED, ABORTED):
                self.engine.abort(req.id)
                self.metrics.success["abort"] += 1

    async def _stream(self, request, rid, created, model, req, reason, chat, include_usage):
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        await resp.prepare(request)
        self._streams.add(req)
        sse = openai.SseWriter(resp, rid, created, model, chat)
        sent = 0
        ev = req.ctx.event
        if chat:
            await sse.role()
        while True:
            done = req.ctx.done.done() and req.ctx.done.exception() is None
            n = req.max_tokens if done else req.ctx.visible
            if req.state == ABORTED:
                raise ConnectionResetError("request aborted")
            if n > sent:
                await sse.tokens(sent, n - sent, reason if n >= req.max_tokens else None)
                sent = n
            if sent >= req.max_tokens:
                break
            if req.ctx.done.done():
                req.ctx.done.result()  # raises if the pod stopped
                continue
            ev.clear()
            await ev.wait()
        await sse.finish(openai.usage(req.prompt_tokens, sent) if include_usage else None)
        return resp
