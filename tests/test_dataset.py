"""MT-Bench loading: the pinned offline copy, FastChat files, HF schemas, validation, subsets."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.config import DatasetConfig
from bench.dataset import (
    CANONICAL_SHA256,
    CATEGORIES,
    load_default_questions,
    load_questions,
    read_hf_dataset,
    read_questions_jsonl,
    select,
    spread_limit,
)
from bench.errors import BenchError
from tests.conftest import write_questions


def test_default_is_the_canonical_fastchat_file():
    source, questions = load_questions(DatasetConfig())
    assert source.sha256 == CANONICAL_SHA256
    assert len(questions) == 80
    assert Counter(q.category for q in questions) == {c: 10 for c in CATEGORIES}
    ids = {c: sorted(q.question_id for q in questions if q.category == c) for c in CATEGORIES}
    assert ids["writing"] == list(range(81, 91)) and ids["humanities"] == list(range(151, 161))
    assert all(len(q.turns) == 2 for q in questions)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question_id": 1, "category": "writing", "turns": ["a"]}', "exactly two turns, found 1"),
        (
            '{"question_id": 1, "category": "poetry", "turns": ["a", "b"]}',
            "unknown category 'poetry'",
        ),
        ('{"question_id": 1, "category": "writing", "turns": ["a", ""]}', "non-empty string"),
        ('{"question_id": "x", "category": "writing", "turns": ["a", "b"]}', "question_id"),
        ('{"question_id": 1, "category": "writing", "turns": ["a", "b"]', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_question_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    good = '{"question_id": 7, "category": "math", "turns": ["a", "b"]}'
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(BenchError) as err:
        read_questions_jsonl(path)
    assert f"{path}, line 2" in str(err.value)
    assert message in str(err.value)


def test_duplicate_ids_and_missing_file(tmp_path):
    path = tmp_path / "q.jsonl"
    row = '{"question_id": 7, "category": "math", "turns": ["a", "b"]}'
    path.write_text(row + "\n" + row + "\n")
    with pytest.raises(BenchError, match="question_id 7 appears more than once"):
        read_questions_jsonl(path)
    with pytest.raises(BenchError, match="does not exist"):
        read_questions_jsonl(tmp_path / "nope.jsonl")


def test_limit_spreads_over_categories(tmp_path):
    questions = read_questions_jsonl(write_questions(tmp_path / "q.jsonl", 3)).questions
    eight = spread_limit(list(questions), 8)
    assert [q.category for q in eight] == list(CATEGORIES)
    ten = spread_limit(list(questions), 10)
    assert Counter(q.category for q in ten) == {
        **{c: 1 for c in CATEGORIES},
        "writing": 2,
        "roleplay": 2,
    }
    assert len(spread_limit(list(questions), 100)) == 24


def test_select_by_ids_categories_and_limit(tmp_path):
    questions = read_questions_jsonl(write_questions(tmp_path / "q.jsonl", 2)).questions
    chosen = select(questions, DatasetConfig(question_ids=[82, 111, 81]))
    assert [q.question_id for q in chosen] == [81, 82, 111]
    chosen = select(questions, DatasetConfig(categories=["math", "coding"], limit=3))
    assert Counter(q.category for q in chosen) == {"math": 2, "coding": 1}
    with pytest.raises(BenchError, match="unknown categories"):
        select(questions, DatasetConfig(categories=["poetry"]))
    with pytest.raises(BenchError, match="not in the dataset"):
        select(questions, DatasetConfig(question_ids=[5]))


def _save_local_dataset(folder, rows):
    """A local dataset folder that `datasets.load_dataset` reads like a hub dataset."""
    datasets = pytest.importorskip("datasets")
    folder.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train.parquet"))
    return str(folder)


def test_hf_schema_fastchat_fields(tmp_path):
    canonical = load_default_questions()
    rows = [
        {"question_id": q.question_id, "category": q.category, "turns": list(q.turns)}
        for q in canonical[:16]
    ]
    loaded = read_hf_dataset(_save_local_dataset(tmp_path / "philschmid", rows), "train")
    assert [q.question_id for q in loaded.questions] == [q.question_id for q in canonical[:16]]


def test_hf_schema_h4_prompts_get_canonical_ids(tmp_path):
    canonical = load_default_questions()
    picked = [canonical[0], canonical[35], canonical[79]]
    rows = [
        {"prompt": list(q.turns), "prompt_id": f"hash{i}", "category": q.category, "reference": []}
        for i, q in enumerate(picked)
    ]
    loaded = read_hf_dataset(_save_local_dataset(tmp_path / "h4", rows), "train")
    assert [q.question_id for q in loaded.questions] == [q.question_id for q in picked]
    assert loaded.questions[1].turns == picked[1].turns


def test_hf_unknown_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(BenchError, match="could not load dataset"):
        read_hf_dataset(str(tmp_path / "no-such-dataset"), "train")


def test_question_file_source_is_hashed(tmp_path):
    path = write_questions(tmp_path / "q.jsonl", 1)
    source, chosen = load_questions(DatasetConfig(questions=str(path)))
    assert len(chosen) == 8 and len(source.sha256) == 64
    assert json.loads(path.read_text().splitlines()[0])["question_id"] == 81
