"""`bench serve`: an OpenAI-compatible HTTP server over the reference engine.

It behaves like trtllm-serve where the harness looks: one streamed chunk per decoding
iteration (the prefill token first, then 1 + accepted drafts per chunk), cumulative
`usage.completion_tokens` in every chunk with `stream_options.continuous_usage_stats`,
`avg_decoded_tokens_per_iter` on every choice, `/health`, `/version`, `/v1/models`, and
`/metrics` as a JSON list of iteration statistics that is emptied on read. Request bodies
reject unknown fields and an omitted `temperature` means 1.0, as on trtllm-serve. Token ids
come back per chunk with `return_token_ids: true` (vLLM's spelling) or, trtllm-serve's,
`detokenize: false` (then the text is empty).

Concurrent requests are decoded together: each awaits the reference engine's `generate`
on the server's event loop, and the engine's continuous batching puts every turn in flight
into the same forwards (up to its batch size; the rest wait for a free row). A client that
goes away frees its row within a step or two. A small model with real speculative decoding
on a laptop, and the real server the `openai` engine is tested against.

`/metrics` has one entry per target forward, built from the decoder's own count of it
(`IterationStats`): `numActiveRequests` is the rows in that forward, `specDecodingStats`
sums drafts and accepted drafts over them as trtllm-serve does (`acceptanceLength` is
(accepted + rows with drafts) / rows with drafts, 0.0 when no row drafted), and
`inflightBatchingStats` says whether the forward was a prefill (`numContextRequests`) or a
speculative step (`numGenRequests`). A prefill forward emits each joining row's first token
and drafts nothing: all its spec-decoding counts are 0. A turn streams exactly one chunk per
forward it takes part in, so at concurrency 1 a turn's entries are its steps, prefill first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench import __version__
from bench.engines import SamplingParams
from bench.errors import BenchError
from bench.records import Generation

if TYPE_CHECKING:
    from bench.engines.speculative import IterationStats


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Common(_Request):
    """Fields both endpoints take; an omitted temperature is 1.0, as on trtllm-serve."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None
    skip_special_tokens: bool = True


class CompletionRequest(_Common):
    prompt: str | list[int]
    max_tokens: int = Field(16, ge=1)
    detokenize: bool = True
    """trtllm-serve: false sends token ids and no text."""
    return_token_ids: bool = False
    """vLLM / SGLang: true sends the chunk's token ids beside its text."""
    add_special_tokens: bool = True
    """For a text prompt: let the tokenizer add its special tokens (e.g. BOS)."""


class ChatRequest(_Common):
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None


