"""A simulated vLLM server: vLLM's OpenAI-compatible HTTP API in front of :class:`sim.engine.Engine`.

One :class:`SimPod` = one aiohttp site + one engine + one asyncio task stepping it in
real time (``sleep(step_duration * time_scale)``). Many pods share one event loop;
:class:`SimCluster` starts N of them (``async with SimCluster(n=3) as c: c.pods[0].address``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace

from aiohttp import web

from shared.errors import error_body
from shared.hashing import prefix_block_hashes
from shared.tokens import estimate_tokens
from sim.engine import ABORTED, FINISHED, Engine, EngineConfig, SimRequest
from sim.metrics import ServerMetrics

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM/OpenAI legacy completions default
FILLER = ("The ", "cat ", "sat ", "on a", " mat", " and", " was", " fed", " we ", "ll. ")
_dumps = json.dumps


def _err(status: int, message: str, param: str | None = None) -> web.Response:
    return web.Response(
        status=status, body=error_body(status, message, param=param), content_type="application/json"
    )


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def filler_text(start: int, n: int) -> str:
    f = FILLER
    return "".join(f[(start + i) % 10] for i in range(n))


def _ids_text(ids: list[int]) -> str:
    # 4 characters per token id, so estimate_tokens and the 64-char hash blocks line up
    return "".join(f"{i & 0xFFFF:04x}" for i in ids)


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


class _Ctx:
    """Per-request handler state hung on ``SimRequest.ctx``."""

    __slots__ = ("done", "event", "reason", "stream", "visible")

    def __init__(self, stream: bool, reason: str = "length") -> None:
        self.visible = 0
        self.reason = reason
        self.done = asyncio.get_running_loop().create_future()
        self.stream = stream
        self.event: asyncio.Event | None = asyncio.Event() if stream else None


class SimPod:
    """A simulated vLLM server on one port."""

    def __init__(self, spec: PodSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.model = spec.model
        cfg = spec.engine or EngineConfig(model=spec.model)
        if cfg.model != spec.model:
            cfg = replace(cfg, model=spec.model)
        self.cfg = cfg
        self.time_scale = spec.time_scale
        self.port = spec.port
        self.host = spec.host
        self.loras: dict[str, str] = {}  # name -> path
        self.lora_created: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None
        self.running = False
        self._ids = itertools.count()
        self.app = self._make_app()
        self._reset_engine()

    # lifecycle ----------------------------------------------------------

    def _reset_engine(self) -> None:
        self.engine = Engine(self.cfg)
        self.metrics = ServerMetrics(
            self.model,
            {
                "block_size": str(self.cfg.block_size),
                "cache_dtype": "auto",
                "calculate_kv_scales": "False",
                "cpu_offload_gb": "0",
                "enable_prefix_caching": str(self.cfg.enable_prefix_caching),
                "gpu_memory_utilization": "0.9",
                "is_attention_free": "False",
                "num_cpu_blocks": "0",
                "num_gpu_blocks": str(self.cfg.num_gpu_blocks),
                "num_gpu_blocks_override": "None",
                "prefix_caching_hash_algo": "builtin",
                "sliding_window": "None",
                "swap_space": "4",
                "swap_space_bytes": str(4 << 30),
            },
            self.cfg.max_model_len,
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
        log.info("sim pod listening", extra={"pod": self.name, "address": self.address, "model": self.model})

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

    # HTTP ---------------------------------------------------------------

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
        cards = [
            {
                "id": self.model,
                "object": "model",
                "created": self.created,
                "owned_by": "vllm",
                "root": self.model,
                "parent": None,
                "max_model_len": self.cfg.max_model_len,
                "permission": [perm],
            }
        ]
        for name, path in self.loras.items():
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self.lora_created.get(name, self.created),
                    "owned_by": "vllm",
                    "root": path,
                    "parent": self.model,
                    "max_model_len": None,
                    "permission": [perm],
                }
            )
        return cards

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": self._model_cards()})

    async def _json_body(self, request: web.Request) -> dict:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "The request body must be a JSON object")
        return body

    async def _load_lora(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except BadRequest as e:
            return _err(e.status, e.message)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _err(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if not self.cfg.enable_lora:
            return _err(400, "LoRA is not enabled on this server.")
        if name in self.loras or name == self.model:
            return _err(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.loras[name] = path
        self.lora_created[name] = int(time.time())
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        try:
            body = await self._json_body(request)
        except BadRequest as e:
            return _err(e.status, e.message)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            return _err(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.loras:
            return _err(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        del self.loras[name]
        self.lora_created.pop(name, None)
        self.engine.evict_lora(name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # completions ----------------------------------------------------------

    def _common(self, body: dict) -> tuple[str, str | None, bool, bool]:
        model = body.get("model", self.model)
        if model is None:
            model = self.model
        if not isinstance(model, str):
            raise BadRequest(400, "'model' must be a string", "model")
        if model == self.model:
            lora = None
        elif model in self.loras:
            lora = model
        else:
            raise BadRequest(404, f"The model `{model}` does not exist.", "model")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise BadRequest(400, "'stream' must be a boolean", "stream")
        opts = body.get("stream_options")
        include_usage = False
        if opts is not None:
            if not isinstance(opts, dict):
                raise BadRequest(400, "'stream_options' must be an object", "stream_options")
            if not stream:
                raise BadRequest(
                    400, "Stream options can only be defined when `stream=True`.", "stream_options"
                )
            include_usage = bool(opts.get("include_usage", False))
        for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            v = body.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise BadRequest(400, f"'{key}' must be a number", key)
        n = body.get("n", 1)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):
            raise BadRequest(400, "the simulator supports only n = 1", "n")
        return model, lora, stream, include_usage

    def _max_tokens(self, body: dict, prompt_tokens: int, default: int) -> tuple[int, bool]:
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        mt = body.get(key)
        explicit = mt is not None
        if mt is None:
            mt = max(1, min(default, self.cfg.max_model_len - prompt_tokens))
        if isinstance(mt, bool) or not isinstance(mt, int):
            raise BadRequest(400, f"'{key}' must be an integer", key)
        if mt < 1:
            raise BadRequest(400, f"max_tokens must be at least 1, got {mt}.", key)
        mn = body.get("min_tokens", 0)
        if mn is None:
            mn = 0
        if isinstance(mn, bool) or not isinstance(mn, int) or mn < 0:
            raise BadRequest(400, f"min_tokens must be greater than or equal to 0, got {mn}.", "min_tokens")
        if mn > mt:
            raise BadRequest(
                400, f"min_tokens must be less than or equal to max_tokens={mt}, got {mn}.", "min_tokens"
            )
        for key2 in ("ignore_eos",):
            v = body.get(key2)
            if v is not None and not isinstance(v, bool):
                raise BadRequest(400, f"'{key2}' must be a boolean", key2)
        if prompt_tokens + mt > self.cfg.max_model_len:
            raise BadRequest(
                400,
                f"This model's maximum context length is {self.cfg.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + mt} tokens ({prompt_tokens} in the messages, {mt} in the "
                "completion). Please reduce the length of the messages or completion.",
            )
        return mt, explicit

    def _priority(self, body: dict) -> int:
        p = body.get("priority", 0)
        if p is None:
            return 0
        if isinstance(p, bool) or not isinstance(p, int):
            raise BadRequest(400, "'priority' must be an integer", "priority")
        return p

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json_body(request)
            model, lora, stream, include_usage = self._common(body)
            if "prompt" not in body or body["prompt"] is None:
                raise BadRequest(400, "'prompt' is required", "prompt")
            prompt = body["prompt"]
            if isinstance(prompt, str):
                text = prompt
            elif isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
                if len(prompt) != 1:
                    raise BadRequest(400, "the simulator supports a single prompt per request", "prompt")
                text = prompt[0]
            elif (
                isinstance(prompt, list)
                and prompt
                and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt)
            ):
                text = _ids_text(prompt)
            elif (
                isinstance(prompt, list)
                and len(prompt) == 1
                and isinstance(prompt[0], list)
                and prompt[0]
                and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt[0])
            ):
                text = _ids_text(prompt[0])
            else:
                raise BadRequest(
                    400, "'prompt' must be a non-empty string, list of strings or token ids", "prompt"
                )
            if not text:
                raise BadRequest(400, "The prompt cannot be empty.", "prompt")
            ptoks = estimate_tokens(text)
            max_tokens, explicit = self._max_tokens(body, ptoks, DEFAULT_COMPLETION_MAX_TOKENS)
            priority = self._priority(body)
        except BadRequest as e:
            return _err(e.status, e.message, e.param)
        return await self._serve(
            request,
            "cmpl",
            model,
            lora,
            text,
            ptoks,
            max_tokens,
            explicit,
            priority,
            stream,
            include_usage,
            chat=False,
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json_body(request)
            model, lora, stream, include_usage = self._common(body)
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest(400, "'messages' must be a non-empty list", "messages")
            parts = []
            for m in msgs:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise BadRequest(400, "each message must be an object with a string 'role'", "messages")
                content = m.get("content", "")
                if content is None:
                    content = ""
                if isinstance(content, list):
                    texts = []
                    for p in content:
                        if not isinstance(p, dict):
                            raise BadRequest(400, "content parts must be objects", "messages")
                        if p.get("type") == "text":
                            texts.append(str(p.get("text", "")))
                    content = "".join(texts)
                elif not isinstance(content, str):
                    raise BadRequest(400, "message 'content' must be a string or a list of parts", "messages")
                parts.append(f"[{m['role']}] {content}\n")  # a cheap stand-in for the chat template
            text = "".join(parts)
            ptoks = estimate_tokens(text)
            max_tokens, explicit = self._max_tokens(body, ptoks, self.spec.default_chat_max_tokens)
            priority = self._priority(body)
        except BadRequest as e:
            return _err(e.status, e.message, e.param)
        return await self._serve(
            request,
            "chatcmpl",
            model,
            lora,
            text,
            ptoks,
            max_tokens,
            explicit,
            priority,
            stream,
            include_usage,
            chat=True,
        )

    async def _serve(
        self,
        request: web.Request,
        prefix: str,
        model: str,
        lora: str | None,
        text: str,
        ptoks: int,
        max_tokens: int,
        explicit: bool,
        priority: int,
        stream: bool,
        include_usage: bool,
        chat: bool,
    ) -> web.StreamResponse:
        rid = f"{prefix}-{uuid.uuid4().hex}"
        hashes = prefix_block_hashes(model, text) if self.cfg.enable_prefix_caching else []
        reason = "length" if explicit else "stop"
        req = SimRequest(rid, ptoks, max_tokens, hashes, lora, priority=priority, ctx=_Ctx(stream, reason))
        created = int(time.time())
        if not self.running:
            return _err(503, "server is shutting down")
        self.submit(req)
        try:
            if not stream:
                try:
                    await req.ctx.done
                except ConnectionResetError:
                    return _err(503, "the server stopped before the request finished")
                return self._full_response(rid, created, model, req, reason, chat)
            return await self._stream(request, rid, created, model, req, reason, chat, include_usage)
        finally:
            self._streams.discard(req)
            if req.state not in (FINISHED, ABORTED):
                self.engine.abort(req.id)
                self.metrics.success["abort"] += 1

    def _usage(self, req: SimRequest, n_out: int) -> dict:
        return {
            "prompt_tokens": req.prompt_tokens,
            "total_tokens": req.prompt_tokens + n_out,
            "completion_tokens": n_out,
            "prompt_tokens_details": None,
        }

    def _full_response(self, rid, created, model, req, reason, chat) -> web.Response:
        text = filler_text(0, req.max_tokens)
        if chat:
            choice = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "reasoning_content": None,
                    "content": text,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        body = {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": self._usage(req, req.max_tokens),
            "prompt_logprobs": None,
        }
        return web.Response(body=_dumps(body).encode(), content_type="application/json")

    async def _stream(self, request, rid, created, model, req, reason, chat, include_usage):
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        await resp.prepare(request)
        self._streams.add(req)
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": rid, "object": obj, "created": created, "model": model}
        sent = 0
        ev = req.ctx.event
        if chat:
            first = dict(
                head,
                choices=[
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            )
            await resp.write(b"data: " + _dumps(first).encode() + b"\n\n")
        while True:
            done = req.ctx.done.done() and req.ctx.done.exception() is None
            n = req.max_tokens if done else req.ctx.visible
            if req.state == ABORTED:
                raise ConnectionResetError("request aborted")
            if n > sent:
                last = n >= req.max_tokens
                piece = filler_text(sent, n - sent)
                fr = reason if last else None
                if chat:
                    choice = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": fr}
                else:
                    choice = {
                        "index": 0,
                        "text": piece,
                        "logprobs": None,
                        "finish_reason": fr,
                        "stop_reason": None,
                    }
                await resp.write(b"data: " + _dumps(dict(head, choices=[choice])).encode() + b"\n\n")
                sent = n
            if sent >= req.max_tokens:
                break
            if req.ctx.done.done():
                req.ctx.done.result()  # raises if the pod stopped
                continue
            ev.clear()
            await ev.wait()
        if include_usage:
            await resp.write(
                b"data: " + _dumps(dict(head, choices=[], usage=self._usage(req, sent))).encode() + b"\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


class SimCluster:
    """N simulated pods in this event loop. ``async with SimCluster(n=3) as c: c.pods[0].address``.

    Pass ``specs`` (one :class:`PodSpec` each) or ``n`` with shared settings; ``port=0``
    picks free ports, ``base_port`` gives consecutive ones.
    """

    def __init__(
        self,
        specs: list[PodSpec] | None = None,
        *,
        n: int = 1,
        base_port: int = 0,
        host: str = "127.0.0.1",
        model: str = "meta-llama/Llama-2-7b-hf",
        lora_adapters: list[str] | None = None,
        time_scale: float = 1.0,
        engine: EngineConfig | None = None,
        name_prefix: str = "sim",
    ) -> None:
        if specs is None:
            specs = [
                PodSpec(
                    name=f"{name_prefix}-{i}",
                    port=(base_port + i) if base_port else 0,
                    host=host,
                    model=model,
                    lora_adapters=list(lora_adapters or []),
                    engine=engine,
                    time_scale=time_scale,
                )
                for i in range(n)
            ]
        self.pods = [SimPod(s) for s in specs]

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.pods]

    async def start(self) -> None:
        for p in self.pods:
            await p.start()

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pods), return_exceptions=True)

    async def kill(self, i: int) -> None:
        """Take pod ``i`` down (port closed, in-flight requests dropped)."""
        await self.pods[i].stop()

    async def restart(self, i: int) -> None:
        """Bring pod ``i`` back on the same port with an empty engine."""
        await self.pods[i].restart()

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
