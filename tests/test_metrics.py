"""Metric tables with visible arithmetic, starting with docs/metrics.md's worked example."""

from __future__ import annotations

import pytest

from bench.engines import EngineTotals
from bench.metrics import (
    bootstrap_ci95,
    conditional_acceptance,
    decode_acceptance_length_by_position,
    draft_acceptance_rate,
    histogram,
    joint_acceptance,
    paired_difference_ci95,
    step_positions,
)
from bench.records import TurnRecord
from bench.summary import summarize
from tests.conftest import turn as record

# The worked example: k = 3, one question.
WORKED = [record(81, 1, [1, 4, 2, 1, 3]), record(81, 2, [1, 4, 4, 2])]


def test_worked_example_every_figure():
    s = summarize(WORKED, draft_len=3)
    w = s.categories["writing"]
    assert w.acceptance_length == pytest.approx(22 / 9)  # (11 + 11) / (5 + 4) = 2.444
    assert round(w.acceptance_length, 3) == 2.444
    assert w.decode_acceptance_length == pytest.approx(20 / 7)  # 2.857
    assert w.turns["1"].acceptance_length == pytest.approx(11 / 5)  # 2.200
    assert w.turns["2"].acceptance_length == pytest.approx(11 / 4)  # 2.750
    assert w.histogram == [1, 2, 1, 3]  # decode steps 4,2,1,3,4,4,2
    assert w.draft_acceptance_rate == pytest.approx(13 / 21)  # 0.619
    assert w.joint_acceptance == pytest.approx([6 / 7, 4 / 7, 3 / 7])
    assert w.conditional_acceptance == pytest.approx([6 / 7, 4 / 6, 3 / 4])
    assert w.steps == 9 and w.decode_steps == 7 and w.output_tokens == 22
    assert s.overall is not None and s.overall.acceptance_length == pytest.approx(22 / 9)
    assert s.complete and s.valid


def test_category_is_macro_average_pooled_is_token_weighted():
    # Second question: AL exactly 3.000 with a different step count: 12 tokens / 4 steps.
    records = [*WORKED, record(82, 1, [1, 4, 4]), record(82, 2, [3])]
    s = summarize(records, draft_len=3)
    w = s.categories["writing"]
    assert w.acceptance_length == pytest.approx((22 / 9 + 3.0) / 2)  # 2.722
    assert round(w.acceptance_length, 3) == 2.722
    assert w.pooled_acceptance_length == pytest.approx((22 + 12) / (9 + 4))  # 2.615


def test_histogram_and_positions_by_hand():
    hist = histogram([1, 1, 2, 4, 4, 3], draft_len=3)
    assert hist == [2, 1, 1, 2]
    assert joint_acceptance(hist) == pytest.approx([4 / 6, 3 / 6, 2 / 6])
    assert conditional_acceptance(hist) == pytest.approx([4 / 6, 3 / 4, 2 / 3])
    assert draft_acceptance_rate([1, 1, 2, 4, 4, 3], 3) == pytest.approx(
        (0 + 0 + 1 + 3 + 3 + 2) / 18
    )


def test_proposed_rate_uses_engine_drafts_when_known():
    recs = [
        record(81, 1, [1, 2, 1], drafted=[0, 3, 1]),
        record(81, 2, [1, 1], drafted=[0, 0]),
    ]
    w = summarize(recs, draft_len=3).categories["writing"]
    assert w.proposed_draft_acceptance_rate == pytest.approx(1 / 4)  # 1 accepted / 4 proposed
    assert w.draft_acceptance_rate == pytest.approx(1 / 9)  # 1 / (3 × 3 decode steps)
    no_drafts = summarize(WORKED, draft_len=3).categories["writing"]
    assert no_drafts.proposed_draft_acceptance_rate is None


def test_categories_in_card_order_and_overall_mean_of_questions():
    recs = [
        record(111, 1, [1, 2], category="math"),
        record(111, 2, [1, 2], category="math"),
        record(81, 1, [1, 1]),
        record(81, 2, [1, 1]),
    ]
    s = summarize(recs, draft_len=3)
    assert list(s.categories) == ["writing", "math"]
    assert s.overall.acceptance_length == pytest.approx((1.5 + 1.0) / 2)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1.2, 1.5, 1.9, 2.4, 2.0, 1.1, 1.7, 2.2, 1.4, 1.8]
    a = bootstrap_ci95([values])
    assert a == bootstrap_ci95([values])
    assert a[0] < sum(values) / len(values) < a[1]
    assert bootstrap_ci95([[2.0]]) == (2.0, 2.0)


