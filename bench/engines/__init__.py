"""The engine contract: the one place that says what an engine is and what it returns.

An engine is the only stage that knows an inference engine exists. The runner hands it a
turn's prompt token ids (and, where it declared it wants them, the chat messages) with the
sampling settings; it returns one `Generation`: the turn's tokens and text, its finish,
and how it was decoded, from two sources that are kept apart:

- `totals`: what the engine itself counted for this request (output tokens, decoding
  steps, accepted and proposed drafts), and which counter that was: the reference
  engine's own loop, TensorRT-LLM's `decoding_iter`, trtllm-serve's
  `avg_decoded_tokens_per_iter`, SGLang's `spec_verify_ct`, vLLM's per-request
  `num_accepted_draft_tokens`, llama.cpp's `timings`.
- `steps`: per decoding step, how many tokens it emitted, as the engine's loop or the
  stream showed them.

Each source has a known bias. A stream can merge several steps into one chunk (a server
whose client lags, `stream_interval` > 1), so its chunk count is a lower bound on the
steps. A counter of accepted drafts (steps = tokens - accepted) can include drafts the
last step accepted past the turn's cut (`max_tokens` or a stop token inside the step),
so it too is a lower bound, short by at most `EngineTotals.past_cut_max`; a counter of
iterations is exact. `reconcile` is the one rule that combines them: it decides the
turn's step count (`StepCount`: exact, or a lower bound with the most it can be short
by) and whether the per-step counts are real detail (`step_detail`):

- `exact`: each chunk is one step (the counts add up to the totals, or the engine's own
  per-step record confirms them);
- `unchecked`: no totals to check them against, or totals that cannot tell a merged
  chunk from a past-cut count; used as they are;
- `disagrees`: they are not the steps (a merged chunk, a stream that carries other
  tokens than the engine counted); the totals decide, the detail is left out;
- `none`: the engine shows no steps (one token per chunk, whatever was accepted).

An engine that gives neither totals nor per-step counts fails the turn with a clear
error instead of guessing.

An engine declares what the runner needs to know about it in `EngineInfo`
(`takes_messages`, `batch_size`); nothing is probed. Heavy SDKs (torch, tensorrt_llm, …)
are imported inside the engine module that needs them, so the registry at the bottom
names modules, not classes.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
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
"""Whether a turn's per-step counts are real detail (see the module docstring)."""

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
    past_cut_max: int = Field(default=0, ge=0)
    """The most drafts past the turn's cut that `accepted_drafts` may include, so the most
    `steps` may be short by: 0 where the engine counts its iterations (or its drafting is
    known to stop at the cut); where steps = tokens - accepted drafts and the engine counts
    what its last step accepted beyond `max_tokens` or a stop token, up to the draft
    length (fewer where the engine says what its last drafting step accepted)."""


class StepCount(BaseModel):
    """A turn's step count as `reconcile` decided it from the stream and the totals."""

    model_config = ConfigDict(frozen=True)

    steps: int = Field(ge=0)
    """The steps taken, the prefill step included: exact when `slack` is 0, else the
    largest lower bound the sources give."""
    slack: int = Field(default=0, ge=0)
    """0: `steps` is exact. s > 0: the true count lies in [steps, steps + s]."""
    past_cut: int = Field(default=0, ge=0)
    """Drafts the engine counted as accepted past the turn's cut, where the count is exact
    (the difference between its tokens - accepted and the steps)."""
    basis: str
    """Which source decided, in words."""
    note: str | None = None
    """What the sources disagreed on, in words (merged chunks, drafts counted past the
    cut, a stream that carries other tokens); None when they agreed."""

    @property
    def exact(self) -> bool:
        return self.slack == 0


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
    """The engine's own count for this request."""
    counted: StepCount | None = None
    """The turn's step count decided by `reconcile` from `steps` and `totals`; None in
    records written before it existed (their count is the totals', else the steps')."""
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
        """Decoding steps the turn took (the prefill step included), as `reconcile`
        decided them (a lower bound when `step_slack` > 0). The card AL of a turn is
        output_tokens / step_count."""
        if self.counted is not None:
            return self.counted.steps
        return self.totals.steps if self.totals is not None else len(self.steps)

    @property
    def step_slack(self) -> int:
        """0: `step_count` is exact; s > 0: the true count is at most step_count + s."""
        return self.counted.slack if self.counted is not None else 0

    @property
    def has_step_detail(self) -> bool:
        """Whether `steps` may feed the histogram and the per-position figures."""
        return self.step_detail in PER_STEP_DETAIL and bool(self.steps)


