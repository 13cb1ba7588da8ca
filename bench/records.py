"""Turn records: the raw material of every number, one JSON line per (question, turn).

`records.jsonl` is append-only: each finished turn is written, flushed and fsynced before
the next one starts, so a killed run loses nothing it finished and `--resume` continues
where it stopped. A torn last line (the process died mid-write) is ignored on reading;
damage anywhere else is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from bench.engines import FinishReason, Generation
from bench.errors import BenchError

__all__ = ["FinishReason", "Generation", "TurnRecord", "RecordWriter", "read_records"]

RECORD_SCHEMA_VERSION = 2
"""2: the engine's own per-request `totals` and `step_detail` beside the per-step counts;
`output_tokens` and `step_count` derived from them. Version 1 records read as before."""


class TurnRecord(Generation):
    """One line of records.jsonl: the engine's `Generation` for one (question, turn)."""

    schema_version: int = RECORD_SCHEMA_VERSION
    question_id: int
    category: str
    turn: int = Field(ge=1)
    """1 … the question's turn count (MT-Bench: 1 or 2)."""
    prompt_tokens: int
    error: str | None = None
    """Why the turn failed; a failed turn is kept, never averaged in, and redone on resume."""
    reasoning_tokens: int | None = None
    """Output tokens up to the end of the turn's reasoning (its close marker included):
    0 when the turn has none, all of them when the reasoning never closed; None in records
    written before the split existed (docs/metrics.md "Reasoning and answer apart")."""

    @classmethod
    def of(
        cls, question_id: int, category: str, turn: int, prompt_tokens: int, generation: Generation
    ) -> TurnRecord:
        """The record of a turn the engine finished."""
        return cls(
            question_id=question_id,
            category=category,
            turn=turn,
            prompt_tokens=prompt_tokens,
            **generation.model_dump(exclude={"output_tokens", "step_count"}),
        )

    @classmethod
    def failed(
        cls, question_id: int, category: str, turn: int, prompt_tokens: int, error: str
    ) -> TurnRecord:
        """The record of a turn the engine could not finish."""
        return cls(
            question_id=question_id,
            category=category,
            turn=turn,
            prompt_tokens=prompt_tokens,
            steps=[],
            prefill_step=False,
            step_detail="none",
            token_ids=[],
            text="",
            finish_reason="error",
            duration_s=0.0,
            error=error,
        )

    @property
    def ok(self) -> bool:
        return self.error is None and self.finish_reason != "error"

    @property
    def key(self) -> tuple[int, int]:
        return (self.question_id, self.turn)


class RecordWriter:
    """Appends one JSON object per line durably (flushed and fsynced per row), after cutting
    a partial last line a killed writer left: a run's records, a training log, answers. One
    writer per file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(path)
        self._handle = open(path, "a", encoding="utf-8")

    def append(self, row: BaseModel | dict[str, Any]) -> None:
        if isinstance(row, BaseModel):
            line = row.model_dump_json()
        else:
            line = json.dumps(row, separators=(",", ":"))
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[TurnRecord]:
    """All records of a run, in file order."""
    if not path.is_file():
        raise BenchError(f"{path} does not exist")
    lines = path.read_text(encoding="utf-8").split("\n")
    records: list[TurnRecord] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        is_last = all(not rest.strip() for rest in lines[number:])
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if is_last and not path.read_bytes().endswith(b"\n"):
                break  # torn final write of a killed run
            raise BenchError(f"{path}, line {number}: not valid JSON") from None
        try:
            records.append(TurnRecord.model_validate(data))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise BenchError(f"{path}, line {number}: {field}: {first['msg']}") from None
    return records


def latest_by_turn(records: list[TurnRecord]) -> dict[tuple[int, int], TurnRecord]:
    """The last record of each (question, turn): a resumed turn supersedes its failure."""
    latest: dict[tuple[int, int], TurnRecord] = {}
    for record in records:
        latest[record.key] = record
    return latest


def drop_torn_tail(path: Path) -> bool:
    """Cut a partial last line left by a killed writer, before appending again."""
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    return True