def test_missing_and_failed_turns_are_listed_not_averaged():
    recs = [
        *WORKED,
        record(82, 1, [], finish_reason="error", error="RuntimeError: boom", prefill_step=False),
        record(83, 1, [1, 2]),
    ]
    s = summarize(recs, draft_len=3, expected_question_ids=[81, 82, 83, 84])
    assert not s.complete and not s.valid
    assert s.counted_questions == 1
    assert [(m.question_id, m.turn) for m in s.missing] == [(82, 2), (83, 2), (84, 1), (84, 2)]
    assert [(f.question_id, f.turn) for f in s.failed] == [(82, 1)]
    assert s.categories["writing"].acceptance_length == pytest.approx(22 / 9)
    assert "failed_turns" in {sig.code for sig in s.signals}


def test_resumed_turn_supersedes_its_failure():
    recs = [
        record(81, 1, [], finish_reason="error", error="x", prefill_step=False),
        *WORKED,
    ]
    assert summarize(recs, draft_len=3).complete


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ([[1, 5, 1], [1, 2]], "step_exceeds_draft_len"),
        ([[1] * 20, [1] * 20], "acceptance_near_one"),
        ([[1] + [4] * 12 + [2], [1] + [4] * 5 + [1]], "all_full_acceptance"),
    ],
)
def test_sanity_signals_that_invalidate(steps, code):
    recs = [record(81, 1, steps[0]), record(81, 2, steps[1])]
    s = summarize(recs, draft_len=3)
    assert code in {sig.code for sig in s.signals if sig.severity == "error"}
    assert not s.valid


def test_length_capped_share_is_reported():
    recs = [record(81, 1, [1, 2, 2], finish_reason="length"), record(81, 2, [1, 2])]
    s = summarize(recs, draft_len=3)
    assert s.length_capped_turns == 1 and s.length_capped_share == 0.5
    assert s.valid  # a capped turn is counted, and flagged, not invalid
    capped = next(sig for sig in s.signals if sig.code == "length_capped_turns")
    assert capped.severity == "warning"


def test_step_positions_and_decode_al_by_position_on_the_worked_example():
    # Positions = tokens emitted before each step: turn 1 [1,4,2,1,3] -> 0,1,5,7,8.
    assert step_positions([1, 4, 2, 1, 3]) == [0, 1, 5, 7, 8]
    assert step_positions([1, 4, 4, 2]) == [0, 1, 5, 9]
    buckets = decode_acceptance_length_by_position(
        [([1, 4, 2, 1, 3], True), ([1, 4, 4, 2], True)], bucket_tokens=4
    )
    # Decode steps by bucket (position // 4), prefill steps left out:
    # [0,4): e=4 (t1), 4 (t2); [4,8): 2, 1 (t1), 4 (t2); [8,12): 3 (t1), 2 (t2).
    assert [(b.start_tokens, b.decode_steps) for b in buckets] == [(0, 2), (4, 3), (8, 2)]
    assert [b.decode_acceptance_length for b in buckets] == pytest.approx([8 / 2, 7 / 3, 5 / 2])
    with pytest.raises(ValueError, match="bucket_tokens must be at least 1"):
        decode_acceptance_length_by_position([], bucket_tokens=0)


def test_paired_difference_sees_a_shift_that_the_spread_between_questions_hides():
    base = {81 + i: v for i, v in enumerate([1.2, 1.5, 1.9, 2.4, 2.0, 1.1, 1.7, 2.2, 1.4, 1.8])}
    shifted = {qid: v + 0.05 for qid, v in base.items()}
    paired = paired_difference_ci95(base, shifted)
    assert paired.shared_questions == 10
    assert paired.mean_difference == pytest.approx(0.05)
    assert paired.ci95 == pytest.approx((0.05, 0.05)) and paired.exceeds_noise
    # Unpaired, the two runs' own intervals overlap: the shift hides in the spread.
    a, b = bootstrap_ci95([list(base.values())]), bootstrap_ci95([list(shifted.values())])
    assert a[1] > b[0]
    noisy = {qid: v + (0.3 if qid % 2 else -0.3) for qid, v in base.items()}
    assert paired_difference_ci95(base, noisy).exceeds_noise is False
    # Only shared questions count; one shared question gives no interval.
    one = paired_difference_ci95({81: 1.0, 82: 2.0}, {81: 1.5, 99: 3.0})
    assert (one.shared_questions, one.mean_difference, one.ci95) == (1, 0.5, None)
    assert one.exceeds_noise is None
    assert paired_difference_ci95({}, {81: 1.0}).mean_difference is None