@dataclass
class Service:
    """The reference engine shared by every request, with trtllm-serve's iteration statistics."""

    engine: Any
    """Has `async generate(prompt_ids, sampling, on_step) -> Generation`; concurrent calls
    are batched by the engine."""
    chat: Any
    """The target's `ChatFormat` (tokenizer and template)."""
    model_name: str
    draft_len: int
    stop_token_ids: set[int]
    iterations: list[dict[str, Any]] = field(default_factory=list)
    _iteration: int = 0

    def record_iteration(self, stats: IterationStats) -> None:
        """One `/metrics` entry per target forward, shaped like trtllm-serve's: the engine
        calls this after each forward (`ReferenceEngine.on_iteration`)."""
        self._iteration += 1
        with_drafts = stats.rows_with_drafts
        self.iterations.append(
            {
                "iter": self._iteration,
                "numActiveRequests": stats.rows,
                "inflightBatchingStats": {
                    "numScheduledRequests": stats.rows,
                    "numContextRequests": stats.rows if stats.prefill else 0,
                    "numGenRequests": 0 if stats.prefill else stats.rows,
                },
                "specDecodingStats": {
                    "numDraftTokens": stats.draft_tokens,
                    "numAcceptedTokens": stats.accepted_tokens,
                    "numRequestsWithDraftTokens": with_drafts,
                    "acceptanceLength": (stats.accepted_tokens + with_drafts) / with_drafts
                    if with_drafts
                    else 0.0,
                },
            }
        )

    def take_iterations(self) -> list[dict[str, Any]]:
        taken, self.iterations = self.iterations, []
        return taken

    async def steps(
        self, prompt_ids: list[int], sampling: SamplingParams, gone: asyncio.Event | None = None
    ) -> AsyncIterator[list[int] | Generation]:
        """The tokens of each decoding iteration as it happens, then the Generation.

        Setting `gone` (the client went away) or closing this generator early cancels the
        turn, which frees its row in the engine's batch."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def finished(task: asyncio.Task[Generation]) -> None:
            if not task.cancelled():
                task.exception()  # retrieved here too, in case nobody reads the queue any more
            queue.put_nowait(task)

        def on_step(tokens: list[int]) -> None:  # on this loop's thread: the engine steps here
            queue.put_nowait(list(tokens))

        task = asyncio.ensure_future(self.engine.generate(prompt_ids, sampling, on_step=on_step))
        task.add_done_callback(finished)
        watch = asyncio.ensure_future((gone or asyncio.Event()).wait())
        watch.add_done_callback(lambda _: task.cancel())
        try:
            while True:
                item = await queue.get()
                if item is task:  # after every step's tokens: they were queued first
                    yield task.result()  # raises the engine's error, if any
                    return
                yield item
        finally:
            task.cancel()  # a no-op once the turn is done
            watch.cancel()


@dataclass
class _Turn:
    """Running state of one response: what has been emitted so far."""

    service: Service
    prompt_tokens: int
    max_tokens: int
    skip_special_tokens: bool
    token_ids: list[int] = field(default_factory=list)
    steps: int = 0
    text: str = ""

    def advance(self, tokens: list[int]) -> tuple[str, str | None]:
        """(text delta, finish reason or None) after one step's tokens."""
        self.token_ids.extend(tokens)
        self.steps += 1
        stopped = self.token_ids[-1] in self.service.stop_token_ids
        finish = "stop" if stopped else "length" if len(self.token_ids) >= self.max_tokens else None
        visible = self.token_ids[:-1] if stopped else self.token_ids
        full = self.service.chat.tokenizer.decode(
            visible, skip_special_tokens=self.skip_special_tokens
        )
        if full.endswith("\ufffd") and finish is None:
            return "", None  # half a UTF-8 character: wait for the rest
        delta, self.text = full[len(self.text) :], full
        return delta, finish

    def usage(self) -> dict[str, int]:
        n = len(self.token_ids)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": self.prompt_tokens + n,
        }

    def avg_decoded_tokens_per_iter(self) -> float:
        return len(self.token_ids) / self.steps if self.steps else 0.0


