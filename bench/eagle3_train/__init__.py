"""Training an EAGLE-3 head for a target we can run here, one resumable stage per module.

    prompts   ShareGPT first turns, deduplicated, MT-Bench kept out, shuffled (prompts.py)
    generate  the target's own greedy answers to them (generate.py)
    vocab     the draft vocabulary: the most frequent response tokens (vocab.py)
    capture   the target's hidden states per answer, on disk (capture.py)
    train     the head, with the training-time test, on captured target states (train.py)
    export    the published checkpoint layout the engines load (export.py)
    curve     the card AL of a run's checkpoints, measured by `bench run` (curve.py)

Every stage reads and writes one work folder (`work_dir`, in the bench cache by default,
never in the repository): append-only JSONL keyed by sample id, checkpoints that resume
exactly, so an interrupted stage is rerun with the same command. docs/eagle3-training.md
says how to run them and what each cost here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def work_dir(name: str) -> Path:
    """The default work folder of a head for config `name`: `<bench cache>/eagle3/<name>`."""
    from bench.artifacts import cache_dir

    return cache_dir() / "eagle3" / name


def training_answers(folder: Path) -> list[dict[str, Any]]:
    """The generated answers a head may learn from: every row of responses.jsonl whose
    ShareGPT conversation is in the training partition. Conversations of the benchmark
    partition (`bench.sharegpt.split_of`) are what `--dataset sharegpt` samples, so they
    never train a head, even where an older prompts file asked them."""
    from bench.sharegpt import split_of

    return [row for row in read_jsonl(folder / "responses.jsonl") if split_of(row["id"]) == "train"]


def is_heldout(sample_id: str, percent: int) -> bool:
    """Whether a sample is held out: its id hashes into the lowest `percent` of 100 buckets
    (fixed per id, however many samples come later)."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest(), 16) % 100 < percent


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of an append-only JSONL file; a torn last line (a killed writer) is skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return
            if line.strip():
                yield json.loads(line)