def stream_lower_bound(steps: Sequence[int], draft_len: int) -> int:
    """The fewest steps a stream's chunks can hold: a chunk of e tokens holds at least
    ceil(e / (k + 1)) steps; the first chunk's first token is the prefill step's alone."""
    if not steps:
        return 0
    width = draft_len + 1
    first = 1 + -(-(steps[0] - 1) // width)
    return first + sum(-(-e // width) for e in steps[1:])


def chunks_match_record(
    steps: Sequence[int], drafting: Sequence[int], totals: EngineTotals
) -> bool:
    """Whether each streamed chunk is one step, by the engine's own per-step record.

    `drafting` lists, in order, the drafts the engine accepted at each step that drafted
    (steps that proposed nothing, e.g. an n-gram lookup that found no match, are not in
    it; vLLM's `per_step_accepted`). If each chunk is one step, its chunks of two or more
    tokens are exactly the drafting steps that accepted something, in order, each
    emitting accepted + 1; only the last step may emit fewer, cut by `max_tokens` or a
    stop token, and the drafts it accepted beyond the cut are the difference between the
    chunk count and tokens - accepted. A merged chunk changes one of these (it adds,
    removes or enlarges an entry), so it cannot pass.
    """
    accepted_total = totals.accepted_drafts
    if not steps or steps[0] != 1 or accepted_total is None or sum(drafting) != accepted_total:
        return False
    decode = list(steps[1:])
    past_cut = len(steps) - (totals.output_tokens - accepted_total)
    if past_cut < 0 or len(steps) > totals.steps + totals.past_cut_max:
        return False
    if len(decode) < len(drafting):
        return False
    multi = [e - 1 for e in decode if e >= 2]
    accepted = [a for a in drafting if a >= 1]
    if past_cut == 0:
        return multi == accepted
    if not drafting or drafting[-1] < past_cut or not decode:
        return False
    last_emitted = drafting[-1] + 1 - past_cut
    if decode[-1] != last_emitted:
        return False
    head = multi[:-1] if last_emitted >= 2 else multi
    return head == accepted[:-1]


def reconcile(
    steps: Sequence[int],
    totals: EngineTotals | None,
    draft_len: int,
    drafting: Sequence[int] | None = None,
) -> tuple[StepDetail, StepCount]:
    """The one rule for a turn's step count and whether its per-step counts are detail.

    Both sources are lower bounds: the stream's chunks (merging only removes chunks; a
    chunk larger than k + 1 tokens holds several steps) and the totals' steps (short by
    at most `past_cut_max`, which is also the only upper bound). The count is the larger
    lower bound; it is exact where it meets the upper bound, or where the engine's own
    per-step record (`drafting`) shows each chunk is one step.
    """
    if totals is None:
        if not steps:
            raise ValueError("an engine must report per-step counts or per-request totals")
        return "unchecked", StepCount(
            steps=len(steps), basis="stream: one chunk per step (no engine totals to check)"
        )
    low, high = totals.steps, totals.steps + totals.past_cut_max
    counter = f"engine totals ({totals.source})"
    # Steps as tokens - accepted drafts: the chunks beyond it are drafts counted past the cut.
    net = low if totals.accepted_drafts is None else totals.output_tokens - totals.accepted_drafts

    def by_the_counter(detail: StepDetail, note: str | None) -> tuple[StepDetail, StepCount]:
        return detail, StepCount(steps=low, slack=high - low, basis=counter, note=note)

    def one_step_per_chunk(basis: str) -> tuple[StepDetail, StepCount]:
        past = len(steps) - net
        return "exact", StepCount(
            steps=len(steps), past_cut=past, basis=basis, note=_past_cut_note(past)
        )

    if not steps:
        past = high - low
        return by_the_counter(
            "none",
            f"the engine may count up to {past} drafts accepted past the cut" if past else None,
        )
    if sum(steps) != totals.output_tokens:
        return by_the_counter(
            "disagrees",
            f"the stream carries {sum(steps)} tokens, the engine counted {totals.output_tokens}",
        )
    chunks = len(steps)
    floor = stream_lower_bound(steps, draft_len)
    merged = floor > chunks
    if chunks > high or floor > high:
        return by_the_counter(
            "disagrees",
            f"the stream's {chunks} chunks need at least {max(chunks, floor)} steps at draft "
            f"length {draft_len}, more than the {high} the engine can have taken",
        )
    if not merged and drafting is not None and chunks_match_record(steps, drafting, totals):
        return one_step_per_chunk(
            "stream: one chunk per step, confirmed by the engine's per-step record"
        )
    count = max(floor, low)
    if not merged and chunks == high:
        return one_step_per_chunk("stream: one chunk per step (as many as the engine allows)")
    if not merged and chunks == count:
        return "unchecked", StepCount(
            steps=count,
            slack=high - count,
            basis="stream chunks (a lower bound)",
            note=f"{chunks} chunks against {low} steps by the engine's count: the engine may "
            f"count up to {high - low} drafts accepted past the cut, and the stream cannot "
            "show whether it merged steps",
        )
    past = f" (the engine may count up to {high - low} drafts past the cut)" if high > low else ""
    return "disagrees", StepCount(
        steps=count,
        slack=high - count,
        basis=counter,
        note=f"merged: the stream has {chunks} chunks for at least {count} steps{past}",
    )


def _past_cut_note(past: int) -> str | None:
    if not past:
        return None
    drafts = "draft" if past == 1 else "drafts"
    return f"the engine's accepted-draft count includes {past} {drafts} accepted past the cut"


class DraftLenExceeded(BenchError):
    """A step emitted more than draft_len + 1 tokens: the run measures something else."""


def check_draft_len(
    steps: Sequence[int], detail: StepDetail, counted: StepCount, output_tokens: int, draft_len: int
) -> None:
    """Stop the run when the engine cannot be running `--draft-len`.

    Where the per-step counts are the steps (`exact`, `unchecked`), no step may emit more
    than draft_len + 1 tokens. Otherwise the turn's tokens must fit in the most steps the
    sources allow, at draft_len + 1 tokens each."""
    k = draft_len
    if detail in PER_STEP_DETAIL:
        over = [e for e in steps if e > k + 1]
        if over:
            raise DraftLenExceeded(
                f"a step emitted {over[0]} tokens, more than draft_len + 1 = {k + 1}: the "
                f"engine runs another draft length than --draft-len {k}, or its stream "
                "merges iterations (stream_interval > 1) and it reports no per-request "
                "totals to tell them apart; the run is invalid"
            )
        return
    most = counted.steps + counted.slack
    streamed = sum(steps) == output_tokens and stream_lower_bound(steps, k) > most
    if output_tokens > most * (k + 1) or streamed:
        raise DraftLenExceeded(
            f"the engine counted {output_tokens} tokens in at most {most} steps "
            f"({counted.basis}), more than draft_len + 1 = {k + 1} per step"
            + (" as its stream shows them" if streamed else "")
            + f": it runs another draft length than --draft-len {k}; the run is invalid"
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