def test_paired_difference_does_not_stratify_single_question_strata():
    # One question per category (a --limit 8 run): stratified resampling would have no
    # spread at all and call any difference real; pooled, +0.3/-0.1/+0.1/-0.2 straddle 0.
    base = {81: 1.0, 91: 1.0, 101: 1.0, 111: 1.0}
    other = {81: 1.3, 91: 0.9, 101: 1.1, 111: 0.8}
    strata = {81: "writing", 91: "roleplay", 101: "reasoning", 111: "math"}
    paired = paired_difference_ci95(base, other, strata)
    assert paired.mean_difference == pytest.approx(0.025)
    assert paired.ci95[0] < 0 < paired.ci95[1] and paired.exceeds_noise is False
    assert paired.ci95 == paired_difference_ci95(base, other).ci95
    # With two or more per stratum, resampling stays within each category.
    two = {qid + 1: v for qid, v in other.items()} | other
    two_base = {qid + 1: v for qid, v in base.items()} | base
    two_strata = {qid + 1: c for qid, c in strata.items()} | strata
    assert paired_difference_ci95(two_base, two, two_strata).ci95 == pytest.approx((0.025, 0.025))


def test_stratified_bootstrap_pools_when_a_category_has_one_question():
    one_each = [[1.2], [1.9], [2.6]]
    low, high = bootstrap_ci95(one_each)
    assert low < high  # not the zero-width interval of three fixed strata
    assert bootstrap_ci95(one_each) == bootstrap_ci95([[1.2, 1.9, 2.6]])


# --- engines that report per-request totals -------------------------------------------


def totals(n: int, accepted: int, proposed: int | None = None) -> EngineTotals:
    return EngineTotals(
        output_tokens=n,
        steps=n - accepted,
        accepted_drafts=accepted,
        proposed_drafts=proposed,
        source="test: steps = n - accepted",
    )


def test_totals_example_from_the_docs():
    """A turn of 120 tokens with 89 accepted drafts took 31 steps: AL 3.871."""
    one = record(81, 1, [], step_detail="none", totals=totals(120, 89))
    two = record(81, 2, [], step_detail="none", totals=totals(120, 89))
    s = summarize([one, two], draft_len=3)
    assert one.step_count == 31 and one.output_tokens == 120
    assert round(s.questions[0].acceptance_length, 3) == 3.871
    assert s.overall.decode_acceptance_length == pytest.approx(119 / 30)
    assert s.overall.draft_acceptance_rate == pytest.approx(89 / (3 * 30))
    assert s.overall.histogram == [0, 0, 0, 0] and s.overall.step_detail_turns == 0
    assert s.overall.joint_acceptance == [None, None, None]  # unavailable, not 1.0
    assert "totals_only_turns" in {x.code for x in s.signals}


def test_totals_decide_and_only_real_detail_feeds_the_histogram():
    """Turn 1's chunks add up to its totals (exact); turn 2's stream merged steps [4, 2]
    into one chunk of 6, so its totals (3 steps) decide and its chunks are left out."""
    exact = record(81, 1, [1, 4, 2], totals=totals(7, 4, proposed=6))
    merged = record(81, 2, [1, 6], step_detail="disagrees", totals=totals(7, 4, proposed=6))
    s = summarize([exact, merged], draft_len=3)
    assert s.questions[0].acceptance_length == pytest.approx(14 / 6)  # not 14 / 5
    assert s.overall.histogram == [0, 1, 0, 1]  # turn 1's decode steps 4 and 2 only
    assert (s.overall.step_detail_turns, s.overall.turn_count) == (1, 2)
    assert s.overall.proposed_draft_acceptance_rate == pytest.approx(8 / 12)
    codes = {x.code for x in s.signals}
    assert "step_detail_disagrees" in codes and "step_exceeds_draft_len" not in codes


def test_records_of_version_1_read_as_before():
    """A record written before totals existed: the reference engine's steps are exact, a
    stream's are unchecked; output_tokens and step_count come from the steps."""
    old = {
        "schema_version": 1,
        "question_id": 81,
        "category": "writing",
        "turn": 1,
        "prompt_tokens": 3,
        "steps": [1, 3],
        "prefill_step": True,
        "output_tokens": 4,
        "token_ids": [1, 2, 3, 4],
        "text": "x",
        "finish_reason": "stop",
        "duration_s": 1.0,
    }
    assert TurnRecord.model_validate(old).step_detail == "exact"
    streamed = {**old, "engine_counters": {"step_source": "usage"}}
    record_ = TurnRecord.model_validate(streamed)
    assert record_.step_detail == "unchecked" and (record_.output_tokens, record_.step_count) == (
        4,
        2,
    )
