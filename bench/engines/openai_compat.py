"""The `openai` engine: any OpenAI-compatible server (trtllm-serve, vLLM, SGLang, llama.cpp,
`bench serve`).

Two things are read from each streamed turn (see `bench.engines` for the contract):

- **The engine's own per-request totals**, which decide the turn's step count: llama.cpp's
  `timings` (`predicted_n` tokens, `draft_n_accepted` accepted drafts: steps = n - A),
  SGLang's `meta_info.spec_verify_ct` (verify passes; the first token has none: steps =
  verify passes + 1), trtllm-serve's (and `bench serve`'s) per-choice
  `avg_decoded_tokens_per_iter` (steps = tokens / that average), vLLM's final-chunk
  `metrics.speculative_decoding` (`--per-request-spec-decode-metrics summary`: steps =
  n - `num_accepted_draft_tokens`, short by the drafts its last step accepted past the
  cut; `detailed` adds `per_step_accepted`, its own record of every drafting step).
- **Per-step counts from the stream**: each chunk that carries tokens is one step (these
  servers stream one chunk per decoding iteration unless they fall behind); how many
  tokens it carries is read, in this order, from the cumulative `usage.completion_tokens`
  of `stream_options: {continuous_usage_stats: true}`, the chunk's own `token_ids`, or
  the number of entries in its `logprobs`. The first step is the prefill step.

`bench.engines.reconcile` decides each turn's step count from both: exact where they
allow it (vLLM's per-step record shows each chunk is one step, or the chunks reach the
most steps the totals allow), otherwise a stated lower bound. A server that merged several
steps into one chunk (vLLM and SGLang when the client lags, trtllm-serve with
`stream_interval` > 1) gets its count from the totals and its detail is dropped, and one
that streams one token per chunk whatever it accepted (llama.cpp, which sends no counts
per chunk) is totals-only. A server that gives neither fails the turn with a clear error.

Server-wide counters are compared around a turn at concurrency 1 as a further
cross-check: trtllm-serve's `/metrics` iteration statistics and vLLM's Prometheus
speculative-decoding counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import __version__
from bench.config import OpenAIEngineConfig, RunConfig
from bench.conversation import ChatFormat, Message
from bench.engines import (
    EngineInfo,
    EngineTotals,
    Generation,
    SamplingParams,
    check_draft_len,
    cross_check_verdict,
    reconcile,
    visible_text,
)
from bench.errors import BenchError

# Request fields that make each server send the chunk's token ids.
TOKEN_ID_FIELDS: dict[str, dict[str, Any]] = {
    "trtllm": {"detokenize": False},
    "vllm": {"return_token_ids": True},
    "sglang": {"return_token_ids": True},
    "bench": {"return_token_ids": True},
    "generic": {},
}
OWNERS = {
    "tensorrt_llm": "trtllm",
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llamacpp",
    "bench": "bench",
}
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403, 404}


class RetryableFault(Exception):
    """A fault after which the whole turn can be asked again (nothing of it is kept)."""


class TurnFault(Exception):
    """A fault that asking again would not cure; the turn is recorded as failed."""


@dataclass
class StreamState:
    """Per-step accounting of one streamed turn, fed one parsed chunk at a time."""

    draft_len: int
    start: float = field(default_factory=time.perf_counter)
    steps: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    source: str | None = None
    """Where the step counts came from: usage, token_ids or logprobs."""
    completion_tokens: int = 0
    final_usage: dict[str, Any] | None = None
    avg_decoded_tokens_per_iter: float | None = None
    spec_verify_ct: int | None = None
    timings: dict[str, Any] | None = None
    """llama.cpp's per-request `timings` (the last chunk carries them)."""
    request_spec: dict[str, Any] | None = None
    """vLLM's per-request speculative-decoding metrics, where the server returns them."""
    chunks: int = 0
    uncounted_chunks: int = 0
    """Chunks with text but no token count (llama.cpp streams one token per chunk)."""
    disagreements: int = 0
    """Chunks whose token ids and usage difference disagree."""
    ttft_s: float | None = None
    done: bool = False
    cumulative_ids: list[int] | None = None
    """SGLang `/generate`: the output ids so far, as its last chunk gave them."""

    def feed(self, chunk: Any) -> None:
        self.chunks += 1
        if not isinstance(chunk, dict):
            raise RetryableFault(f"stream chunk {self.chunks} is not a JSON object")
        if chunk.get("error") is not None or chunk.get("object") == "error":
            error = chunk.get("error", chunk)
            message = error.get("message", error) if isinstance(error, dict) else error
            raise RetryableFault(f"the server reported an error mid-stream: {message}")
        if "meta_info" in chunk and "choices" not in chunk:
            chunk = self._from_sglang_generate(chunk)
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        choices = chunk.get("choices") or []
        usage = chunk.get("usage")
        self._read_request_spec(chunk)
        if not choices:  # the usage-only chunk that closes a stream: not a step
            if isinstance(usage, dict):
                self.final_usage = usage
            return
        choice = choices[0]
        ids = choice.get("token_ids")
        counted = _logprob_count(choice.get("logprobs"))
        n_usage = None
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            n_usage = usage["completion_tokens"] - self.completion_tokens
            self.completion_tokens = usage["completion_tokens"]
            if n_usage < 0:
                raise RetryableFault("usage.completion_tokens went down within the stream")
        if n_usage is not None:
            n, source = n_usage, "usage"
        elif isinstance(ids, list):
            n, source = len(ids), "token_ids"
        elif counted is not None:
            n, source = counted, "logprobs"
        else:
            n, source = 0, None
            if _choice_text(choice):
                self.uncounted_chunks += 1
        if isinstance(ids, list):
            if n_usage is not None and len(ids) != n_usage:
                self.disagreements += 1
            self.token_ids.extend(int(t) for t in ids)
        self.text.append(_choice_text(choice))
        if n > 0:
            if self.source is None:
                self.source = source
            self.steps.append(n)
        if self.ttft_s is None and (n > 0 or _choice_text(choice)):
            self.ttft_s = time.perf_counter() - self.start
        if isinstance(choice.get("avg_decoded_tokens_per_iter"), (int, float)):
            self.avg_decoded_tokens_per_iter = float(choice["avg_decoded_tokens_per_iter"])
        meta = choice.get("meta_info") or chunk.get("meta_info")
        if isinstance(meta, dict) and isinstance(meta.get("spec_verify_ct"), int):
            self.spec_verify_ct = meta["spec_verify_ct"]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])

    def _from_sglang_generate(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """SGLang's native `/generate` chunk as an OpenAI one. Its `text` and (by default)
        `output_ids` are cumulative, `meta_info.completion_tokens` too."""
        meta = chunk["meta_info"] if isinstance(chunk["meta_info"], dict) else {}
        finish = meta.get("finish_reason")
        text = chunk.get("text") if isinstance(chunk.get("text"), str) else ""
        previous = "".join(self.text)
        if isinstance(chunk.get("output_ids"), list):
            self.cumulative_ids = [int(t) for t in chunk["output_ids"]]
        choice = {
            "index": 0,
            "text": text[len(previous) :] if text.startswith(previous) else text,
            "finish_reason": finish.get("type") if isinstance(finish, dict) else finish,
            "meta_info": meta,
        }
        return {"choices": [choice], "usage": {"completion_tokens": meta.get("completion_tokens")}}

    def _read_request_spec(self, chunk: dict[str, Any]) -> None:
        """vLLM's per-request speculative-decoding metrics (server flag
        `--per-request-spec-decode-metrics summary`): top-level
        `metrics.speculative_decoding` of the final (usage) chunk."""
        metrics = chunk.get("metrics")
        spec = metrics.get("speculative_decoding") if isinstance(metrics, dict) else None
        if isinstance(spec, dict):
            self.request_spec = spec

    def stream_steps(self) -> list[int]:
        """The per-step counts the stream showed; none when some chunks carried text
        without a count (llama.cpp: one token per chunk, then a usage total at the end)."""
        return [] if self.uncounted_chunks else self.steps

    def output_tokens(self) -> int:
        """The turn's tokens: the server's final count, else what the stream carried."""
        usage = self.final_usage or {}
        if isinstance(usage.get("completion_tokens"), int):
            return usage["completion_tokens"]
        if self.completion_tokens:
            return self.completion_tokens
        return sum(self.stream_steps()) or len(self.token_ids) or len(self.cumulative_ids or [])

    def drafting_record(self) -> list[int] | None:
        """vLLM's own per-step record (`--per-request-spec-decode-metrics detailed`): the
        drafts accepted at each step that drafted, in order; None when not reported."""
        record = (self.request_spec or {}).get("per_step_accepted")
        if isinstance(record, list) and all(isinstance(a, int) and a >= 0 for a in record):
            return list(record)
        return None

    def totals(self) -> EngineTotals | None:
        """The engine's own count of this request's steps, from whichever server said it."""
        k = self.draft_len
        timings = self.timings or {}
        if isinstance(timings.get("predicted_n"), int):
            n = timings["predicted_n"]
            accepted = timings.get("draft_n_accepted")
            accepted = accepted if isinstance(accepted, int) else 0
            proposed = timings.get("draft_n")
            return EngineTotals(
                output_tokens=n,
                steps=n - accepted,
                accepted_drafts=accepted,
                proposed_drafts=proposed if isinstance(proposed, int) else 0,
                source="llama.cpp timings: steps = predicted_n - draft_n_accepted",
                # llama-server never drafts past the tokens max_tokens leaves, but a step
                # that emits an end-of-generation token has already counted every draft it
                # accepted, those after that token included.
                past_cut_max=min(k, accepted) if self.finish_reason == "stop" else 0,
            )
        n = self.output_tokens()
        if self.spec_verify_ct is not None and (self.spec_verify_ct > 0 or n <= 1):
            return EngineTotals(
                output_tokens=n,
                steps=self.spec_verify_ct + 1,
                accepted_drafts=n - self.spec_verify_ct - 1,
                source="sglang meta_info: steps = spec_verify_ct + 1 (the first token "
                "has no verify pass)",
            )
        if self.avg_decoded_tokens_per_iter and self.avg_decoded_tokens_per_iter > 0 and n:
            steps = round(n / self.avg_decoded_tokens_per_iter)
            return EngineTotals(
                output_tokens=n,
                steps=steps,
                accepted_drafts=n - steps,
                source="avg_decoded_tokens_per_iter: steps = completion tokens / "
                "avg_decoded_tokens_per_iter (decoding_iter, the prefill included)",
            )
        spec = self.request_spec or {}
        if isinstance(spec.get("num_accepted_draft_tokens"), int) and n:
            accepted = spec["num_accepted_draft_tokens"]
            proposed = spec.get("num_draft_tokens")
            record = self.drafting_record()
            # vLLM counts what the last step accepted beyond max_tokens or a stop token
            # (it never shortens a draft to the tokens left): at most what its last drafting
            # step accepted, where its per-step record says so, else all it accepted.
            if record is None:
                past_cut = min(k, accepted)
            else:
                past_cut = min(k, record[-1]) if record else 0
            low, high = n - accepted, n - accepted + past_cut
            # Each drafting step (`num_spec_steps`, exact) is a step after the prefill.
            spec_steps = spec.get("num_spec_steps")
            if isinstance(spec_steps, int):
                low = min(high, max(low, spec_steps + 1))
            return EngineTotals(
                output_tokens=n,
                steps=low,
                accepted_drafts=accepted,
                proposed_drafts=proposed if isinstance(proposed, int) else None,
                source="vllm metrics.speculative_decoding: steps = completion tokens - "
                "num_accepted_draft_tokens, at least num_spec_steps + 1",
                past_cut_max=high - low,
            )
        return None

    def counters(self) -> dict[str, Any]:
        """What the stream and the engine said about this turn, and whether they agree."""
        total = sum(self.steps)
        source = self.source if self.stream_steps() else None
        out: dict[str, Any] = {"step_source": source, "chunks": self.chunks}
        checks: dict[str, bool] = {}
        if self.source != "token_ids" and self.token_ids:
            checks["token_ids_match_steps"] = (
                self.disagreements == 0 and len(self.token_ids) == total
            )
        if self.final_usage and isinstance(self.final_usage.get("completion_tokens"), int):
            out["usage_completion_tokens"] = self.final_usage["completion_tokens"]
            if self.steps:
                checks["usage_total_matches_steps"] = out["usage_completion_tokens"] == total
        if self.uncounted_chunks:
            out["uncounted_chunks"] = self.uncounted_chunks
        if self.avg_decoded_tokens_per_iter is not None:
            out["avg_decoded_tokens_per_iter"] = self.avg_decoded_tokens_per_iter
        if self.spec_verify_ct is not None:
            out["spec_verify_ct"] = self.spec_verify_ct
        if self.timings is not None:
            out["timings"] = self.timings
        if self.request_spec is not None:
            out["speculative_decoding"] = self.request_spec
        out["checks"] = checks
        return out


def _logprob_count(logprobs: Any) -> int | None:
    if not isinstance(logprobs, dict):
        return None
    for key in ("tokens", "content"):  # completions, chat
        if isinstance(logprobs.get(key), list):
            return len(logprobs[key])
    return None


def _choice_text(choice: dict[str, Any]) -> str:
    if isinstance(choice.get("text"), str):
        return choice["text"]
    delta = choice.get("delta") or {}
    parts = [delta.get(k) for k in ("reasoning_content", "reasoning", "content")]
    return "".join(p for p in parts if isinstance(p, str))


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[Any]:
    """Parsed `data:` payloads of a server-sent event stream, up to `[DONE]`.

    A payload that is not JSON is a fault of this attempt (a proxy's error page, a torn
    write), so the turn is asked again.
    """
    async for line in lines:
        line = line.strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return
        try:
            yield json.loads(payload)
        except json.JSONDecodeError:
            raise RetryableFault(f"malformed JSON in the stream: {payload[:80]!r}") from None


def prometheus_counters(text: str, prefix: str) -> dict[str, float]:
    """Sum of each counter starting with `prefix` over its label sets (`_total` dropped)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0].removesuffix("_total")
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums


def iteration_counters(entries: Any) -> dict[str, float]:
    """trtllm-serve's `/metrics`: a JSON list of iteration statistics, summed."""
    sums = {"iterations": 0.0, "num_draft_tokens": 0.0, "num_accepted_tokens": 0.0}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        sums["iterations"] += 1
        spec = entry.get("specDecodingStats") or {}
        sums["num_draft_tokens"] += float(spec.get("numDraftTokens") or 0)
        sums["num_accepted_tokens"] += float(spec.get("numAcceptedTokens") or 0)
    return sums


def compare_engine_counters(
    server: str,
    delta: dict[str, float],
    steps: list[int],
    draft_len: int,
    request_spec: dict[str, Any] | None = None,
) -> dict[str, bool]:
    """Stream and request counters against the server's own counters for one turn
    (concurrency 1), like with like.

    vLLM's Prometheus counters count drafting steps only (`spec_decode_num_drafts`: an
    n-gram lookup that found nothing drafts nothing) and the drafts accepted, past the cut
    included, as its per-request metrics do: where the request reported those, they must
    equal the deltas exactly. Without them, the stream bounds them: at least its chunks of
    two or more tokens drafted, at most all its decode chunks; the last step may have
    accepted up to `draft_len` drafts beyond the cut.
    """
    decode = steps[1:]
    accepted = sum(e - 1 for e in decode)
    checks: dict[str, bool] = {}
    if server == "vllm" and "vllm:spec_decode_num_drafts" in delta:
        drafts = delta["vllm:spec_decode_num_drafts"]
        engine_accepted = delta.get("vllm:spec_decode_num_accepted_tokens", 0.0)
        spec = request_spec or {}
        if isinstance(spec.get("num_spec_steps"), int):
            checks["vllm_drafting_steps_match_request"] = drafts == spec["num_spec_steps"]
        elif decode:
            checks["vllm_drafting_steps_within_stream"] = (
                sum(1 for e in decode if e >= 2) <= drafts <= len(decode)
            )
        if isinstance(spec.get("num_accepted_draft_tokens"), int):
            checks["vllm_accepted_match_request"] = (
                engine_accepted == spec["num_accepted_draft_tokens"]
            )
        elif decode:
            checks["vllm_accepted_within_stream"] = (
                accepted <= engine_accepted <= accepted + draft_len
            )
    if server in ("trtllm", "bench") and delta.get("iterations"):
        if delta["num_draft_tokens"]:
            engine_accepted = delta["num_accepted_tokens"]
            checks["iteration_accepted_matches"] = (
                accepted <= engine_accepted <= accepted + draft_len
            )
    return checks


class OpenAIEngine:
    """Streams each turn from the server and counts tokens per chunk."""

    def __init__(self, config: RunConfig, chat: ChatFormat) -> None:
        try:
            import httpx2  # noqa: F401
        except ImportError:
            raise BenchError(
                "the openai engine needs httpx2: pip install 'bench[openai]'"
            ) from None
        engine = config.engine
        assert isinstance(engine, OpenAIEngineConfig)
        self.config = engine
        self.chat = chat
        self.draft_len = config.draft_len
        self.concurrency = config.concurrency
        self.base_url = engine.base_url.rstrip("/").removesuffix("/v1")
        self.headers = {}
        if engine.api_key_env:
            key = os.environ.get(engine.api_key_env)
            if not key:
                raise BenchError(f"engine.api_key_env names {engine.api_key_env}, which is unset")
            self.headers["Authorization"] = f"Bearer {key}"
        self.server_process = None
        self.any_success = False
        if engine.launch is not None:
            from bench.engines.launch import LaunchedServer

            self.server_process = LaunchedServer(
                engine.launch, self.base_url, self.draft_len, target_paths(config)
            )
            self.server_process.start()
            try:
                self.server_process.wait_healthy()
            except BaseException:
                self.server_process.stop()
                raise
        try:
            self.model, self.server, version = self._discover()
        except BaseException:
            if self.server_process is not None:
                self.server_process.stop()
            raise
        self.info = EngineInfo(
            name="openai",
            version=version,
            details={
                "base_url": self.base_url,
                "api": engine.api,
                "server": self.server,
                "model": self.model,
                "concurrency": config.concurrency,
                "launched": self.server_process.describe() if self.server_process else None,
                "client": f"bench {__version__}",
            },
            takes_messages=engine.api == "chat",
        )

    def _discover(self) -> tuple[str, str, str]:
        """(model name, server kind, server version) from /v1/models and /version."""
        import httpx2

        timeout = httpx2.Timeout(self.config.connect_timeout_s, read=30.0)
        url = f"{self.base_url}/v1/models"
        try:
            response = httpx2.get(url, headers=self.headers, timeout=timeout)
        except httpx2.HTTPError as err:
            raise BenchError(
                f"cannot reach the server at {self.base_url} ({type(err).__name__}); start it, "
                "fix engine.base_url / --base-url, or add a launch: section to the config"
            ) from None
        if response.status_code != 200:
            raise BenchError(f"{url} answered HTTP {response.status_code}: {response.text[:200]}")
        try:
            models = response.json().get("data") or []
        except (json.JSONDecodeError, AttributeError):
            raise BenchError(f"{url} did not answer with an OpenAI model list") from None
        model = self.config.model or (models[0].get("id") if models else None)
        if not model:
            raise BenchError(f"{url} lists no model; set engine.model")
        server = self.config.server
        if server == "auto":
            owner = next((m.get("owned_by") for m in models if m.get("id") == model), None)
            server = OWNERS.get(str(owner), "generic")
        version = "unknown"
        try:
            answer = httpx2.get(f"{self.base_url}/version", headers=self.headers, timeout=timeout)
            if answer.status_code == 200:
                version = str(answer.json().get("version", version))
        except (httpx2.HTTPError, json.JSONDecodeError, AttributeError):
            pass
        return model, server, f"{server} {version}"

    def request_body(
        self, prompt_ids: list[int], sampling: SamplingParams, messages: list[Message] | None
    ) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,  # always sent: trtllm-serve defaults to 1.0
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if sampling.temperature > 0 and sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.config.api == "generate":  # SGLang's native API
            sampling_params = {
                "temperature": sampling.temperature,
                "max_new_tokens": sampling.max_tokens,
            }
            body = {"input_ids": prompt_ids, "sampling_params": sampling_params, "stream": True}
            body.update(self.config.extra_body)
            return "/generate", body
        if self.config.api == "chat":
            if messages is None:
                raise BenchError("the chat API needs the conversation's messages")
            path = "/v1/chat/completions"
            body["messages"] = messages
        else:
            path = "/v1/completions"
            body["prompt"] = prompt_ids
            if self.config.request_token_ids:
                body.update(TOKEN_ID_FIELDS.get(self.server, {}))
        body.update(self.config.extra_body)
        return path, body

    async def _scrape(self, client: Any) -> dict[str, float] | None:
        if not self.config.scrape_metrics or self.concurrency != 1:
            return None
        if self.server not in ("trtllm", "bench", "vllm"):
            return None
        try:
            response = await client.get(f"{self.base_url}/metrics", headers=self.headers)
            if response.status_code != 200:
                return None
            if self.server == "vllm":
                return prometheus_counters(response.text, "vllm:spec_decode")
            return iteration_counters(response.json())
        except Exception:  # counters are a cross-check; their absence is recorded, not fatal
            return None

    async def _attempt(self, client: Any, path: str, body: dict[str, Any]) -> StreamState:
        import httpx2

        state = StreamState(self.draft_len)
        try:
            async with client.stream(
                "POST", f"{self.base_url}{path}", json=body, headers=self.headers
            ) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:300]
                    message = f"HTTP {response.status_code} from {path}: {detail}"
                    if response.status_code in RETRY_STATUS:
                        raise RetryableFault(message)
                    if response.status_code in FATAL_STATUS or not self.any_success:
                        raise BenchError(
                            f"the server at {self.base_url} rejected the request ({message}); "
                            "check engine.base_url, engine.model, engine.api and engine.server (an older "
                            "server may not know the token-id field: engine.request_token_ids: false)"
                        )
                    raise TurnFault(message)
                async for chunk in sse_events(response.aiter_lines()):
                    state.feed(chunk)
                state.done = True
        except httpx2.TimeoutException as err:
            raise RetryableFault(f"timed out ({type(err).__name__})") from None
        except httpx2.TransportError as err:
            raise RetryableFault(
                f"connection failed or cut ({type(err).__name__}: {err})"
            ) from None
        if state.finish_reason is None:
            raise RetryableFault(f"the stream ended after {state.chunks} chunks without a finish")
        return state

    async def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        messages: list[Message] | None = None,
    ) -> Generation:
        import httpx2

        path, body = self.request_body(prompt_ids, sampling, messages)
        timeout = httpx2.Timeout(self.config.read_timeout_s, connect=self.config.connect_timeout_s)
        started = time.perf_counter()
        faults: list[str] = []
        async with httpx2.AsyncClient(timeout=timeout) as client:
            for attempt in range(1, self.config.max_attempts + 1):
                before = await self._scrape(client)
                try:
                    state = await self._attempt(client, path, body)
                except RetryableFault as err:
                    faults.append(f"attempt {attempt}: {err}")
                    if attempt < self.config.max_attempts:
                        await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
                    continue
                after = await self._scrape(client) if before is not None else None
                return self._generation(state, faults, before, after, started)
        raise TurnFault(f"gave up after {self.config.max_attempts} attempts: " + "; ".join(faults))

    def _generation(
        self,
        state: StreamState,
        faults: list[str],
        before: dict[str, float] | None,
        after: dict[str, float] | None,
        started: float,
    ) -> Generation:
        totals = state.totals()
        steps = state.stream_steps()
        if totals is None and state.uncounted_chunks:
            raise TurnFault(
                "the server streams text without token counts and reports no per-request "
                "totals: it needs stream_options.continuous_usage_stats, token ids or "
                "logprobs per chunk, or per-request counters (llama.cpp timings, SGLang "
                "spec_verify_ct, avg_decoded_tokens_per_iter)"
            )
        if not steps and (totals is None or totals.output_tokens == 0):
            raise TurnFault(f"the server returned no tokens (finish_reason {state.finish_reason})")
        if state.finish_reason not in ("stop", "length", "tool_calls"):
            raise TurnFault(f"the server ended the turn with finish_reason {state.finish_reason!r}")
        detail, counted = reconcile(steps, totals, self.draft_len, state.drafting_record())
        n = totals.output_tokens if totals is not None else sum(steps)
        check_draft_len(steps, detail, counted, n, self.draft_len)
        finish = "length" if state.finish_reason == "length" else "stop"
        counters = state.counters()
        if faults:
            counters["retried"] = faults
        if before is not None and after is not None:
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            counters["engine_metrics_delta"] = delta
            counters["checks"].update(
                compare_engine_counters(
                    self.server, delta, steps, self.draft_len, state.request_spec
                )
            )
        counters["cross_check"] = cross_check_verdict(counters["checks"])
        ids = state.token_ids
        if not ids and state.cumulative_ids is not None:
            ids = state.cumulative_ids
        if ids and (state.source == "token_ids" or len(ids) == sum(steps)):
            text = visible_text(self.chat, ids, finish)
        else:
            text = "".join(state.text)
        self.any_success = True
        return Generation(
            steps=steps,
            prefill_step=True,
            step_detail=detail,
            totals=totals,
            counted=counted,
            drafted=None,
            token_ids=ids,
            text=text,
            finish_reason=finish,
            ttft_s=state.ttft_s,
            duration_s=time.perf_counter() - started,
            engine_counters=counters,
        )

    async def aclose(self) -> None:
        if self.server_process is not None:
            self.server_process.stop()


