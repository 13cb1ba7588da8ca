"""The HTTP layer of `bench serve` and the command itself: FastAPI routes over the
`Service` of bench/serve.py (what the server does is described there).

Importing this module without FastAPI installed is a `BenchError` that says how to install it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from bench import __version__
from bench.engines import SamplingParams
from bench.errors import BenchError
from bench.records import Generation
from bench.serve import (
    ChatRequest,
    CompletionRequest,
    Service,
    StreamOptions,
    Turn,
    build_service,
)

INSTALL = "bench serve needs fastapi and uvicorn: pip install 'bench[serve]'"
try:
    from fastapi import APIRouter, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ImportError:
    raise BenchError(INSTALL) from None

Choice = Callable[[Turn, str, list[int], str | None], dict[str, Any]]
"""A chunk's choice from the turn so far, the text delta, the step's tokens and the finish."""


class EventStream(StreamingResponse):
    """A streamed turn that stops decoding as soon as its client goes away.

    Starlette's own reaction to a disconnect is to cancel the task that iterates the body,
    and that cancellation can be put off for the whole turn: the engine steps on this loop
    and hands the body a new item every step, so the body is never found waiting. Setting
    `gone` instead cancels the turn directly, which frees its row within a step or two; and
    the body is closed however the response ends (a server that reports a disconnect as a
    failed send abandons it mid-`yield`)."""

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


@dataclass
class Reply:
    """One response in the making: the turn, what it was asked, and its chunks' shape."""

    service: Service
    turn: Turn
    prompt_ids: list[int]
    params: SamplingParams
    header: dict[str, Any]
    choice: Choice
    first_choices: list[dict[str, Any]] = field(default_factory=list)
    """Choices streamed before the first step (the chat role)."""

    async def collect(self) -> str | None:
        """Decode the whole turn; returns its finish reason."""
        finish = None
        async with aclosing(self.service.steps(self.prompt_ids, self.params)) as items:
            async for item in items:
                if not isinstance(item, Generation):
                    _, finish = self.turn.advance(item)
        return finish

    def stream(self, options: StreamOptions | None) -> EventStream:
        gone = asyncio.Event()
        return EventStream(self._events(options, gone), gone)

    async def _events(
        self, options: StreamOptions | None, gone: asyncio.Event
    ) -> AsyncIterator[str]:
        usage_each = bool(options and options.include_usage and options.continuous_usage_stats)
        usage_end = bool(options and options.include_usage)
        turn = self.turn
        for choice in self.first_choices:
            usage = {**turn.usage(), "completion_tokens": 0} if usage_each else None
            yield _sse({**self.header, "choices": [choice], "usage": usage})
        async with aclosing(self.service.steps(self.prompt_ids, self.params, gone)) as items:
            async for item in items:
                if isinstance(item, Generation):
                    continue  # [DONE] follows
                delta, finish = turn.advance(item)
                choice = self.choice(turn, delta, item, finish)
                usage = turn.usage() if usage_each else None
                yield _sse({**self.header, "choices": [choice], "usage": usage})
        if usage_end:
            yield _sse({**self.header, "choices": [], "usage": turn.usage()})
        yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"object": "error", "message": message, "type": "BadRequestError", "code": status},
        status_code=status,
    )


def _header(prefix: str, kind: str, service: Service) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": service.model_name,
    }


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(400, f"{where}: {first.get('msg')}")


router = APIRouter()


@router.get("/health")
async def health() -> PlainTextResponse:
    return PlainTextResponse("")


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/v1/models")
async def models(http: Request) -> dict[str, Any]:
    name = http.app.state.service.model_name
    model = {"id": name, "object": "model", "created": 0, "owned_by": "bench"}
    return {"object": "list", "data": [model]}


@router.get("/metrics")
async def metrics(http: Request) -> list[dict[str, Any]]:
    return http.app.state.service.take_iterations()


@router.post("/v1/completions", response_model=None)
async def completions(request: CompletionRequest, http: Request) -> Any:
    service: Service = http.app.state.service
    if isinstance(request.prompt, str):
        prompt_ids = service.chat.tokenizer(
            request.prompt, add_special_tokens=request.add_special_tokens
        )["input_ids"]
    else:
        prompt_ids = list(request.prompt)
    if not prompt_ids:
        return _error(400, "prompt is empty")
    with_ids = request.return_token_ids or not request.detokenize

    def choice(turn: Turn, delta: str, ids: list[int], finish: str | None) -> dict:
        return {
            "index": 0,
            "text": delta if request.detokenize else "",
            "token_ids": list(ids) if with_ids else None,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
            "avg_decoded_tokens_per_iter": turn.avg_decoded_tokens_per_iter(),
        }

    turn = Turn(service, len(prompt_ids), request.max_tokens, request.skip_special_tokens)
    params = service.sampling(request.temperature, request.max_tokens, request.seed)
    header = _header("cmpl", "text_completion", service)
    reply = Reply(service, turn, prompt_ids, params, header, choice)
    if request.stream:
        return reply.stream(request.stream_options)
    finish = await reply.collect()
    choices = [choice(turn, turn.text, turn.token_ids, finish)]
    return {**header, "choices": choices, "usage": turn.usage()}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: ChatRequest, http: Request) -> Any:
    service: Service = http.app.state.service
    kwargs = dict(service.chat.config.chat_template_kwargs)
    kwargs.update(request.chat_template_kwargs or {})
    try:
        text = service.chat.tokenizer.apply_chat_template(
            request.messages, tokenize=False, add_generation_prompt=True, **kwargs
        )
    except Exception as err:  # the model's own jinja template
        return _error(400, f"the chat template failed: {err}")
    prompt_ids = service.chat.tokenizer(text, add_special_tokens=False)["input_ids"]
    max_tokens = request.max_completion_tokens or request.max_tokens or 16

    def choice(turn: Turn, delta: str, ids: list[int], finish: str | None) -> dict:
        return {
            "index": 0,
            "delta": {"content": delta},
            "logprobs": None,
            "finish_reason": finish,
            "avg_decoded_tokens_per_iter": turn.avg_decoded_tokens_per_iter(),
        }

    turn = Turn(service, len(prompt_ids), max_tokens, request.skip_special_tokens)
    params = service.sampling(request.temperature, max_tokens, request.seed)
    if request.stream:
        header = _header("chatcmpl", "chat.completion.chunk", service)
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        reply = Reply(service, turn, prompt_ids, params, header, choice, [role])
        return reply.stream(request.stream_options)
    header = _header("chatcmpl", "chat.completion", service)
    finish = await Reply(service, turn, prompt_ids, params, header, choice).collect()
    message = {"role": "assistant", "content": turn.text}
    choices = [{"index": 0, "finish_reason": finish, "message": message}]
    return {**header, "choices": choices, "usage": turn.usage()}


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="bench serve", version=__version__)
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.include_router(router)
    return app


def serve(config_path: str | None, host: str, port: int, draft_len: int | None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise BenchError(INSTALL) from None
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
