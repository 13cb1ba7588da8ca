"""The run's summary (summary.json): every figure of `bench.metrics` per category, per turn
and overall, the speed figures beside them, the reasoning/answer split, and the sanity
signals of docs/metrics.md.

Only questions with every turn recorded and successful enter the averages (MT-Bench: both;
other datasets may have one or many); the others are listed as missing or failed, and the
summary says it is incomplete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench import METHODOLOGY_VERSION
from bench.dataset import CATEGORIES, category_order
from bench.metrics import (
    GroupSummary,
    QuestionSteps,
    QuestionSummary,
    SegmentSummary,
    decode_steps_of,
    pooled_decode_acceptance_length,
    summarize_group,
    summarize_segments,
)
from bench.records import TurnRecord, latest_by_turn
from bench.speed import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    AggregateSpeed,
    SpeedSummary,
    TimedTurn,
    summarize_speed,
)

if TYPE_CHECKING:
    from bench.rundir import Manifest

SUMMARY_SCHEMA_VERSION = 1


class Signal(BaseModel):
    code: str
    severity: Literal["error", "warning", "info"]
    message: str


class TurnRef(BaseModel):
    question_id: int
    turn: int
    error: str | None = None


class Summary(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SUMMARY_SCHEMA_VERSION
    methodology_version: str = METHODOLOGY_VERSION
    draft_len: int
    complete: bool
    """True when every expected turn was recorded and succeeded."""
    valid: bool
    """False when an error-severity sanity signal fired: the numbers must not be used."""
    expected_questions: int
    counted_questions: int
    missing: list[TurnRef] = Field(default_factory=list)
    failed: list[TurnRef] = Field(default_factory=list)
    length_capped_turns: int
    length_capped_share: float | None
    overall: GroupSummary | None
    categories: dict[str, GroupSummary]
    questions: list[QuestionSummary]
    signals: list[Signal]
    bootstrap: dict[str, float | int | str]
    speed: SpeedSummary | None = None
    """Timing beside acceptance (docs/metrics.md "Speed"); None in summaries written before
    it existed."""
    dataset: str | None = None
    """Which dataset the run sent (`DatasetConfig.name`); None in summaries written before
    it was recorded (they ran MT-Bench)."""
    segments: SegmentSummary | None = None
    """Reasoning and answer apart; None when no question was counted, and in summaries
    written before it existed."""


def timed_turn(record: TurnRecord) -> TimedTurn | None:
    """What the speed figures read from a successful turn; None when the engine did not
    time its first token."""
    if record.ttft_s is None:
        return None
    return TimedTurn(record.output_tokens, record.step_count, record.ttft_s, record.duration_s)


def sanity_signals(
    records: Sequence[TurnRecord],
    questions: Sequence[QuestionSteps],
    draft_len: int,
    missing: Sequence[TurnRef],
    failed: Sequence[TurnRef],
    overall: GroupSummary | None,
) -> list[Signal]:
    """The checks of docs/metrics.md "Sanity signals", on successful turns."""
    signals: list[Signal] = []
    ok = [r for r in records if r.ok]
    detailed = [r for r in ok if r.has_step_detail]
    over = [(r.question_id, r.turn, e) for r in detailed for e in r.steps if e > draft_len + 1]
    if over:
        qid, turn, e = over[0]
        signals.append(
            Signal(
                code="step_exceeds_draft_len",
                severity="error",
                message=f"{len(over)} steps emitted more than draft_len + 1 = {draft_len + 1} "
                f"tokens (first: question {qid} turn {turn}, {e} tokens): the stream merges "
                "iterations (stream_interval > 1) or the engine's draft length is not "
                f"{draft_len}; the run is invalid",
            )
        )
    mismatched = [r for r in ok if r.engine_counters.get("cross_check") == "mismatch"]
    if mismatched:
        first = mismatched[0]
        failed_checks = [k for k, v in first.engine_counters.get("checks", {}).items() if not v]
        signals.append(
            Signal(
                code="engine_counter_mismatch",
                severity="warning",
                message=f"{len(mismatched)} turns' stream step counts disagree with the engine's "
                f"own counters (first: question {first.question_id} turn {first.turn}: "
                f"{', '.join(failed_checks)}); both are in records.jsonl (engine_counters)",
            )
        )
    disagreeing = [r for r in ok if r.step_detail == "disagrees"]
    if disagreeing:
        first = disagreeing[0]
        what = first.counted.note if first.counted is not None else None
        signals.append(
            Signal(
                code="step_detail_disagrees",
                severity="warning",
                message=f"{len(disagreeing)} turns' streamed chunks are not their decoding "
                f"steps (first: question {first.question_id} turn {first.turn}: "
                f"{what or 'they do not add up to the engine totals'}); their step counts "
                "come from the engine's totals, and their chunks are left out of the "
                "histogram and the per-position rates",
            )
        )
    bounded = [r for r in ok if r.step_slack]
    if bounded and overall is not None:
        first = bounded[0]
        note = first.counted.note if first.counted is not None else None
        low = overall.acceptance_length_min
        signals.append(
            Signal(
                code="step_count_bounds",
                severity="warning",
                message=f"{len(bounded)} of {len(ok)} turns' step counts are lower bounds, "
                f"short by at most {sum(r.step_slack for r in bounded)} steps in all (first: "
                f"question {first.question_id} turn {first.turn}: {note}); the overall "
                f"card AL {overall.acceptance_length:.3f} could be as low as {low:.3f}",
            )
        )
    past_cut = [r for r in ok if r.counted is not None and r.counted.past_cut]
    if past_cut:
        signals.append(
            Signal(
                code="drafts_counted_past_cut",
                severity="info",
                message=f"on {len(past_cut)} of {len(ok)} turns the engine's accepted-draft "
                "count includes drafts its last step accepted beyond max_tokens or a stop "
                "token; their steps are counted exactly from the stream, one chunk per "
                "step (records.jsonl: counted)",
            )
        )
    totals_only = [r for r in ok if r.step_detail == "none"]
    if totals_only:
        signals.append(
            Signal(
                code="totals_only_turns",
                severity="info",
                message=f"{len(totals_only)} of {len(ok)} turns come from an engine that "
                "shows no per-step counts: their AL comes from its per-request totals, and "
                "the histogram and per-position rates do not include them",
            )
        )
    bad_prefill = [r for r in detailed if r.prefill_step and r.steps[0] != 1]
    if bad_prefill:
        signals.append(
            Signal(
                code="prefill_step_not_one",
                severity="warning",
                message=f"{len(bad_prefill)} turns have a prefill step that emitted more than "
                "one token: the stream merged the first iterations",
            )
        )
    if failed or missing:
        signals.append(
            Signal(
                code="failed_turns",
                severity="error",
                message=f"{len(failed)} turns failed and {len(missing)} are missing; their "
                "questions are left out of every average",
            )
        )
    # A speculation-off run (draft length 0, the speed baseline) emits one token per step
    # by design: neither check below applies to it.
    if draft_len >= 1 and overall is not None and overall.decode_steps:
        decode_al = pooled_decode_acceptance_length(overall) or 1.0
        if decode_al < 1.01:
            signals.append(
                Signal(
                    code="acceptance_near_one",
                    severity="error",
                    message=f"decode steps emit {decode_al:.3f} tokens on average: speculation "
                    "is off or the draft is broken",
                )
            )
        # Every decode step at k + 1, not counting each turn's last step (cut by EOS or
        # max_tokens): a draft that is the target, NaN logits, or merged iterations.
        inner = [
            e
            for q in questions
            for r in q.detail_turns()
            for e in decode_steps_of(r.steps, r.prefill_step)[:-1]
        ]
        if len(inner) >= 10 and all(e == draft_len + 1 for e in inner):
            signals.append(
                Signal(
                    code="all_full_acceptance",
                    severity="error",
                    message=f"every one of {len(inner)} decode steps accepted all {draft_len} "
                    "drafts: suspicious (a draft identical to the target, NaN logits, or a "
                    "stream that merges iterations)",
                )
            )
    capped = [r for r in ok if r.finish_reason == "length"]
    if ok:
        share = len(capped) / len(ok)
        signals.append(
            Signal(
                code="length_capped_turns",
                severity="warning" if share >= 0.1 else "info",
                message=f"{len(capped)} of {len(ok)} turns ({share:.1%}) ended at max_tokens; "
                "long answers cut at the limit change what the acceptance length measures",
            )
        )
    return signals


def summarize(
    records: Sequence[TurnRecord],
    draft_len: int,
    expected_question_ids: Sequence[int] | None = None,
    aggregate: AggregateSpeed | None = None,
    expected_turns: dict[int, int] | None = None,
    categories: Sequence[str] = CATEGORIES,
    dataset: str | None = None,
) -> Summary:
    """The run's summary from its records (the last record of each turn counts);
    `aggregate` is the run's decoding throughput, from its manifest, when it records it.
    `expected_turns` maps question id to its turn count (default: two each, MT-Bench's);
    `categories` gives the report order (any other category found follows)."""
    latest = latest_by_turn(list(records))
    ids = sorted(
        set(expected_question_ids)
        if expected_question_ids is not None
        else {qid for qid, _ in latest}
    )
    if expected_turns is None:
        expected_turns = {}
        if expected_question_ids is None:  # as many as were recorded, at least two
            for qid, turn in latest:
                expected_turns[qid] = max(expected_turns.get(qid, 2), turn)
    missing: list[TurnRef] = []
    failed: list[TurnRef] = []
    complete_questions: list[QuestionSteps] = []
    for qid in ids:
        turns = []
        expected = expected_turns.get(qid, 2)
        for turn in range(1, expected + 1):
            record = latest.get((qid, turn))
            if record is None:
                missing.append(TurnRef(question_id=qid, turn=turn))
            elif not record.ok:
                failed.append(TurnRef(question_id=qid, turn=turn, error=record.error))
            else:
                turns.append(record)
        if len(turns) == expected:
            complete_questions.append(QuestionSteps(qid, turns[0].category, tuple(turns)))

    by_category: dict[str, GroupSummary] = {}
    found = {q.category for q in complete_questions}
    for category in [*categories, *category_order(found - set(categories))]:
        members = [q for q in complete_questions if q.category == category]
        if members:
            by_category[category] = summarize_group(members, draft_len)
    overall = (
        summarize_group(complete_questions, draft_len, strata=True) if complete_questions else None
    )
    question_rows = [
        QuestionSummary(
            question_id=q.question_id,
            category=q.category,
            acceptance_length=q.acceptance_length(),
            turn1_acceptance_length=q.acceptance_length(1),
            turn2_acceptance_length=q.acceptance_length(2) if q.has_turn(2) else None,
            decode_acceptance_length=q.decode_acceptance_length(),
            steps=q.step_count(),
            output_tokens=q.output_tokens(),
            step_detail_turns=len(q.detail_turns()),
            finish_reasons=tuple(r.finish_reason for r in q.turns),
        )
        for q in complete_questions
    ]
    considered = [r for r in latest.values() if r.question_id in set(ids)]
    signals = sanity_signals(considered, complete_questions, draft_len, missing, failed, overall)
    ok_turns = [r for r in considered if r.ok]
    capped = sum(1 for r in ok_turns if r.finish_reason == "length")
    return Summary(
        draft_len=draft_len,
        complete=not missing and not failed,
        valid=not any(s.severity == "error" for s in signals),
        expected_questions=len(ids),
        counted_questions=len(complete_questions),
        missing=missing,
        failed=failed,
        length_capped_turns=capped,
        length_capped_share=capped / len(ok_turns) if ok_turns else None,
        overall=overall,
        categories=by_category,
        questions=question_rows,
        signals=signals,
        bootstrap={
            "method": "percentile, questions resampled with replacement "
            "(within each category for overall)",
            "resamples": BOOTSTRAP_RESAMPLES,
            "seed": BOOTSTRAP_SEED,
            "level": 0.95,
        },
        speed=summarize_speed(
            [
                (q.question_id, q.category, tuple(timed_turn(r) for r in q.turns))
                for q in complete_questions
            ],
            list(by_category),
            aggregate,
        ),
        dataset=dataset,
        segments=summarize_segments(complete_questions, draft_len, list(by_category))
        if complete_questions
        else None,
    )


def summarize_run(
    records: Sequence[TurnRecord], manifest: Manifest, aggregate: AggregateSpeed | None
) -> Summary:
    """The summary of a run's records, with the questions, turns and categories its
    manifest says it ran."""
    dataset = manifest.dataset
    return summarize(
        records,
        manifest.config.draft_len,
        dataset.question_ids,
        aggregate,
        expected_turns=dataset.expected_turns(),
        categories=dataset.categories or CATEGORIES,
        dataset=dataset.name,
    )
