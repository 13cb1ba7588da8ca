"""Every number of docs/metrics.md, computed in one place from turn records.

Input, per (question, turn): the tokens it emitted (n) and the decoding steps it took (s),
the engine's own totals where it reported them, and, where real, the per-step
emitted-token counts (the first step of a turn is the prefill step, e = 1, when the record
says so; the rest are decode steps, 1 <= e <= k + 1). The card AL, decode AL, pooled AL
and draft acceptance rate need only n and s, so every successful turn counts for them.
The histogram and the per-position rates need each step, so they rest only on turns
whose per-step detail is real (`Generation.has_step_detail`), and say how many those are.

Output: per question and per group of questions (a category, or all), the model-card
figure and the other conventions beside it, labelled; `bench.summary` assembles them, with
the sanity signals, into the run's `Summary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from bench.records import TurnRecord
from bench.segments import SEGMENTS, STRADDLE_RULE, segment_records, turn_status
from bench.speed import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
)

if TYPE_CHECKING:
    pass


# --- the formulas, on plain lists ------------------------------------------------------


def acceptance_length_of_totals(output_tokens: int, steps: int) -> float:
    """Card AL of a turn or question: tokens / steps (= Σ e / number of steps, prefill
    steps included, wherever its per-step counts add up to the totals)."""
    return output_tokens / steps


def decode_steps_of(turn_steps: Sequence[int], prefill_step: bool) -> list[int]:
    """The decode steps of one turn: all but the first when the first is the prefill."""
    return list(turn_steps[1:]) if prefill_step else list(turn_steps)


def histogram(decode_steps: Iterable[int], draft_len: int) -> list[int]:
    """Decode steps with e = 1, 2, …, k + 1 (index i counts e = i + 1); e > k + 1 is left
    out here and reported by the `step_exceeds_draft_len` signal."""
    counts = [0] * (draft_len + 1)
    for e in decode_steps:
        if 1 <= e <= draft_len + 1:
            counts[e - 1] += 1
    return counts


def joint_acceptance(hist: Sequence[int]) -> list[float | None]:
    """Position j = 1..k: share of decode steps with e >= j + 1 (drafts 1..j accepted)."""
    total = sum(hist)
    return [sum(hist[j:]) / total if total else None for j in range(1, len(hist))]


def conditional_acceptance(hist: Sequence[int]) -> list[float | None]:
    """Position j = 1..k: P(e >= j + 1 | e >= j), draft j accepted given 1..j-1 were."""
    rates: list[float | None] = []
    for j in range(1, len(hist)):
        reached = sum(hist[j - 1 :])
        rates.append(sum(hist[j:]) / reached if reached else None)
    return rates


def pooled_decode_acceptance_length(block: RateBlock) -> float | None:
    """Σ decode tokens / Σ decode steps over a group: each turn's first token (the prefill
    step's) left out of both. What `predicted_decode_acceptance_length` predicts."""
    if not block.decode_steps:
        return None
    prefill = block.steps - block.decode_steps
    return (block.output_tokens - prefill) / block.decode_steps


def predicted_decode_acceptance_length(
    joint: Sequence[float | None], draft_len: int
) -> float | None:
    """Decode AL a run at a larger draft length predicts for `draft_len`: 1 + Σ_{j ≤ k}
    joint acceptance at position j. With greedy chain drafting the drafts at positions
    1..j do not depend on k, so a step that accepted its first j drafts at the larger k
    would have accepted min(j, k) of them; the prediction assumes acceptance does not
    depend on where in the answer a step starts (the larger-k run starts its steps
    elsewhere)."""
    if draft_len > len(joint) or any(v is None for v in joint[:draft_len]):
        return None
    return 1.0 + sum(v for v in joint[:draft_len] if v is not None)


