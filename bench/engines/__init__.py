"""The engine contract: the one place that says what an engine is and what it returns.

An engine is the only stage that knows an inference engine exists. The runner hands it a
turn's prompt token ids (and, where it declared it wants them, the chat messages) with the
sampling settings; it returns one `Generation`: the turn's tokens and text, its finish,
and how it was decoded, in two forms that are kept apart:

- `totals`: what the engine itself counted for this request (output tokens, decoding
  steps, accepted and proposed drafts), and which counter that was. These decide the
  turn's step count and so the model-card acceptance length. Every engine reports them
  where it can: the reference engine's own loop, TensorRT-LLM's `decoding_iter`,
  trtllm-serve's `avg_decoded_tokens_per_iter`, SGLang's `spec_verify_ct`, llama.cpp's
  `timings`.
- `steps`: per decoding step, how many tokens it emitted, as the engine's loop or the
  stream showed them. These are the detail (histogram, per-position rates, acceptance
  over the course of an answer), used only where they are real: `step_detail` says
  whether they are (`exact`: they add up to the totals; `unchecked`: the engine gave no
  totals to check them against), or are not (`disagrees`: a server merged several steps
  into one chunk; `none`: the engine never shows steps, e.g. one token per chunk).

`reconcile` is the one rule that sets `step_detail`. An engine that gives neither totals
nor per-step counts fails the turn with a clear error instead of guessing.

An engine declares what the runner needs to know about it in `EngineInfo`
(`takes_messages`, `batch_size`); nothing is probed. Heavy SDKs (torch, tensorrt_llm, …)
are imported inside the engine module that needs them, so the registry at the bottom
names modules, not classes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.config import RunConfig
    from bench.conversation import ChatFormat, Message


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    max_tokens: int
    draft_len: int
    seed: int | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What an engine declares about itself; the manifest records all of it."""

    name: str
    version: str
    details: dict[str, Any] = field(default_factory=dict)
    takes_messages: bool = False
    """True: `generate` wants the turn's chat messages too (a server that applies its own
    chat template)."""
    batch_size: int = 1
    """Turns the engine decodes together; the runner keeps at least this many in flight."""


FinishReason = Literal["stop", "length", "error"]

StepDetail = Literal["exact", "unchecked", "disagrees", "none"]
"""Whether a turn's per-step counts are real detail:

- `exact`: they add up to the engine's own totals (steps and tokens), or come from the
  engine's own loop;
- `unchecked`: the engine reported no totals to check them against; they are used as
  they are (and are the turn's step count);
- `disagrees`: they do not add up to the totals (a server merged several decoding steps
  into one chunk); the totals decide, the detail is left out;
- `none`: the engine shows no steps (one token per chunk, whatever was accepted); the
  totals decide.
"""

PER_STEP_DETAIL: frozenset[str] = frozenset({"exact", "unchecked"})


class EngineTotals(BaseModel):
    """What the engine itself counted for one request."""

    model_config = ConfigDict(frozen=True)

    output_tokens: int = Field(ge=0)
    steps: int = Field(ge=0)
    """Decoding steps (target forward passes that emitted tokens), the prefill step
    included."""
    accepted_drafts: int | None = None
    proposed_drafts: int | None = None
    source: str
    """The counter these come from, e.g. `llama.cpp timings: predicted_n,
    draft_n_accepted`."""


class Generation(BaseModel):
    """What an engine returns for one turn."""

    model_config = ConfigDict(frozen=True)

    steps: list[int]
    """Tokens emitted per step, in order, as the engine's loop or the stream showed them;
    steps[0] is the prefill step when `prefill_step`. Empty when the engine shows none."""
    prefill_step: bool = True
    """Whether the first step came from the prefill (context) iteration."""
    step_detail: StepDetail = "exact"
    totals: EngineTotals | None = None
    """The engine's own count for this request; decides `step_count` when present."""
    drafted: list[int] | None = None
    """Draft tokens proposed per step (0 for the prefill step), when the engine knows it."""
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    ttft_s: float | None = None
    """Seconds from request to the first token."""
    duration_s: float
    """Seconds from request to the last token."""
    engine_counters: dict[str, Any] = Field(default_factory=dict)
    """Everything else the engine or stream said about this request, for diagnosis."""

    @model_validator(mode="before")
    @classmethod
    def _older_records(cls, data: Any) -> Any:
        """Records written before `step_detail` existed: the reference engine's steps are
        its own loop's (exact); a stream's were never checked against totals."""
        if isinstance(data, dict) and "step_detail" not in data:
            streamed = bool((data.get("engine_counters") or {}).get("step_source"))
            data = {**data, "step_detail": "unchecked" if streamed else "exact"}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def output_tokens(self) -> int:
        """Tokens the turn emitted: the engine's count, else the sum of its steps."""
        return self.totals.output_tokens if self.totals is not None else sum(self.steps)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def step_count(self) -> int:
        """Decoding steps the turn took (the prefill step included): the engine's count,
        else the number of per-step counts. The card AL of a turn is
        output_tokens / step_count."""
        return self.totals.steps if self.totals is not None else len(self.steps)

    @property
    def has_step_detail(self) -> bool:
        """Whether `steps` may feed the histogram and the per-position figures."""
        return self.step_detail in PER_STEP_DETAIL and bool(self.steps)


