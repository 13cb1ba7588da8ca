"""Reasoning and answer apart: a turn's steps split at the reasoning/answer boundary.

A thinking model writes its reasoning first (`<think>…</think>`, or gpt-oss's analysis
channel) and then its answer; the two draft very differently. The runner records, per
turn, how many output tokens the reasoning took (`TurnRecord.reasoning_tokens`, the close
marker included; 0: no reasoning; all of them: reasoning cut before its end). Here each
step of a turn is assigned to one segment:

- a step belongs to the segment its **first token** lies in: a step that starts in the
  reasoning and emits tokens past the boundary (it straddles it) is a reasoning step. This
  is the rule the per-position figures use (a step is placed where it starts), and the
  decision to accept those drafts was made from reasoning context.

A segment's tokens are then Σ e over its steps (a straddling step's answer tokens count
with the reasoning). The segment records built here carry the same fields as any turn
record, so every figure of the segments comes from the one implementation in
`bench.metrics`.

Which turns are split (`turn_status`):
- `split`: reasoning and per-step detail: every step assigned;
- `all_reasoning`: the reasoning never closed (cut by max_tokens): every step is
  reasoning, which needs no per-step detail (a totals-only turn is split honestly too);
- `no_reasoning`: the turn has no reasoning; it is left out of the split and said so;
- `not_split`: reasoning that closed, but no per-step detail to place the steps (a
  totals-only engine or a merged stream), or a record written before the boundary was
  recorded (its text still tells `no_reasoning` and `all_reasoning` apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from bench.conversation import reasoning_end
from bench.records import TurnRecord

Segment = Literal["reasoning", "answer"]
SEGMENTS: tuple[str, ...] = ("reasoning", "answer", "both")
"""The figures' groups: each segment alone, and both together over the same turns."""
TurnStatus = Literal["split", "all_reasoning", "no_reasoning", "not_split"]

STRADDLE_RULE = (
    "a step belongs to the segment its first token lies in (a step that starts in the "
    "reasoning and emits past the boundary is a reasoning step)"
)


def split_steps(steps: Sequence[int], boundary: int) -> tuple[list[int], list[int]]:
    """Indices of the reasoning steps and of the answer steps of one turn, when the first
    `boundary` output tokens are reasoning: step i starts at position p_i = Σ_{j<i} e_j and
    is reasoning when p_i < boundary (so a straddling step is reasoning)."""
    reasoning, answer, position = [], [], 0
    for index, e in enumerate(steps):
        (reasoning if position < boundary else answer).append(index)
        position += e
    return reasoning, answer


def turn_status(record: TurnRecord) -> TurnStatus:
    """How a successful turn enters the split (see the module docstring)."""
    boundary = record.reasoning_tokens
    if boundary is None:  # a record written before the boundary was: read its text
        end = reasoning_end(record.text)
        if end == 0:
            return "no_reasoning"
        return "all_reasoning" if end == len(record.text) else "not_split"
    if boundary == 0:
        return "no_reasoning"
    if boundary >= record.output_tokens:
        return "all_reasoning"
    return "split" if record.has_step_detail else "not_split"


def _part(record: TurnRecord, indices: list[int]) -> TurnRecord | None:
    """The turn restricted to the steps at `indices` (consecutive), as a record every metric
    reads like a turn: its own steps, prefill flag and drafts; no totals (the steps are the
    detail). None when there are no such steps."""
    if not indices:
        return None
    first, last = indices[0], indices[-1] + 1
    return record.model_copy(
        update={
            "steps": list(record.steps[first:last]),
            "prefill_step": record.prefill_step and first == 0,
            "totals": None,
            "drafted": None if record.drafted is None else list(record.drafted[first:last]),
            "token_ids": [],
            "text": "",
        }
    )


def segment_records(record: TurnRecord) -> dict[str, TurnRecord]:
    """The turn's segments as records ("reasoning", "answer", "both"), for a turn whose
    status is `split` or `all_reasoning`; {} for any other. "both" is the turn itself."""
    status = turn_status(record)
    if status == "all_reasoning":
        return {"reasoning": record, "both": record}
    if status != "split":
        return {}
    assert record.reasoning_tokens is not None
    reasoning, answer = split_steps(record.steps, record.reasoning_tokens)
    parts = {"reasoning": _part(record, reasoning), "answer": _part(record, answer)}
    return {**{k: v for k, v in parts.items() if v is not None}, "both": record}
