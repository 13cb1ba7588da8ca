"""From a question (and the model's own turn-1 answer) to prompt token ids.

The chat template is applied here, on the client side, with the target's own tokenizer, so
every engine sees the same token ids. `reasoning_effort` is handed to the template; whether
the template actually uses it is found out by rendering with two values and comparing, and
recorded. Turn 2 gets the model's turn-1 answer back as the assistant message, with its
reasoning removed by default (`turn2_history: final`) or as generated (`raw`).
"""

from __future__ import annotations

import hashlib
import re
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
    turn1_output: str | None = None,
) -> list[Message]:
    """The chat messages for `turn` (1 or 2) of `question`.

    Turn 2 requires the model's own turn-1 output, passed through the history policy.
    """
    messages = opening_messages(question.turns[0], config)
    if turn == 2:
        if turn1_output is None:
            raise ValueError("turn 2 needs the model's turn-1 output")
        history = final_answer(turn1_output) if config.turn2_history == "final" else turn1_output
        messages.append({"role": "assistant", "content": history})
        messages.append({"role": "user", "content": question.turns[1]})
    elif turn != 1:
        raise ValueError(f"MT-Bench has turns 1 and 2, not {turn}")
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
