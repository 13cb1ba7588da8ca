"""Stage 1: training prompts from ShareGPT's first human turns (bench/sharegpt.py).

Each prompt is asked exactly as the benchmark asks MT-Bench's turn 1 (the run config's
conversation settings, the target's chat template), so the head learns on the token
layout it will draft in. Kept: non-empty first turns, deduplicated on normalised text,
none overlapping an MT-Bench question (either turn), at most `max_prompt_tokens` template
tokens, from ShareGPT's training partition only (the benchmark partition is what
`--dataset sharegpt` samples); then shuffled with a fixed seed. Output: `prompts.jsonl` ({id, prompt_ids}) and
`prompts.json` (the counts of every filter and the settings), written whole at once.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rundir import write_text_atomic

OVERLAP_NGRAM_WORDS = 10
"""A prompt sharing this many consecutive (normalised) words with an MT-Bench turn is
dropped: long enough that common phrases do not match, short enough to catch a question
pasted into a longer prompt."""
CONTAINED_MIN_WORDS = 6
"""An MT-Bench turn of at least this many words found whole inside a prompt drops it."""


def normalise(text: str) -> str:
    """Lower case, runs of anything but letters and digits as one space."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class MtBenchOverlap:
    """Decides whether a prompt overlaps any of the given MT-Bench turns, and says how."""

    def __init__(self, turns: Iterable[str]) -> None:
        self.exact = set()
        self.contained = []
        self.ngrams: set[tuple[str, ...]] = set()
        for turn in turns:
            text = normalise(turn)
            self.exact.add(text)
            if len(text.split()) >= CONTAINED_MIN_WORDS:
                self.contained.append(f" {text} ")
            self.ngrams |= _ngrams(text.split(), OVERLAP_NGRAM_WORDS)

    def reason(self, prompt: str) -> str | None:
        """None, or which check matched: exact, contains, ngram."""
        text = normalise(prompt)
        if text in self.exact:
            return "exact"
        padded = f" {text} "
        if any(turn in padded for turn in self.contained):
            return "contains"
        if _ngrams(text.split(), OVERLAP_NGRAM_WORDS) & self.ngrams:
            return "ngram"
        return None


@dataclass(frozen=True)
class PromptSettings:
    max_prompt_tokens: int = 512
    """Template tokens per prompt at most (system text, markers and the question)."""
    seed: int = 0
    """The shuffle's seed."""


def build_prompts(
    conversations: list[tuple[str, str]],
    mtbench_turns: Iterable[str],
    encode: Any,
    settings: PromptSettings,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows {id, prompt_ids} in shuffled order, and the counts of each filter.

    `conversations`: (id, first human turn) in source order; `encode(text)`: the prompt's
    token ids, chat template applied."""
    overlap = MtBenchOverlap(mtbench_turns)
    counts: dict[str, int] = {"conversations": len(conversations), "empty": 0}
    counts |= {"duplicate_text": 0, "duplicate_id": 0, "too_long": 0}
    dropped: dict[str, int] = {"exact": 0, "contains": 0, "ngram": 0}
    seen_text: set[str] = set()
    seen_id: set[str] = set()
    kept = []
    for conversation_id, text in conversations:
        key = normalise(text)
        if not key:
            counts["empty"] += 1
            continue
        if key in seen_text:
            counts["duplicate_text"] += 1
            continue
        seen_text.add(key)
        if conversation_id in seen_id:
            counts["duplicate_id"] += 1
            continue
        seen_id.add(conversation_id)
        why = overlap.reason(text)
        if why is not None:
            dropped[why] += 1
            continue
        ids = encode(text)
        if len(ids) > settings.max_prompt_tokens:
            counts["too_long"] += 1
            continue
        kept.append({"id": conversation_id, "prompt_ids": ids})
    random.Random(settings.seed).shuffle(kept)
    counts["mtbench_overlap"] = sum(dropped.values())
    counts["kept"] = len(kept)
    summary = {
        "counts": counts,
        "mtbench_overlap_by_check": dropped,
        "checks": {
            "exact": "normalised text equal to an MT-Bench turn",
            "contains": f"an MT-Bench turn of >= {CONTAINED_MIN_WORDS} words inside the prompt",
            "ngram": f"a shared run of {OVERLAP_NGRAM_WORDS} normalised words",
        },
        "settings": {"max_prompt_tokens": settings.max_prompt_tokens, "seed": settings.seed},
        "prompt_tokens": sum(len(row["prompt_ids"]) for row in kept),
    }
    return kept, summary


def write_prompts(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    write_text_atomic(folder / "prompts.jsonl", lines)
    write_text_atomic(folder / "prompts.json", json.dumps(summary, indent=2) + "\n")


def make_prompts(config: Any, folder: Path, settings: PromptSettings) -> dict[str, Any]:
    """Build the prompt set for `config`'s target from the pinned ShareGPT file."""
    from bench.artifacts import sha256_file
    from bench.conversation import ChatFormat, load_tokenizer, opening_messages
    from bench.dataset import MTBENCH_WHEEL, load_default_questions
    from bench.sharegpt import SHAREGPT_WHEEL, first_human_turns, split_of

    chat = ChatFormat(load_tokenizer(config.target), config.conversation)
    turns = [turn for q in load_default_questions() for turn in q.turns]

    def encode(text: str) -> list[int]:
        return chat.prompt_ids(opening_messages(text, config.conversation))

    # The benchmark partition is what `--dataset sharegpt` samples: never a training prompt.
    opening = first_human_turns()
    trainable = [(i, text) for i, text in opening if split_of(i) == "train"]
    rows, summary = build_prompts(trainable, turns, encode, settings)
    summary["dropped_benchmark_partition"] = len(opening) - len(trainable)
    summary["source"] = {
        "sharegpt": f"{SHAREGPT_WHEEL.package}=={SHAREGPT_WHEEL.version}:{SHAREGPT_WHEEL.member}",
        "sharegpt_sha256": SHAREGPT_WHEEL.sha256,
        "mtbench": f"{MTBENCH_WHEEL.package}=={MTBENCH_WHEEL.version}:{MTBENCH_WHEEL.member}",
        "chat_template_sha256": chat.template_sha256,
    }
    write_prompts(folder, rows, summary)
    summary["prompts_sha256"] = sha256_file(folder / "prompts.jsonl")
    write_text_atomic(folder / "prompts.json", json.dumps(summary, indent=2) + "\n")
    return summary