def reconcile(steps: list[int], totals: EngineTotals | None) -> StepDetail:
    """The one rule for whether per-step counts are detail: they must add up to the
    engine's own totals, in tokens and in steps."""
    if totals is None:
        if not steps:
            raise ValueError("an engine must report per-step counts or per-request totals")
        return "unchecked"
    if not steps:
        return "none"
    if sum(steps) == totals.output_tokens and len(steps) == totals.steps:
        return "exact"
    return "disagrees"


class DraftLenExceeded(BenchError):
    """A step emitted more than draft_len + 1 tokens: the run measures something else."""


def check_draft_len(steps: list[int], totals: EngineTotals | None, draft_len: int) -> None:
    """Stop the run when the engine cannot be running `--draft-len`.

    Where the per-step counts are the steps (no totals, or counts that add up to them), no
    step may emit more than draft_len + 1 tokens. Where a server merged steps into chunks,
    the totals must fit instead: n tokens in s steps of at most draft_len + 1 each, with
    draft_len steps of slack because llama.cpp counts the accepted drafts of a last step
    that a stop token cut."""
    k = draft_len
    if totals is None or reconcile(steps, totals) == "exact":
        over = [e for e in steps if e > k + 1]
        if over:
            raise DraftLenExceeded(
                f"a step emitted {over[0]} tokens, more than draft_len + 1 = {k + 1}: the "
                f"engine runs another draft length than --draft-len {k}, or its stream "
                "merges iterations (stream_interval > 1) and it reports no per-request "
                "totals to tell them apart; the run is invalid"
            )
    elif totals.output_tokens > (totals.steps + k) * (k + 1):
        raise DraftLenExceeded(
            f"the engine counted {totals.output_tokens} tokens in {totals.steps} steps "
            f"({totals.source}), more than draft_len + 1 = {k + 1} per step: it runs another "
            f"draft length than --draft-len {k}; the run is invalid"
        )


class Engine(Protocol):
    """An engine, as the runner and `bench serve` use it."""

    info: EngineInfo

    async def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingParams,
        messages: list[Message] | None = None,
    ) -> Generation:
        """Run one turn to its end. `messages` is given only to an engine that declared
        `takes_messages`. An engine fault raises (the runner records a failed turn); a
        user error raises `BenchError` (the run stops)."""
        ...

    async def aclose(self) -> None:
        """Release the engine (stop a launched server, free the model)."""
        ...


def visible_text(chat: ChatFormat, token_ids: list[int], finish_reason: str) -> str:
    """The turn's text from its token ids, as the reference engine writes it: a stop token
    that ended the turn (a special token, last, with finish reason `stop`) is left out."""
    visible = token_ids
    if finish_reason == "stop" and token_ids:
        special = set(getattr(chat.tokenizer, "all_special_ids", None) or [])
        if token_ids[-1] in special | chat.stop_token_ids:
            visible = token_ids[:-1]
    return chat.decode(visible)


def cross_check_verdict(checks: dict[str, bool]) -> str:
    """`none` (the engine reported nothing to compare), `ok`, or `mismatch`."""
    return "none" if not checks else "ok" if all(checks.values()) else "mismatch"


# kind -> "module:factory"; the factory is called as factory(config, chat_format). A module
# may also define `preflight(config)`: cheap checks run before the tokenizer or model load.
ENGINES: dict[str, str] = {
    "reference": "bench.engines.reference:ReferenceEngine",
    "openai": "bench.engines.openai_compat:OpenAIEngine",
    "trtllm": "bench.engines.trtllm:TrtllmEngine",
}


def _engine_module(config: RunConfig) -> tuple[Any, str]:
    kind = config.engine.kind
    if kind not in ENGINES:
        raise BenchError(
            f"engine {kind!r} is not available in this version of bench "
            f"(available: {', '.join(sorted(ENGINES))})"
        )
    module_name, _, attr = ENGINES[kind].partition(":")
    return importlib.import_module(module_name), attr


def preflight_engine(config: RunConfig) -> None:
    """Fail early, with one sentence, when the engine cannot run here (e.g. not installed)."""
    module, _ = _engine_module(config)
    check = getattr(module, "preflight", None)
    if check is not None:
        check(config)


def create_engine(config: RunConfig, chat_format: ChatFormat) -> Engine:
    module, attr = _engine_module(config)
    return getattr(module, attr)(config, chat_format)
