"""The one rule for a turn's step count (`bench.engines.reconcile`), source by source.

Each case is a turn whose true steps are known by construction; the rule must find them
exactly wherever the stream and the engine's counters together pin them down, and
otherwise say the count is a lower bound and by how much at most.
"""

from __future__ import annotations

import pytest

from bench.engines import (
    DraftLenExceeded,
    EngineTotals,
    check_draft_len,
    reconcile,
    stream_lower_bound,
)
from bench.engines.openai_compat import StreamState
from bench.summary import summarize
from tests.conftest import turn as record


def accepted_counter(n: int, accepted: int, past_cut_max: int) -> EngineTotals:
    """vLLM / llama.cpp style: steps = tokens - accepted drafts."""
    return EngineTotals(
        output_tokens=n,
        steps=n - accepted,
        accepted_drafts=accepted,
        source="test: steps = tokens - accepted",
        past_cut_max=past_cut_max,
    )


def iteration_counter(n: int, steps: int) -> EngineTotals:
    """TensorRT-LLM / SGLang style: the engine counts its iterations."""
    return EngineTotals(
        output_tokens=n, steps=steps, accepted_drafts=n - steps, source="test: iterations"
    )


# The docs' example, k = 3: the last step accepts 3 drafts but only 1 token fits under
# max_tokens. Steps [1, 4, 4, 1, 2, 1]: 13 tokens in 6 steps; drafting steps accepted
# [3, 3, 0, 1, 3] (the one-token step before the last drafted nothing); the engine counts
# 3 + 3 + 0 + 1 + 3 = 10 accepted, so tokens - accepted = 3, short by the 3 past the cut.
CUT_STEPS = [1, 4, 4, 1, 1, 2, 1]
CUT_RECORD = [3, 3, 0, 1, 3]
CUT_TOKENS = sum(CUT_STEPS)  # 14 tokens in 7 steps


def test_drafts_past_the_cut_are_found_with_the_engines_per_step_record():
    totals = accepted_counter(CUT_TOKENS, sum(CUT_RECORD), past_cut_max=3)
    assert totals.steps == 4  # what trusting the counter alone gave: AL 3.5, not 2.0
    detail, counted = reconcile(CUT_STEPS, totals, 3, CUT_RECORD)
    assert detail == "exact" and counted.steps == 7 and counted.slack == 0
    assert counted.past_cut == 3 and "3 drafts accepted past the cut" in counted.note


def test_without_a_per_step_record_the_stream_is_a_lower_bound_with_its_slack():
    # vLLM's `summary` metrics: no per-step record; 7 chunks, 4 by the counter, at most 7.
    totals = accepted_counter(CUT_TOKENS, 10, past_cut_max=3)
    detail, counted = reconcile(CUT_STEPS, totals, 3)
    # 7 chunks reach the most steps the counter allows: each chunk is one step.
    assert detail == "exact" and counted.steps == 7 and counted.past_cut == 3
    # One chunk fewer than that most: chunks may be merged, or fewer drafts past the cut.
    steps = [1, 4, 4, 1, 1, 3]
    detail, counted = reconcile(steps, accepted_counter(14, 10, past_cut_max=3), 3)
    assert detail == "unchecked" and (counted.steps, counted.slack) == (6, 1)
    assert "cannot show whether it merged" in counted.note


def test_a_merged_stream_fails_the_per_step_record_and_gets_a_bound():
    # Steps [1, 1] merged into one chunk of 2: the chunks no longer match the record.
    merged = [1, 4, 4, 2, 2, 1]
    totals = accepted_counter(CUT_TOKENS, 10, past_cut_max=3)
    detail, counted = reconcile(merged, totals, 3, CUT_RECORD)
    assert detail == "unchecked"  # 6 chunks, between the counter's 4 and 7
    assert (counted.steps, counted.slack) == (6, 1)
    # Merged below the counter's own bound: certainly merged, the counter decides.
    detail, counted = reconcile([1, 8, 5], totals, 3, CUT_RECORD)
    assert detail == "disagrees" and counted.note.startswith("merged")
    assert (counted.steps, counted.slack) == (5, 2)  # 8 tokens hold at least 2 steps


@pytest.mark.parametrize(
    "chunks",
    [
        [1, 4, 4, 1, 3, 1],  # a one-token step merged into a drafting one
        [1, 4, 4, 2, 2, 1],  # two one-token steps merged
        [1, 8, 1, 1, 2, 1],  # two full steps merged
    ],
)
def test_any_merge_of_the_cut_turn_is_caught_by_the_record(chunks):
    totals = accepted_counter(sum(chunks), 10, past_cut_max=3)
    detail, counted = reconcile(chunks, totals, 3, CUT_RECORD)
    assert detail != "exact"  # the chunks are not the steps: no histogram from them
    assert counted.steps <= 7 <= counted.steps + counted.slack  # the truth within the bound


def test_iteration_counters_are_exact_whatever_the_cut():
    detail, counted = reconcile(CUT_STEPS, iteration_counter(CUT_TOKENS, 7), 3)
    assert detail == "exact" and (counted.steps, counted.slack, counted.past_cut) == (7, 0, 0)
    # trtllm-serve at stream_interval 3: merged chunks, the iterations still decide.
    detail, counted = reconcile([1, 9, 4], iteration_counter(CUT_TOKENS, 7), 3)
    assert detail == "disagrees" and (counted.steps, counted.slack) == (7, 0)


def test_totals_only_turns_carry_the_counters_bound():
    detail, counted = reconcile([], accepted_counter(64, 44, past_cut_max=3), 3)
    assert detail == "none" and (counted.steps, counted.slack) == (20, 3)
    detail, counted = reconcile([], accepted_counter(64, 44, past_cut_max=0), 3)
    assert (counted.steps, counted.slack) == (20, 0)


