"""records.jsonl: durable appends, torn tails from killed writers, damaged lines."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.records import RecordWriter, TurnRecord, drop_torn_tail, read_records

RECORD = TurnRecord(
    question_id=81,
    category="writing",
    turn=1,
    prompt_tokens=5,
    steps=[1, 3],
    prefill_step=True,
    output_tokens=4,
    token_ids=[1, 2, 3, 4],
    text="abcd",
    finish_reason="stop",
    duration_s=0.5,
)


def test_append_and_read_back(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordWriter(path) as writer:
        writer.append(RECORD)
        writer.append(RECORD.model_copy(update={"turn": 2}))
    assert [r.key for r in read_records(path)] == [(81, 1), (81, 2)]


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(RECORD.model_dump_json() + "\n" + RECORD.model_dump_json()[:40])
    assert len(read_records(path)) == 1
    assert drop_torn_tail(path)
    with RecordWriter(path) as writer:
        writer.append(RECORD.model_copy(update={"turn": 2}))
    assert [r.turn for r in read_records(path)] == [1, 2]


def test_damage_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("{oops\n" + RECORD.model_dump_json() + "\n")
    with pytest.raises(BenchError, match="line 1: not valid JSON"):
        read_records(path)
    path.write_text('{"question_id": 1}\n')
    with pytest.raises(BenchError, match="line 1"):
        read_records(path)
