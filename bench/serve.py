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

This module holds the request shapes, the shared `Service` and a response's `Turn`, and
needs no web framework; the routes and the command are in bench/serve_app.py, which imports
FastAPI (an optional dependency).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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

    def sampling(self, temperature: float, max_tokens: int, seed: int | None) -> SamplingParams:
        """A request's sampling settings, at the served draft length."""
        return SamplingParams(temperature, max_tokens, self.draft_len, seed)

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
class Turn:
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