def test_a_stream_with_other_tokens_than_the_engine_counted_is_not_detail():
    detail, counted = reconcile([1, 2, 2], iteration_counter(6, 3), 3)
    assert detail == "disagrees" and counted.steps == 3
    assert "carries 5 tokens, the engine counted 6" in counted.note


def test_no_totals_the_stream_stands_unchecked():
    detail, counted = reconcile([1, 2, 4], None, 3)
    assert detail == "unchecked" and (counted.steps, counted.slack) == (3, 0)


def test_stream_lower_bound():
    assert stream_lower_bound([1, 4, 2], 3) == 3
    assert stream_lower_bound([1, 8, 5], 3) == 1 + 2 + 2
    assert stream_lower_bound([5], 3) == 2  # the prefill token, then at least one step
    assert stream_lower_bound([3, 1], 0) == 4  # speculation off: one token per step


def test_a_step_beyond_the_draft_length_stops_the_run():
    detail, counted = reconcile([1, 5, 2], iteration_counter(8, 3), 3)
    with pytest.raises(DraftLenExceeded, match="more than draft_len \\+ 1 = 4"):
        check_draft_len([1, 5, 2], detail, counted, 8, 3)
    # Totals only: 30 tokens cannot fit in at most 5 + 2 steps of 4 tokens.
    detail, counted = reconcile([], accepted_counter(30, 25, past_cut_max=2), 3)
    with pytest.raises(DraftLenExceeded, match="at most 7 steps"):
        check_draft_len([], detail, counted, 30, 3)


def test_llamacpp_counts_past_the_cut_only_at_a_stop_token():
    """llama-server shortens its drafts to the tokens max_tokens leaves, so a `length`
    finish is exact; a step that emits the end-of-generation token has counted every
    draft it accepted, those after it included."""

    def final(finish: str) -> StreamState:
        state = StreamState(draft_len=3)
        timings = {"predicted_n": 40, "draft_n": 30, "draft_n_accepted": 20}
        state.feed({"choices": [{"text": "x", "finish_reason": finish}], "timings": timings})
        return state

    assert final("length").totals().past_cut_max == 0
    stopped = final("stop").totals()
    assert (stopped.steps, stopped.past_cut_max) == (20, 3)


def test_vllm_totals_from_its_per_request_metrics():
    state = StreamState(draft_len=3)
    spec = {
        "num_spec_steps": 5,
        "num_draft_tokens": 15,
        "num_accepted_draft_tokens": 10,
        "per_step_accepted": CUT_RECORD,
        "per_step_drafted": [3] * 5,
    }
    for n, chunk in enumerate(CUT_STEPS):
        total = sum(CUT_STEPS[: n + 1])
        state.feed(
            {
                "choices": [{"text": "t", "token_ids": [0] * chunk}],
                "usage": {"completion_tokens": total},
            }
        )
    state.feed({"choices": [{"text": "", "finish_reason": "length"}]})
    state.feed(
        {
            "choices": [],
            "usage": {"completion_tokens": CUT_TOKENS},
            "metrics": {"speculative_decoding": spec},
        }
    )
    totals = state.totals()
    # tokens - accepted = 4, but 5 drafting steps after the prefill make at least 6.
    assert (totals.steps, totals.past_cut_max) == (6, 1)
    detail, counted = reconcile(state.steps, totals, 3, state.drafting_record())
    assert detail == "exact" and counted.steps == 7 and counted.past_cut == 3


def test_summary_counts_bounded_turns_and_the_lowest_al():
    exact = dict(counted=None)
    bound = accepted_counter(14, 10, past_cut_max=3)
    _, counted = reconcile([1, 4, 4, 1, 1, 3], bound, 3)  # 6 steps, up to 7
    one = record(81, 1, [1, 4, 4, 1, 1, 3], step_detail="unchecked", totals=bound, counted=counted)
    two = record(81, 2, [1, 3, 2], **exact)
    s = summarize([one, two], draft_len=3)
    assert s.overall.step_bound_turns == 1
    assert s.overall.acceptance_length == pytest.approx(20 / 9)
    assert s.overall.acceptance_length_min == pytest.approx(20 / 10)
    signal = next(x for x in s.signals if x.code == "step_count_bounds")
    assert "1 of 2 turns" in signal.message and "as low as 2.000" in signal.message


def test_iteration_counting_engines_are_exact_at_a_cut():
    """SGLang's `spec_verify_ct` and TensorRT-LLM's `decoding_iter` count passes, not
    drafts: a last step cut by max_tokens after accepting more is still one pass."""
    from bench.engines.trtllm import request_totals

    # SGLang /generate: cumulative output ids, verify passes on the last chunk.
    state = StreamState(draft_len=3)
    ids: list[int] = []
    for n, chunk in enumerate(CUT_STEPS):
        ids += [7] * chunk
        meta = {"completion_tokens": len(ids)}
        if n == len(CUT_STEPS) - 1:
            meta |= {"spec_verify_ct": 6, "finish_reason": {"type": "length"}}
        state.feed({"text": "x" * len(ids), "output_ids": list(ids), "meta_info": meta})
    totals = state.totals()
    assert (totals.steps, totals.past_cut_max) == (7, 0)
    assert reconcile(state.steps, totals, 3)[1].steps == 7

    class Output:  # a TensorRT-LLM RequestOutput's counters
        decoding_iter = 7
        outputs = []

    totals = request_totals(Output(), CUT_TOKENS)
    assert (totals.steps, totals.past_cut_max) == (7, 0)
    detail, counted = reconcile(CUT_STEPS, totals, 3)
    assert detail == "exact" and counted.steps == 7
