"""Reasoning and answer apart: the boundary in text and tokens, the worked example of
docs/metrics.md, a straddling step, turns without reasoning, totals-only turns."""

from __future__ import annotations

import pytest

from bench.config import ConversationConfig
from bench.conversation import ChatFormat, reasoning_end
from bench.engines import EngineTotals
from bench.segments import segment_records, split_steps, turn_status
from bench.summary import summarize
from tests.conftest import turn

# docs/metrics.md, "Reasoning and answer apart": k = 3, one turn of 17 tokens whose first
# 9 are reasoning (`</think>` is token 8). Steps start at 0, 1, 5, 7, 10, 11, 15; the step
# at 7 emits tokens 7, 8, 9 and straddles the boundary: it is a reasoning step.
STEPS = [1, 4, 2, 3, 1, 4, 2]
BOUNDARY = 9


def test_split_steps_places_each_step_where_it_starts():
    assert split_steps(STEPS, BOUNDARY) == ([0, 1, 2, 3], [4, 5, 6])
    # the boundary one token later or earlier moves no step but the straddling one's owner
    assert split_steps(STEPS, 7) == ([0, 1, 2], [3, 4, 5, 6])
    assert split_steps(STEPS, 8) == ([0, 1, 2, 3], [4, 5, 6])
    assert split_steps(STEPS, 0) == ([], list(range(7)))


def test_worked_example():
    record = turn(81, 1, STEPS, text="<think>…</think>answer", reasoning_tokens=BOUNDARY)
    summary = summarize([record], draft_len=3, expected_turns={81: 1})
    group = summary.segments.overall
    assert (group.split_turns, group.no_reasoning_turns, group.not_split_turns) == (1, 0, 0)
    reasoning, answer, both = (group.segments[s] for s in ("reasoning", "answer", "both"))
    assert (reasoning.output_tokens, reasoning.steps, reasoning.decode_steps) == (10, 4, 3)
    assert reasoning.acceptance_length == pytest.approx(10 / 4)  # 2.500
    assert reasoning.decode_acceptance_length == pytest.approx(9 / 3)  # 3.000
    assert reasoning.histogram == [0, 1, 1, 1]
    assert reasoning.joint_acceptance == pytest.approx([1, 2 / 3, 1 / 3])
    assert reasoning.conditional_acceptance == pytest.approx([1, 2 / 3, 1 / 2])
    assert reasoning.draft_acceptance_rate == pytest.approx(6 / 9)
    # the answer has no prefill step: its card and decode AL agree
    assert (answer.output_tokens, answer.steps, answer.decode_steps) == (7, 3, 3)
    assert answer.acceptance_length == pytest.approx(7 / 3)  # 2.333
    assert answer.decode_acceptance_length == pytest.approx(7 / 3)
    assert answer.histogram == [1, 1, 0, 1]
    assert answer.joint_acceptance == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert answer.conditional_acceptance == pytest.approx([2 / 3, 1 / 2, 1])
    assert both.acceptance_length == pytest.approx(17 / 7)  # 2.429, the turn's own AL
    assert both.decode_acceptance_length == pytest.approx(16 / 6)
    assert both.histogram == [1, 2, 1, 2]
    assert both.draft_acceptance_rate == pytest.approx(10 / 18)
    assert both.conditional_acceptance == pytest.approx([5 / 6, 3 / 5, 2 / 3])
    assert answer.draft_acceptance_rate == pytest.approx(4 / 9)
    assert both.acceptance_length == summary.overall.acceptance_length
    assert summary.categories["writing"].acceptance_length == pytest.approx(17 / 7)
    assert summary.segments.categories["writing"].segments["answer"].steps == 3


def test_turns_without_reasoning_say_so_and_stay_out_of_the_split():
    plain = turn(81, 1, [1, 2, 2], text="just an answer", reasoning_tokens=0)
    old = turn(81, 2, [1, 3], text="an answer from before the boundary was recorded")
    summary = summarize([plain, old], draft_len=3)
    group = summary.segments.overall
    assert (group.split_turns, group.no_reasoning_turns, group.not_split_turns) == (0, 2, 0)
    assert group.segments["reasoning"].n_questions == 0
    assert group.segments["reasoning"].acceptance_length is None
    assert [turn_status(r) for r in (plain, old)] == ["no_reasoning", "no_reasoning"]


def test_totals_only_turns_are_split_only_where_that_is_honest():
    totals = EngineTotals(output_tokens=12, steps=5, source="test")
    closed = turn(
        81, 1, [], step_detail="none", totals=totals, reasoning_tokens=6, text="<think>a</think>b"
    )
    assert turn_status(closed) == "not_split" and segment_records(closed) == {}
    unclosed = turn(
        81, 2, [], step_detail="none", totals=totals, reasoning_tokens=12, text="<think>a b"
    )
    assert turn_status(unclosed) == "all_reasoning"
    summary = summarize([closed, unclosed], draft_len=3)
    group = summary.segments.overall
    assert (group.split_turns, group.not_split_turns) == (1, 1)
    reasoning = group.segments["reasoning"]
    assert reasoning.acceptance_length == pytest.approx(12 / 5)  # from the totals alone
    assert reasoning.step_detail_turns == 0 and reasoning.histogram == [0, 0, 0, 0]
    assert group.segments["answer"].n_questions == 0


@pytest.mark.parametrize(
    ("text", "end"),
    [
        ("plain answer", 0),
        ("<think>why</think>Answer", len("<think>why</think>")),
        ("<think>a</think>b<think>c</think>d", len("<think>a</think>b<think>c</think>")),
        ("<think>cut short", len("<think>cut short")),
        (
            "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final"
            "<|message|>Hi<|return|>",
            len("<|channel|>analysis<|message|>hmm<|end|>"),
        ),
        ("<|channel|>analysis<|message|>cut", len("<|channel|>analysis<|message|>cut")),
        ("<|channel|>final<|message|>Hi", 0),
    ],
)
def test_reasoning_end_in_text(text, end):
    assert reasoning_end(text) == end


def test_reasoning_tokens_is_the_boundary_in_tokens(smol_tokenizer):
    chat = ChatFormat(smol_tokenizer, ConversationConfig())
    text = "<think>Add the two numbers first.</think>The sum is 4."
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    boundary = chat.reasoning_tokens(ids)
    assert chat.decode(ids[:boundary]).endswith("</think>")
    assert not chat.decode(ids[: boundary - 1]).endswith("</think>")
    assert chat.reasoning_tokens(smol_tokenizer("No reasoning.")["input_ids"]) == 0
    assert chat.reasoning_tokens([]) is None  # no ids from the engine: the text decides