def draft_acceptance_rate(decode_steps: Sequence[int], draft_len: int) -> float | None:
    """Σ (e - 1) / (k × decode steps): accepted drafts over k proposed per decode step."""
    accepted = sum(e - 1 for e in decode_steps)
    return draft_acceptance_rate_of_totals(accepted, len(decode_steps), draft_len)


def draft_acceptance_rate_of_totals(
    accepted: int, decode_steps: int, draft_len: int
) -> float | None:
    """The same from totals: Σ (e - 1) over decode steps is the accepted drafts,
    tokens - steps."""
    if not decode_steps or draft_len < 1:
        return None
    return accepted / (draft_len * decode_steps)


def bootstrap_ci95(
    groups: Sequence[Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """95 % percentile interval of the mean of all values, resampling questions with
    replacement inside each group (a category; stratified when there are several).

    When any group has fewer than 2 values the values are resampled as one group instead:
    a question alone in its stratum never varies, and would give an interval of zero width
    that calls any difference real."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return None
    if len(arrays) > 1 and any(len(a) < 2 for a in arrays):
        arrays = [np.concatenate(arrays)]
    rng = np.random.default_rng(seed)
    n_total = sum(len(a) for a in arrays)
    sums = np.zeros(resamples)
    for values in arrays:
        picks = rng.integers(0, len(values), size=(resamples, len(values)))
        sums += values[picks].sum(axis=1)
    means = sums / n_total
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def step_positions(turn_steps: Sequence[int]) -> list[int]:
    """Position of each step in its response: tokens the turn emitted before that step
    (0 for the first step, then the running Σ e)."""
    positions, emitted = [], 0
    for e in turn_steps:
        positions.append(emitted)
        emitted += e
    return positions


@dataclass(frozen=True)
class PositionBucket:
    start_tokens: int
    """First response position of the bucket: the bucket holds positions
    [start_tokens, start_tokens + bucket_tokens)."""
    decode_steps: int
    decode_acceptance_length: float
    """Σ e / decode steps of the steps that start in the bucket (pooled over turns)."""


def decode_acceptance_length_by_position(
    turns: Iterable[tuple[Sequence[int], bool]], bucket_tokens: int
) -> list[PositionBucket]:
    """Does acceptance fall off in long answers? Decode steps of many turns, grouped by
    where they start in their response (`step_positions` // bucket_tokens), each bucket's
    pooled decode AL = Σ e / steps over the steps that start in it.

    `turns` holds (steps, prefill_step) per turn; prefill steps are left out (they always
    emit 1 and would pull the first bucket down). Only buckets with steps are returned. The
    last step of a turn may be cut short by EOS or max_tokens, so buckets where many answers
    end read slightly low.
    """
    if bucket_tokens < 1:
        raise ValueError("bucket_tokens must be at least 1")
    sums: dict[int, list[int]] = {}
    for steps, prefill_step in turns:
        pairs = list(zip(step_positions(steps), steps))
        for position, e in pairs[1:] if prefill_step else pairs:
            tally = sums.setdefault(position // bucket_tokens, [0, 0])
            tally[0] += e
            tally[1] += 1
    return [
        PositionBucket(bucket * bucket_tokens, count, total / count)
        for bucket, (total, count) in sorted(sums.items())
    ]


@dataclass(frozen=True)
class PairedDifference:
    shared_questions: int
    mean_difference: float | None
    """Mean over shared questions of (other AL − base AL)."""
    ci95: tuple[float, float] | None
    """Paired bootstrap 95 % interval of `mean_difference`."""

    @property
    def exceeds_noise(self) -> bool | None:
        """True when the interval leaves out 0; None when there is no interval."""
        if self.ci95 is None:
            return None
        return self.ci95[0] > 0 or self.ci95[1] < 0


def paired_difference_ci95(
    base: dict[int, float],
    other: dict[int, float],
    strata: dict[int, str] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedDifference:
    """Is run B's AL different from run A's beyond question-sampling noise?

    Paired bootstrap over the questions both runs counted: d_q = other[q] − base[q] per
    shared question id q, then the percentile 95 % interval of the mean of d, resampling
    questions with replacement (within each stratum, e.g. category, when `strata` maps
    question id to one; the same stratified scheme as `bootstrap_ci95`). Pairing removes
    the spread between questions that both runs share, so it sees smaller real differences
    than comparing the two runs' own intervals. A difference "exceeds the noise" when the
    interval leaves out 0. With fewer than 2 shared questions there is no interval.

    A stratum with a single question has nothing to resample and would add no spread
    (every question alone in its category gives an interval of zero width, which would
    call any difference real); when any stratum has fewer than 2 shared questions the
    questions are resampled as one group instead.
    """
    shared = sorted(set(base) & set(other))
    if not shared:
        return PairedDifference(0, None, None)
    groups: dict[str, list[float]] = {}
    for qid in shared:
        key = strata.get(qid, "") if strata else ""
        groups.setdefault(key, []).append(other[qid] - base[qid])
    differences = [d for g in groups.values() for d in g]
    ci = bootstrap_ci95(list(groups.values()), resamples, seed) if len(shared) >= 2 else None
    return PairedDifference(len(shared), float(np.mean(differences)), ci)


# --- per question ----------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionSteps:
    """Every turn of one question, and what each figure reads from them."""

    question_id: int
    category: str
    turns: tuple[TurnRecord, ...]

    def has_turn(self, turn: int | None) -> bool:
        return turn is None or turn <= len(self.turns)

    def _chosen(self, turn: int | None) -> tuple[TurnRecord, ...]:
        return self.turns if turn is None else (self.turns[turn - 1],)

    def output_tokens(self, turn: int | None = None) -> int:
        return sum(r.output_tokens for r in self._chosen(turn))

    def step_count(self, turn: int | None = None) -> int:
        """Steps taken: the engine's totals where it reported them, the prefill included."""
        return sum(r.step_count for r in self._chosen(turn))

    def step_slack(self, turn: int | None = None) -> int:
        """The most steps the counts may be short by (0: every turn's count is exact)."""
        return sum(r.step_slack for r in self._chosen(turn))

    def prefill_steps(self, turn: int | None = None) -> int:
        """Prefill steps (one per turn that has one; each emits one token)."""
        return sum(1 for r in self._chosen(turn) if r.prefill_step and r.step_count)

    def acceptance_length(self, turn: int | None = None) -> float:
        return acceptance_length_of_totals(self.output_tokens(turn), self.step_count(turn))

    def decode_acceptance_length(self, turn: int | None = None) -> float | None:
        prefill = self.prefill_steps(turn)
        steps = self.step_count(turn) - prefill
        return (self.output_tokens(turn) - prefill) / steps if steps > 0 else None

    def detail_turns(self, turn: int | None = None) -> list[TurnRecord]:
        """The turns whose per-step counts are real detail."""
        return [r for r in self._chosen(turn) if r.has_step_detail]

    def steps(self, turn: int | None = None) -> list[int]:
        """Per-step counts of the turns with real detail."""
        return [e for record in self.detail_turns(turn) for e in record.steps]

    def decode_steps(self, turn: int | None = None) -> list[int]:
        """Decode-step counts of the turns with real detail."""
        return [
            e for r in self.detail_turns(turn) for e in decode_steps_of(r.steps, r.prefill_step)
        ]

    def proposed(self, turn: int | None = None) -> tuple[int, int] | None:
        """(accepted, proposed) drafts where the engine says what it proposed for every
        turn; None otherwise."""
        accepted = proposed = 0
        for r in self._chosen(turn):
            if r.totals is not None and r.totals.proposed_drafts is not None:
                accepted += r.totals.accepted_drafts or 0
                proposed += r.totals.proposed_drafts
            elif r.drafted is not None:
                accepted += sum(e - 1 for e in decode_steps_of(r.steps, r.prefill_step))
                proposed += sum(decode_steps_of(r.drafted, r.prefill_step))
            else:
                return None
        return accepted, proposed


class QuestionSummary(BaseModel):
    question_id: int
    category: str
    acceptance_length: float
    turn1_acceptance_length: float
    turn2_acceptance_length: float | None
    """None for a question of one turn."""
    decode_acceptance_length: float | None
    steps: int
    output_tokens: int
    finish_reasons: tuple[str, ...]
    step_detail_turns: int = 2
    """How many of its turns have real per-step detail."""


# --- per group of questions ------------------------------------------------------------


class RateBlock(BaseModel):
    """Every figure for one group of questions (a category or all) and turn selection."""

    n_questions: int
    acceptance_length: float | None
    """Card AL: mean over questions of tokens / steps (both turns pooled per question)."""
    ci95: tuple[float, float] | None
    """Bootstrap 95 % interval of `acceptance_length` over questions."""
    decode_acceptance_length: float | None
    """Mean over questions of the decode-steps-only AL."""
    pooled_acceptance_length: float | None
    """Σ tokens / Σ steps over the group (token-weighted), prefill included."""
    draft_acceptance_rate: float | None
    """Σ accepted drafts / (k × decode steps)."""
    proposed_draft_acceptance_rate: float | None
    """Σ accepted / Σ drafts the engine actually proposed; null when the engine cannot say."""
    histogram: list[int]
    """Decode steps with e = 1 … k+1, over the turns with per-step detail only."""
    joint_acceptance: list[float | None]
    """Per position, over the turns with per-step detail only."""
    conditional_acceptance: list[float | None]
    """Per position, over the turns with per-step detail only."""
    steps: int
    decode_steps: int
    output_tokens: int
    turn_count: int = 0
    """Successful turns the group counts."""
    step_detail_turns: int = 0
    """Of those, the turns whose per-step counts are real detail: the histogram and the
    per-position rates rest on these alone (0: the engine gives totals only)."""
    step_bound_turns: int = 0
    """Of those, the turns whose step count is a lower bound, not exact (the engine's
    sources could not pin it down): their AL is an upper bound."""
    acceptance_length_min: float | None = None
    """The card AL if every bounded turn took the most steps its sources allow; None when
    every turn's count is exact."""


def _rate_block(
    questions: Sequence[QuestionSteps], draft_len: int, turn: int | None, strata: bool
) -> RateBlock:
    questions = [q for q in questions if q.has_turn(turn)]
    per_question = [q.acceptance_length(turn) for q in questions]
    decode_per_question = [q.decode_acceptance_length(turn) for q in questions]
    decode_values = [v for v in decode_per_question if v is not None]
    tokens = sum(q.output_tokens(turn) for q in questions)
    steps = sum(q.step_count(turn) for q in questions)
    decode_steps = steps - sum(q.prefill_steps(turn) for q in questions)
    proposed = [q.proposed(turn) for q in questions]
    hist = histogram([e for q in questions for e in q.decode_steps(turn)], draft_len)
    if strata:
        by_category: dict[str, list[float]] = {}
        for q, value in zip(questions, per_question):
            by_category.setdefault(q.category, []).append(value)
        groups: list[list[float]] = list(by_category.values())
    else:
        groups = [per_question]
    proposed_rate = None
    if proposed and all(p is not None for p in proposed):
        total_proposed = sum(p[1] for p in proposed if p is not None)
        if total_proposed:
            proposed_rate = sum(p[0] for p in proposed if p is not None) / total_proposed
    return RateBlock(
        n_questions=len(questions),
        acceptance_length=float(np.mean(per_question)) if per_question else None,
        ci95=bootstrap_ci95(groups),
        decode_acceptance_length=float(np.mean(decode_values)) if decode_values else None,
        pooled_acceptance_length=tokens / steps if steps else None,
        draft_acceptance_rate=draft_acceptance_rate_of_totals(
            tokens - steps, decode_steps, draft_len
        ),
        proposed_draft_acceptance_rate=proposed_rate,
        histogram=hist,
        joint_acceptance=joint_acceptance(hist),
        conditional_acceptance=conditional_acceptance(hist),
        steps=steps,
        decode_steps=decode_steps,
        output_tokens=tokens,
        turn_count=sum(len(q._chosen(turn)) for q in questions),
        step_detail_turns=sum(len(q.detail_turns(turn)) for q in questions),
        step_bound_turns=sum(1 for q in questions for r in q._chosen(turn) if r.step_slack),
        acceptance_length_min=_lowest_acceptance_length(questions, turn),
    )


def _lowest_acceptance_length(questions: Sequence[QuestionSteps], turn: int | None) -> float | None:
    """Card AL with every bounded count at its most steps; None when all are exact."""
    if not any(q.step_slack(turn) for q in questions):
        return None
    return float(
        np.mean(
            [
                acceptance_length_of_totals(
                    q.output_tokens(turn), q.step_count(turn) + q.step_slack(turn)
                )
                for q in questions
            ]
        )
    )


class GroupSummary(RateBlock):
    turns: dict[str, RateBlock]
    """Each turn alone ("1", "2", … up to the longest question; always "1" and "2"), each
    with the same figures over the questions that have that turn."""


def summarize_group(
    questions: Sequence[QuestionSteps], draft_len: int, strata: bool = False
) -> GroupSummary:
    block = _rate_block(questions, draft_len, None, strata)
    longest = max([2, *(len(q.turns) for q in questions)])
    turns = {str(t): _rate_block(questions, draft_len, t, strata) for t in range(1, longest + 1)}
    return GroupSummary(**block.model_dump(), turns=turns)


# --- reasoning and answer apart -------------------------------------------------------


class SegmentGroup(BaseModel):
    """One group's figures for the reasoning, the answer, and both together (over the same
    split turns), each a `RateBlock` over the questions with steps in that segment."""

    segments: dict[str, RateBlock]
    split_turns: int
    """Turns whose steps were assigned (with reasoning, and per-step detail or all of it
    reasoning)."""
    no_reasoning_turns: int
    """Turns with no reasoning: left out of the split."""
    not_split_turns: int
    """Turns with reasoning whose steps could not be placed (no per-step detail)."""


class SegmentSummary(BaseModel):
    rule: str
    """How a step that straddles the boundary is assigned."""
    overall: SegmentGroup
    categories: dict[str, SegmentGroup]


def _segment_group(
    questions: Sequence[QuestionSteps], draft_len: int, strata: bool
) -> SegmentGroup:
    statuses = [turn_status(r) for q in questions for r in q.turns]
    blocks: dict[str, RateBlock] = {}
    for segment in SEGMENTS:
        parts = []
        for q in questions:
            records = [p for r in q.turns if (p := segment_records(r).get(segment))]
            if records:
                parts.append(QuestionSteps(q.question_id, q.category, tuple(records)))
        blocks[segment] = _rate_block(parts, draft_len, None, strata)
    return SegmentGroup(
        segments=blocks,
        split_turns=sum(s in ("split", "all_reasoning") for s in statuses),
        no_reasoning_turns=statuses.count("no_reasoning"),
        not_split_turns=statuses.count("not_split"),
    )


def summarize_segments(
    questions: Sequence[QuestionSteps], draft_len: int, categories: Sequence[str]
) -> SegmentSummary:
    """Reasoning and answer apart (docs/metrics.md): every counted turn's steps split at
    its reasoning boundary, per category and overall, with the same figures as the run."""
    return SegmentSummary(
        rule=STRADDLE_RULE,
        overall=_segment_group(questions, draft_len, strata=True),
        categories={
            c: _segment_group([q for q in questions if q.category == c], draft_len, False)
            for c in categories
        },
    )
