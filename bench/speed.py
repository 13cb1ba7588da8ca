"""Speed beside acceptance: every timing figure of docs/metrics.md "Speed", in one place.

Input, per successful (question, turn): what the engine timed (`ttft_s`, seconds from
sending the turn to its first token; `duration_s`, to its last, the turn time t), the
tokens it emitted (n) and the decoding steps it took (s, the engine's own totals, the
prefill step included); per run: the wall time of its decoding phase and the output
tokens decoded in it (the manifest's `timing`). Nothing here runs while decoding: the
figures are derived from records that were written anyway.

A turn without timing (`ttft_s` None: the engine could not see its first token) is
counted and listed, never averaged in; its question is left out of every speed figure.
Intervals are the AL's: percentile bootstrap over questions, stratified by category for
overall (`bench.metrics.bootstrap_ci95`'s scheme). Speedups pair two runs on the questions
both timed and bootstrap the ratio of their means (`speedup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

# Every bootstrap of the summary (AL and speed) uses these; bench.metrics takes them here.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

# --- the formulas, one turn or one question at a time ----------------------------------


def time_per_output_token_s(turn_s: float, ttft_s: float, output_tokens: int) -> float | None:
    """TPOT: (turn time − TTFT) / (n − 1), the seconds between tokens after the first;
    None for a turn of fewer than 2 tokens."""
    return (turn_s - ttft_s) / (output_tokens - 1) if output_tokens > 1 else None


def request_tokens_per_s(output_tokens: int, turn_s: float) -> float | None:
    """Request output tokens/s: n / turn time (TTFT included); None for a zero time."""
    return output_tokens / turn_s if turn_s > 0 else None


def mean_step_s(turn_s: float, ttft_s: float, steps: int) -> float | None:
    """Mean step time: (turn time − TTFT) / (steps − 1), the seconds per decoding step
    after the prefill step (which the TTFT covers); None for a turn of fewer than 2 steps."""
    return (turn_s - ttft_s) / (steps - 1) if steps > 1 else None


def question_tokens_per_s(output_tokens: Sequence[int], turn_s: Sequence[float]) -> float | None:
    """A question's tokens/s over its turns: (n₁ + n₂) / (t₁ + t₂) (token-weighted, as
    the question AL pools both turns); None for a zero time."""
    total_s = sum(turn_s)
    return sum(output_tokens) / total_s if total_s > 0 else None


def aggregate_tokens_per_s(output_tokens: int, decode_s: float) -> float | None:
    """The run's aggregate output tokens/s at its concurrency: output tokens / wall time of
    the decoding phase (turns overlap, so this is not the mean of the request rates)."""
    return output_tokens / decode_s if decode_s > 0 else None


# --- one question -----------------------------------------------------------------------


@dataclass(frozen=True)
class TimedTurn:
    """What the speed figures read from one successful turn."""

    output_tokens: int
    steps: int
    ttft_s: float
    turn_s: float


def question_figures(turns: Sequence[TimedTurn]) -> dict[str, float | None]:
    """The four figures of one question over the given turns (one turn: that turn's own
    figures). Over two turns each pools them as tokens/s does: TTFT is the mean of the
    turns' TTFTs, TPOT = Σ (t − TTFT) / Σ (n − 1), step time = Σ (t − TTFT) / Σ (s − 1)."""
    after_first_s = sum(t.turn_s - t.ttft_s for t in turns)
    gaps = sum(t.output_tokens - 1 for t in turns)
    later_steps = sum(t.steps - 1 for t in turns)
    return {
        "tokens_per_s": question_tokens_per_s(
            [t.output_tokens for t in turns], [t.turn_s for t in turns]
        ),
        "ttft_s": sum(t.ttft_s for t in turns) / len(turns),
        "tpot_s": after_first_s / gaps if gaps > 0 else None,
        "mean_step_s": after_first_s / later_steps if later_steps > 0 else None,
    }


# --- groups of questions ----------------------------------------------------------------


def _resampled_positions(
    keys: Sequence[int], strata: dict[int, str] | None, resamples: int, seed: int
) -> np.ndarray:
    """(resamples, len(keys)) positions into `keys`, drawn with replacement within each
    stratum; as one group when any stratum has fewer than 2 (a question alone never varies
    and would shrink the interval to zero width)."""
    groups: dict[str, list[int]] = {}
    for position, qid in enumerate(keys):
        groups.setdefault(strata.get(qid, "") if strata else "", []).append(position)
    arrays = [np.asarray(g) for g in groups.values()]
    if len(arrays) > 1 and any(len(a) < 2 for a in arrays):
        arrays = [np.concatenate(arrays)]
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [g[rng.integers(0, len(g), size=(resamples, len(g)))] for g in arrays], axis=1
    )


class Figure(BaseModel):
    """One speed figure of a group: the mean over its questions and its interval."""

    mean: float | None
    ci95: tuple[float, float] | None
    """Percentile 95 % bootstrap interval of `mean`, questions resampled (stratified)."""
    n_questions: int
    """Questions the mean is over (a question whose figure is undefined, e.g. TPOT of a
    one-token answer, is left out of that figure alone)."""


