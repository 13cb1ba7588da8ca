"""From a question (and the model's own turn-1 answer) to prompt token ids.

The chat template is applied here, on the client side, with the target's own tokenizer, so
every engine sees the same token ids. `reasoning_effort` is handed to the template; whether
the template actually uses it is found out by rendering with two values and comparing, and
recorded. Turn t gets the model's own answers to turns 1..t-1 back as the assistant messages (MT-Bench:
turn 2 gets turn 1's), with their reasoning removed by default (`turn2_history: final`) or
as generated (`raw`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.config import ConversationConfig, TargetConfig
from bench.dataset import Question
from bench.errors import BenchError

Message = dict[str, str]

_THINK_CLOSE = "</think>"
_HARMONY_FINAL = re.compile(
    r"<\|channel\|>final<\|message\|>(.*?)(?:<\|return\|>|<\|end\|>|$)", re.S
)


def final_answer(text: str) -> str:
    """The answer part of a generated text, with any reasoning removed.

    - `<think>…</think>answer` (Kimi, DeepSeek, Qwen): the text after the last `</think>`;
      an unclosed `<think>` (reasoning cut by max_tokens) leaves no answer: "".
    - gpt-oss harmony channels: the `final` channel's message; analysis only: "".
    - anything else is already an answer and is returned as it is.
    """
    if _THINK_CLOSE in text:
        return text.rsplit(_THINK_CLOSE, 1)[1].strip()
    if "<think>" in text:
        return ""
    if "<|channel|>" in text:
        finals = _HARMONY_FINAL.findall(text)
        return finals[-1].strip() if finals else ""
    return text.strip()


_HARMONY_FINAL_HEADER = re.compile(r"(?:<\|start\|>assistant)?<\|channel\|>final")


def reasoning_end(text: str) -> int:
    """Characters of `text` up to the end of its reasoning, the boundary `final_answer`
    cuts at: after the last `</think>`; all of it for an unclosed `<think>` or a gpt-oss
    analysis channel with no final message; before the header of gpt-oss's last `final`
    channel (`<|start|>assistant<|channel|>final`) when analysis came before it; 0 when
    the text has no reasoning."""
    if _THINK_CLOSE in text:
        return text.rindex(_THINK_CLOSE) + len(_THINK_CLOSE)
    if "<think>" in text:
        return len(text)
    finals = list(_HARMONY_FINAL_HEADER.finditer(text))
    if finals:
        start = finals[-1].start()
        return start if "<|channel|>analysis" in text[:start] else 0
    return len(text) if "<|channel|>analysis" in text else 0


def opening_messages(text: str, config: ConversationConfig) -> list[Message]:
    """The messages of a conversation's first turn: the system prompt, if any, then `text`
    (MT-Bench's turn 1, or any other prompt asked the same way)."""
    messages: list[Message] = []
    if config.system_prompt:
        messages.append({"role": "system", "content": config.system_prompt})
    messages.append({"role": "user", "content": text})
    return messages


def turn_messages(
    question: Question,
    turn: int,
    config: ConversationConfig,
    history: str | Sequence[str] | None = None,
) -> list[Message]:
    """The chat messages for `turn` (1 … the question's turn count) of `question`.

    Turn t > 1 requires the model's own outputs of turns 1..t-1 (`history`; a single
    string for MT-Bench's turn 2), each passed through the history policy and given back
    as the assistant's message after its user turn.
    """
    if not 1 <= turn <= len(question.turns):
        raise ValueError(
            f"question {question.question_id} has turns 1..{len(question.turns)}, not {turn}"
        )
    earlier = [history] if isinstance(history, str) else list(history or [])
    if len(earlier) < turn - 1:
        raise ValueError(f"turn {turn} needs the model's outputs of turns 1..{turn - 1}")
    messages = opening_messages(question.turns[0], config)
    for index in range(turn):
        if index:
            messages.append({"role": "user", "content": question.turns[index]})
        if index < turn - 1:
            output = earlier[index]
            answer = final_answer(output) if config.turn2_history == "final" else output
            messages.append({"role": "assistant", "content": answer})
    return messages


@dataclass
class ChatFormat:
    """The target's tokenizer and chat template, with this run's template settings."""

    tokenizer: Any
    config: ConversationConfig
    _effort_used: bool | None = field(default=None, init=False)

    def render_text(self, messages: list[Message], reasoning_effort: str | None = None) -> str:
        kwargs = dict(self.config.chat_template_kwargs)
        effort = reasoning_effort if reasoning_effort is not None else self.config.reasoning_effort
        if effort is not None:
            kwargs["reasoning_effort"] = effort
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **kwargs
            )
        except Exception as err:  # jinja errors from a model's own template
            raise BenchError(f"the chat template failed to render: {err}") from None

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of the rendered conversation, ending with the generation prompt."""
        text = self.render_text(messages)
        # The template already wrote any BOS it wants; adding special tokens would double it.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        """Generated text as the model wrote it, special tokens (e.g. `<think>`) kept."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def reasoning_tokens(self, token_ids: list[int]) -> int | None:
        """Output tokens up to the end of the reasoning (`reasoning_end` of the decoded
        text): the fewest leading tokens whose decoded text reaches the boundary, found by
        bisection (decoding a longer prefix never gives a shorter text). None when the
        engine returned no token ids (the split then reads the turn's text alone)."""
        if not token_ids:
            return None
        end = reasoning_end(self.decode(token_ids))
        if end == 0:
            return 0
        low, high = 1, len(token_ids)
        while low < high:
            middle = (low + high) // 2
            if len(self.decode(token_ids[:middle])) >= end:
                high = middle
            else:
                low = middle + 1
        return low

    @property
    def template_sha256(self) -> str:
        template = getattr(self.tokenizer, "chat_template", None) or ""
        if isinstance(template, dict):
            template = "\n".join(f"{k}\n{v}" for k, v in sorted(template.items()))
        return hashlib.sha256(template.encode("utf-8")).hexdigest()

    @property
    def reasoning_effort_used(self) -> bool:
        """True when the template renders differently for two reasoning efforts."""
        if self._effort_used is None:
            probe = [{"role": "user", "content": "Hello"}]
            self._effort_used = self.render_text(probe, "low") != self.render_text(probe, "high")
        return self._effort_used

    @property
    def stop_token_ids(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return {eos} if isinstance(eos, int) else set()


def load_tokenizer(target: TargetConfig) -> Any:
    """The target's tokenizer (or `target.tokenizer`), from the same files as the weights."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BenchError(
            "applying the chat template needs transformers: pip install 'bench[reference]'"
        ) from None
    from bench.target import pretrained_source, resolve_target

    if target.trust_remote_code:
        print(f"note: trusting the Python code shipped with {target.tokenizer or target.name}")
    try:
        if target.tokenizer is not None:
            return AutoTokenizer.from_pretrained(
                target.tokenizer, trust_remote_code=target.trust_remote_code
            )
        location, kwargs = pretrained_source(target, resolve_target(target))
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except BenchError:
        raise
    except Exception as err:
        raise BenchError(f"could not load the tokenizer of {target.name}: {err}") from None
