"""Chat template on the client side, reasoning-effort detection, turn-2 history policy."""

from __future__ import annotations

import copy

import pytest

from bench.config import ConversationConfig
from bench.conversation import ChatFormat, final_answer, turn_messages
from bench.dataset import Question

QUESTION = Question(question_id=81, category="writing", turns=("Write a haiku.", "Now a limerick."))


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<think>count syllables</think>\n\nAn old silent pond", "An old silent pond"),
        ("<think>a</think>draft<think>b</think> final", "final"),
        ("<think>cut off by max_tokens", ""),
        (
            "<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>",
            "Hi!",
        ),
        ("<|channel|>analysis<|message|>only thinking", ""),
        ("  plain answer \n", "plain answer"),
    ],
)
def test_final_answer_removes_reasoning(text, answer):
    assert final_answer(text) == answer


def test_turn_two_carries_the_turn_one_output_by_policy():
    raw = "<think>hmm</think>Leaves fall"
    final = turn_messages(QUESTION, 2, ConversationConfig(), raw)
    assert final == [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Leaves fall"},
        {"role": "user", "content": "Now a limerick."},
    ]
    kept = turn_messages(QUESTION, 2, ConversationConfig(turn2_history="raw"), raw)
    assert kept[1]["content"] == raw
    with_system = turn_messages(QUESTION, 1, ConversationConfig(system_prompt="Be brief."))
    assert with_system[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValueError, match=r"turn 2 needs the model's outputs of turns 1\.\.1"):
        turn_messages(QUESTION, 2, ConversationConfig())


def test_prompt_ids_are_the_rendered_template(smol_tokenizer):
    chat = ChatFormat(smol_tokenizer, ConversationConfig())
    messages = turn_messages(QUESTION, 2, ConversationConfig(), "Leaves fall")
    ids = chat.prompt_ids(messages)
    text = smol_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system")  # the template's default system prompt
    assert text.count("<|im_start|>") == 5  # system, user, assistant, user, generation
    assert "<|im_start|>assistant\nLeaves fall<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")  # generation prompt
    assert len(chat.template_sha256) == 64
    assert chat.stop_token_ids == {smol_tokenizer.eos_token_id}


def test_reasoning_effort_use_is_detected(smol_tokenizer):
    plain = ChatFormat(smol_tokenizer, ConversationConfig(reasoning_effort="medium"))
    assert plain.reasoning_effort_used is False  # SmolLM2's template ignores it
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{{ 'Reasoning: ' + (reasoning_effort or 'none') + '\\n' }}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    aware = ChatFormat(tokenizer, ConversationConfig(reasoning_effort="high"))
    assert aware.reasoning_effort_used is True
    assert aware.render_text([{"role": "user", "content": "x"}]).startswith("Reasoning: high")