def figure(
    values: dict[int, float | None],
    strata: dict[int, str] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Figure:
    """Mean over questions of one figure with its bootstrap interval (no interval from
    fewer than 2 questions)."""
    present = {q: v for q, v in values.items() if v is not None}
    if not present:
        return Figure(mean=None, ci95=None, n_questions=0)
    keys = sorted(present)
    array = np.asarray([present[q] for q in keys], dtype=float)
    ci = None
    if len(keys) >= 2:
        picks = _resampled_positions(keys, strata, resamples, seed)
        low, high = np.percentile(array[picks].mean(axis=1), [2.5, 97.5])
        ci = (float(low), float(high))
    mean = float(array.mean())
    return Figure(mean=mean, ci95=ci, n_questions=len(present))


class SpeedBlock(BaseModel):
    """The speed figures of one group of questions (a category or all) and turn selection:
    each the mean over questions of the question's figure, with its interval."""

    tokens_per_s: Figure
    """Question tokens/s: (n₁ + n₂) / (t₁ + t₂), or n / t for one turn."""
    ttft_s: Figure
    tpot_s: Figure
    mean_step_s: Figure


FIGURES = ("tokens_per_s", "ttft_s", "tpot_s", "mean_step_s")


def speed_block(
    per_question: dict[int, dict[str, float | None]], strata: dict[int, str] | None = None
) -> SpeedBlock:
    """Every figure of a group from its questions' `question_figures`."""
    return SpeedBlock(
        **{name: figure({q: f[name] for q, f in per_question.items()}, strata) for name in FIGURES}
    )


class SpeedGroup(SpeedBlock):
    n_questions: int
    """Questions with both turns timed."""
    turns: dict[str, SpeedBlock]
    """Turn "1" and turn "2" alone."""


class QuestionSpeed(BaseModel):
    """One question's figures over both turns; `bench compare` pairs these."""

    question_id: int
    category: str
    tokens_per_s: float | None
    ttft_s: float | None
    tpot_s: float | None
    mean_step_s: float | None


class AggregateSpeed(BaseModel):
    """The run's throughput at its concurrency, from the manifest's `timing`."""

    output_tokens: int
    """Output tokens of the turns decoded in the sessions that finished their decoding."""
    decode_s: float
    """Wall time of those sessions' decoding phases, summed."""
    tokens_per_s: float | None
    """output_tokens / decode_s."""
    concurrency: int
    """Turns in flight at once: the larger of `concurrency` and the engine's batch size."""
    sessions: int = 1
    """Decoding sessions pooled (a resumed run has several; a session that redid a few
    turns ran below the concurrency, so the pooled figure then reads low)."""


class SpeedSummary(BaseModel):
    """The `speed` block of summary.json."""

    timed_questions: int
    """Counted questions whose two turns both carry timing; every figure rests on these."""
    untimed_turns: list[tuple[int, int]]
    """(question id, turn) of counted questions' turns without timing, left out."""
    overall: SpeedGroup | None
    categories: dict[str, SpeedGroup]
    questions: list[QuestionSpeed]
    aggregate: AggregateSpeed | None = None
    """None when the run directory does not record its decoding time."""


def summarize_speed(
    questions: Sequence[tuple[int, str, tuple[TimedTurn | None, ...]]],
    categories: Sequence[str],
    aggregate: AggregateSpeed | None = None,
) -> SpeedSummary:
    """The speed block from the counted questions: (id, category, its turns in order) with
    None for a turn without timing; categories in report order. Turn "2" covers the
    questions that have a second turn."""
    untimed = [(qid, t) for qid, _, turns in questions for t, x in enumerate(turns, 1) if x is None]
    timed = [
        (qid, cat, turns) for qid, cat, turns in questions if all(x is not None for x in turns)
    ]
    figures = {
        qid: {
            "": question_figures(turns),
            "1": question_figures(turns[:1]),
            "2": question_figures(turns[1:2]) if len(turns) > 1 else None,
        }
        for qid, _, turns in timed
    }

    def group(ids: list[int], strata: dict[int, str] | None) -> SpeedGroup:
        block = speed_block({q: figures[q][""] for q in ids}, strata)
        turns = {
            t: speed_block({q: f for q in ids if (f := figures[q][t]) is not None}, strata)
            for t in ("1", "2")
        }
        return SpeedGroup(**block.model_dump(), n_questions=len(ids), turns=turns)

    strata = {qid: cat for qid, cat, _ in timed}
    by_category = {
        c: group([q for q, cat, _ in timed if cat == c], None)
        for c in categories
        if any(cat == c for _, cat, _ in timed)
    }
    return SpeedSummary(
        timed_questions=len(timed),
        untimed_turns=untimed,
        overall=group([q for q, _, _ in timed], strata) if timed else None,
        categories=by_category,
        questions=[QuestionSpeed(question_id=q, category=c, **figures[q][""]) for q, c, _ in timed],
        aggregate=aggregate,
    )


# --- two runs: speedup ------------------------------------------------------------------


@dataclass(frozen=True)
class Speedup:
    ratio: float | None
    """Mean of `other` ÷ mean of `base` over the shared questions (a ratio of means)."""
    ci95: tuple[float, float] | None
    """Paired bootstrap 95 % interval of `ratio`."""
    shared_questions: int


def speedup(
    base_question_tps: dict[int, float],
    other_question_tps: dict[int, float],
    strata: dict[int, str] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Speedup:
    """Latency speedup of run `other` over run `base` (speculation off, same engine,
    questions and settings): mean question tokens/s of `other` ÷ that of `base`, over the
    questions both timed (Spec-Bench's ratio of means).

    Interval: the shared question ids are resampled with replacement (within each stratum
    when `strata` maps id to category; as one group when a stratum has fewer than 2), the
    same ids on both sides, and the ratio of the two resampled means recomputed; the 2.5th
    and 97.5th percentiles. No interval from fewer than 2 shared questions.

    Any per-question figure works the same way; for a time (TPOT) pass the runs swapped, so
    that above 1 still means `other` is faster."""
    shared = sorted(set(base_question_tps) & set(other_question_tps))
    if not shared:
        return Speedup(None, None, 0)
    base = np.asarray([base_question_tps[q] for q in shared], dtype=float)
    other = np.asarray([other_question_tps[q] for q in shared], dtype=float)
    ratio = float(other.mean() / base.mean()) if base.mean() > 0 else None
    if ratio is None or len(shared) < 2:
        return Speedup(ratio, None, len(shared))
    positions = _resampled_positions(shared, strata, resamples, seed)
    ratios = other[positions].mean(axis=1) / base[positions].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return Speedup(ratio, (float(low), float(high)), len(shared))


def throughput_speedup(base: AggregateSpeed | None, other: AggregateSpeed | None) -> float | None:
    """Throughput speedup: aggregate tokens/s of `other` ÷ that of `base` (one number per
    run, so no interval); None when either run lacks it."""
    if base is None or other is None or not base.tokens_per_s or other.tokens_per_s is None:
        return None
    return other.tokens_per_s / base.tokens_per_s


class SpeedRow(BaseModel):
    """Two runs' speed for one category (or overall): each side's figures (its own timed
    questions) and the paired ratios over the questions both timed."""

    name: str
    baseline_tokens_per_s: float | None
    candidate_tokens_per_s: float | None
    speedup: float | None
    """Latency speedup: candidate ÷ baseline mean question tokens/s, shared questions."""
    speedup_ci95: tuple[float, float] | None
    shared_questions: int
    baseline_tpot_s: float | None
    candidate_tpot_s: float | None
    tpot_ratio: float | None
    """Baseline ÷ candidate mean question TPOT over the shared questions (above 1: the
    candidate's tokens come faster)."""
    tpot_ratio_ci95: tuple[float, float] | None
    baseline_ttft_s: float | None
    candidate_ttft_s: float | None


def speed_rows(
    base: SpeedSummary, other: SpeedSummary, categories: Sequence[str]
) -> list[SpeedRow]:
    """Per category in `categories` that either run timed, then overall: both runs' figures
    and the paired latency speedup and TPOT ratio (strata: categories, for overall)."""
    base_q = {q.question_id: q for q in base.questions}
    other_q = {q.question_id: q for q in other.questions}
    strata = {q.question_id: q.category for q in base.questions}

    def per_question(questions: dict[int, QuestionSpeed], name: str, attr: str) -> dict[int, float]:
        return {
            qid: value
            for qid, q in questions.items()
            if (name == "overall" or q.category == name) and (value := getattr(q, attr)) is not None
        }

    def mean(summary: SpeedSummary, name: str, attr: str) -> float | None:
        group = summary.overall if name == "overall" else summary.categories.get(name)
        return getattr(group, attr).mean if group is not None else None

    rows = []
    names = [c for c in categories if c in base.categories or c in other.categories]
    for name in [*names, "overall"]:
        latency = speedup(
            per_question(base_q, name, "tokens_per_s"),
            per_question(other_q, name, "tokens_per_s"),
            strata,
        )
        tpot = speedup(  # swapped: a time, so that above 1 means the candidate is faster
            per_question(other_q, name, "tpot_s"), per_question(base_q, name, "tpot_s"), strata
        )
        rows.append(
            SpeedRow(
                name=name,
                baseline_tokens_per_s=mean(base, name, "tokens_per_s"),
                candidate_tokens_per_s=mean(other, name, "tokens_per_s"),
                speedup=latency.ratio,
                speedup_ci95=latency.ci95,
                shared_questions=latency.shared_questions,
                baseline_tpot_s=mean(base, name, "tpot_s"),
                candidate_tpot_s=mean(other, name, "tpot_s"),
                tpot_ratio=tpot.ratio,
                tpot_ratio_ci95=tpot.ci95,
                baseline_ttft_s=mean(base, name, "ttft_s"),
                candidate_ttft_s=mean(other, name, "ttft_s"),
            )
        )
    return rows