def target_paths(config: RunConfig) -> dict[str, str]:
    """The model files a launched server loads, for the placeholders its launch uses (see
    `LaunchConfig`): `{target_file}`, `{target_dir}`, `{target_gguf}`, `{draft_head}` and
    `{draft_head_gguf}`. Only those used are resolved: a conversion runs only when needed."""
    from bench.engines.launch import uses_placeholder

    launch = config.engine.launch
    names = ("{target_file}", "{target_dir}", "{target_gguf}", "{draft_head}", "{draft_head_gguf}")
    wanted = [p for p in names if uses_placeholder(launch, p)]
    if not wanted:
        return {}
    paths: dict[str, str] = {}
    if {"{draft_head}", "{draft_head_gguf}"} & set(wanted):
        if launch.draft_head is None or not Path(launch.draft_head, "config.json").is_file():
            raise BenchError(
                "the launch command uses {draft_head} or {draft_head_gguf}: set "
                "engine.launch.draft_head to an EAGLE-3 head folder (config.json and "
                f"safetensors); got {launch.draft_head!r}"
            )
        paths["{draft_head}"] = launch.draft_head
    from bench.target import gguf_path, resolve_target

    resolved = resolve_target(config.target)
    paths["{target_file}"] = resolved.location
    folder = Path(resolved.location)
    if resolved.gguf_file:
        gguf = gguf_path(config.target, resolved)
        paths["{target_file}"] = str(gguf)
        if {"{target_dir}", "{target_gguf}", "{draft_head_gguf}"} & set(wanted):
            from bench.gguf_cache import converted_checkpoint

            converted = converted_checkpoint(gguf, resolved.sha256)
            if converted is None:
                raise BenchError(
                    f"{resolved.gguf_file} cannot be converted into a transformers folder, "
                    "which {target_dir}, {target_gguf} and {draft_head_gguf} need; use "
                    "{target_file}"
                )
            folder = converted
    paths["{target_dir}"] = str(folder)
    if "{target_gguf}" in wanted or "{draft_head_gguf}" in wanted:
        from bench.engines.llamacpp_gguf import gguf_of

        if "{target_gguf}" in wanted:
            paths["{target_gguf}"] = str(gguf_of(folder, "f32"))
        if "{draft_head_gguf}" in wanted:
            paths["{draft_head_gguf}"] = str(
                gguf_of(Path(paths["{draft_head}"]), "f32", target_dir=folder)
            )
    return {p: paths[p] for p in wanted}


def preflight(config: RunConfig) -> None:
    """Checks that need neither the tokenizer nor the server (run before anything heavy)."""
    try:
        import httpx2  # noqa: F401
    except ImportError:
        raise BenchError("the openai engine needs httpx2: pip install 'bench[openai]'") from None
    engine = config.engine
    if isinstance(engine, OpenAIEngineConfig) and engine.launch is not None:
        from bench.engines.launch import build_command, check_installed

        argv = build_command(engine.launch, engine.base_url, config.draft_len, Path("options.yml"))
        check_installed(argv[0])