def _sse(data: dict[str, Any]) -> str:
    import json

    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def create_app(service: Service) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    app = FastAPI(title="bench serve", version=__version__)
    app.state.service = service

    class EventStream(StreamingResponse):
        """A streamed turn that stops decoding as soon as its client goes away.

        Starlette's own reaction to a disconnect is to cancel the task that iterates the
        body, and that cancellation can be put off for the whole turn: the engine steps on
        this loop and hands the body a new item every step, so the body is never found
        waiting. Setting `gone` instead cancels the turn directly, which frees its row
        within a step or two; and the body is closed however the response ends (a server
        that reports a disconnect as a failed send abandons it mid-`yield`)."""

        def __init__(self, content: AsyncIterator[str], gone: asyncio.Event) -> None:
            super().__init__(content, media_type="text/event-stream")
            self.gone = gone

        async def listen_for_disconnect(self, receive: Any) -> None:
            await super().listen_for_disconnect(receive)
            self.gone.set()

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"object": "error", "message": message, "type": "BadRequestError", "code": status},
            status_code=status,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where}: {first.get('msg')}")

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": service.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "bench",
                }
            ],
        }

    @app.get("/metrics")
    async def metrics() -> list[dict[str, Any]]:
        return service.take_iterations()

    def sampling(temperature: float, max_tokens: int, seed: int | None) -> SamplingParams:
        return SamplingParams(temperature, max_tokens, service.draft_len, seed)

    async def respond(
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool,
        options: StreamOptions | None,
        make_choice: Callable[[_Turn, str, list[int], str | None], dict[str, Any]],
        header: dict[str, Any],
        first_chunks: list[dict[str, Any]],
        skip_special_tokens: bool,
    ) -> Any:
        turn = _Turn(service, len(prompt_ids), params.max_tokens, skip_special_tokens)
        usage_each = bool(options and options.include_usage and options.continuous_usage_stats)
        usage_end = bool(options and options.include_usage)

        gone = asyncio.Event()

        async def events() -> AsyncIterator[str]:
            for choice in first_chunks:
                usage = {**turn.usage(), "completion_tokens": 0} if usage_each else None
                yield _sse({**header, "choices": [choice], "usage": usage})
            async with aclosing(service.steps(prompt_ids, params, gone)) as items:
                async for item in items:
                    if isinstance(item, Generation):
                        continue  # [DONE] follows
                    delta, finish = turn.advance(item)
                    choice = make_choice(turn, delta, item, finish)
                    yield _sse(
                        {
                            **header,
                            "choices": [choice],
                            "usage": turn.usage() if usage_each else None,
                        }
                    )
            if usage_end:
                yield _sse({**header, "choices": [], "usage": turn.usage()})
            yield "data: [DONE]\n\n"

        if stream:
            return EventStream(events(), gone)
        finish = None
        async with aclosing(service.steps(prompt_ids, params)) as items:
            async for item in items:
                if not isinstance(item, Generation):
                    _, finish = turn.advance(item)
        choice = make_choice(turn, turn.text, turn.token_ids, finish)
        return {**header, "choices": [choice], "usage": turn.usage()}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: CompletionRequest) -> Any:
        if isinstance(request.prompt, str):
            prompt_ids = service.chat.tokenizer(
                request.prompt, add_special_tokens=request.add_special_tokens
            )["input_ids"]
        else:
            prompt_ids = list(request.prompt)
        if not prompt_ids:
            return error(400, "prompt is empty")
        with_ids = request.return_token_ids or not request.detokenize

        def choice(turn: _Turn, delta: str, ids: list[int], finish: str | None) -> dict:
            return {
                "index": 0,
                "text": delta if request.detokenize else "",
                "token_ids": list(ids) if with_ids else None,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "avg_decoded_tokens_per_iter": turn.avg_decoded_tokens_per_iter(),
            }

        header = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": service.model_name,
        }
        params = sampling(request.temperature, request.max_tokens, request.seed)
        return await respond(
            prompt_ids,
            params,
            request.stream,
            request.stream_options,
            choice,
            header,
            [],
            request.skip_special_tokens,
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: ChatRequest) -> Any:
        kwargs = dict(service.chat.config.chat_template_kwargs)
        kwargs.update(request.chat_template_kwargs or {})
        try:
            text = service.chat.tokenizer.apply_chat_template(
                request.messages, tokenize=False, add_generation_prompt=True, **kwargs
            )
        except Exception as err:  # the model's own jinja template
            return error(400, f"the chat template failed: {err}")
        prompt_ids = service.chat.tokenizer(text, add_special_tokens=False)["input_ids"]
        max_tokens = request.max_completion_tokens or request.max_tokens or 16

        def choice(turn: _Turn, delta: str, ids: list[int], finish: str | None) -> dict:
            return {
                "index": 0,
                "delta": {"content": delta},
                "logprobs": None,
                "finish_reason": finish,
                "avg_decoded_tokens_per_iter": turn.avg_decoded_tokens_per_iter(),
            }

        header = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": service.model_name,
        }
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        params = sampling(request.temperature, max_tokens, request.seed)
        response = await respond(
            prompt_ids,
            params,
            request.stream,
            request.stream_options,
            choice,
            header,
            [role],
            request.skip_special_tokens,
        )
        if isinstance(response, dict):  # not streamed: a message, not a delta
            only = response["choices"][0]
            response["object"] = "chat.completion"
            response["choices"] = [
                {
                    "index": 0,
                    "finish_reason": only["finish_reason"],
                    "message": {"role": "assistant", "content": only["delta"]["content"]},
                }
            ]
        return response

    return app


def build_service(config_path: str | None, draft_len: int | None) -> Service:
    """The reference engine of a config, ready to serve."""
    from bench.config import load_config
    from bench.conversation import ChatFormat, load_tokenizer
    from bench.engines.reference import ReferenceEngine

    config = load_config(config_path, {"draft_len": draft_len})
    if config.engine.kind != "reference":
        raise BenchError(
            f"bench serve runs the reference engine; {config_path} configures "
            f"engine.kind {config.engine.kind!r}"
        )
    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    engine = ReferenceEngine(config, chat)
    service = Service(
        engine, chat, config.target.name, config.draft_len, set(engine.decoder.stop_token_ids)
    )
    engine.on_iteration = service.record_iteration
    return service


def serve(config_path: str | None, host: str, port: int, draft_len: int | None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise BenchError(
            "bench serve needs fastapi and uvicorn: pip install 'bench[serve]'"
        ) from None
    import sys

    if not sys.stderr.isatty():
        from bench.runner import quiet_libraries

        quiet_libraries()
    service = build_service(config_path, draft_len)
    print(
        f"serving {service.model_name} (reference engine, draft length {service.draft_len}) "
        f"at http://{host}:{port}/v1",
        flush=True,
    )
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
