"""Run directories as tidy pandas DataFrames, for notebooks and scripts.

Everything comes from a run's `manifest.json` and `records.jsonl`; every figure is computed
by `bench.metrics` (assembled into `summary.json` by `bench.summary`), never here. This module only
loads, labels and reshapes: one row per step, turn, question, and run × category, plus the
histogram and per-position rates in long form, the model-card table beside a reference,
and run-against-baseline differences with a paired bootstrap.

pandas is needed here only (`pip install 'bench[analysis]'`); the rest of bench runs
without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from bench.config import REPO_ROOT
from bench.dataset import Question, load_questions
from bench.errors import BenchError
from bench.metrics import (
    GroupSummary,
    RateBlock,
    acceptance_length_of_totals,
    decode_acceptance_length_by_position,
    paired_difference_ci95,
    step_positions,
)
from bench.records import TurnRecord, latest_by_turn, read_records
from bench.references import ReferenceTable, load_reference
from bench.rundir import Manifest, RunDir
from bench.summary import Summary, summarize_run
from bench.tables import OVERALL, lookup

RUN_DIRS_ENV = "BENCH_RUN_DIRS"
"""Run directories for the notebook, separated by os.pathsep (':' on Linux)."""
DEFAULT_RESULTS = REPO_ROOT / "results"
ALL = "all"
"""The `turn` value of rows that pool both turns; `category` "overall" is every question."""


# --- loading ---------------------------------------------------------------------------


@dataclass
class Run:
    """One run directory, loaded: its manifest, its records and their summary."""

    path: Path
    manifest: Manifest
    records: list[TurnRecord]
    label: str
    """How the run is named in every frame (its run id; made unique among loaded runs)."""
    questions: dict[int, Question] = field(default_factory=dict)
    """Question texts by id, when the run's dataset could be read again unchanged."""

    @cached_property
    def summary(self) -> Summary:
        """`bench.summary.summarize` over the records: the same figures as summary.json."""
        return summarize_run(self.records, self.manifest, None)

    @property
    def draft_len(self) -> int:
        return self.manifest.config.draft_len

    @property
    def turns(self) -> list[TurnRecord]:
        """The record that counts for each (question, turn): the latest, as in summarize."""
        latest = latest_by_turn(self.records)
        return [latest[key] for key in sorted(latest)]

    @property
    def counted_ids(self) -> set[int]:
        return {q.question_id for q in self.summary.questions}

    def reference(self, path: str | Path | None = None) -> ReferenceTable | None:
        """A published table to set beside the run: `path` when given (as is, else relative
        to the repository root, so a notebook in notebooks/ can say
        "configs/references/x.yaml"), otherwise the one the run was configured against.

        The config stores an absolute path; a run made on another machine is looked up by
        file name under this checkout's configs/references/ instead. None when the run has
        no reference or its file is not here.
        """
        if path is not None:
            given = Path(path).expanduser()
            return load_reference(given if given.is_file() else REPO_ROOT / given)
        if not self.manifest.config.reference:
            return None
        stored = Path(self.manifest.config.reference)
        for candidate in (stored, REPO_ROOT / "configs" / "references" / stored.name):
            if candidate.is_file():
                return load_reference(candidate)
        return None

    def info(self) -> dict[str, object]:
        """The run's identity columns, carried by the run × category rows."""
        m, c = self.manifest, self.manifest.config
        return {
            "run": self.label,
            "dataset": m.dataset.name,
            "engine": m.engine.name if m.engine else c.engine.kind,
            "model": c.target.name,
            "draft_len": c.draft_len,
            "reasoning_effort": c.conversation.reasoning_effort,
            "temperature": c.sampling.temperature,
            "max_tokens": c.sampling.max_tokens,
            "commit": m.git.get("commit"),
            "dirty": m.git.get("dirty"),
            "started_at": m.started_at,
            "status": m.status,
        }


def _question_texts(manifest: Manifest) -> dict[int, Question]:
    """The run's questions, read again from its dataset source; empty when that source is
    unavailable or no longer has the sha256 the manifest recorded."""
    try:
        source, _ = load_questions(manifest.config.dataset)
    except BenchError:
        return {}
    if source.sha256 != manifest.dataset.sha256:
        return {}
    return {q.question_id: q for q in source.questions}


def load_run(path: str | Path, *, question_texts: bool = True, label: str | None = None) -> Run:
    """One run directory. `question_texts` re-reads the questions from the run's dataset
    (from the local cache; skipped quietly when it cannot be read or has changed)."""
    run_dir = RunDir.open(Path(path))
    manifest = run_dir.read_manifest()
    records = read_records(run_dir.records_path) if run_dir.records_path.exists() else []
    return Run(
        path=run_dir.path,
        manifest=manifest,
        records=records,
        label=label or manifest.run_id,
        questions=_question_texts(manifest) if question_texts else {},
    )


def load_runs(paths: Iterable[str | Path], *, question_texts: bool = True) -> list[Run]:
    """Several run directories, in the order given; labels made unique (`id`, `id#2`)."""
    runs = [load_run(p, question_texts=question_texts) for p in paths]
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label}#{seen[run.label]}"
    if not runs:
        raise BenchError("no run directories given")
    return runs


def find_runs(root: str | Path = DEFAULT_RESULTS) -> list[Path]:
    """Run directories under `root` (any depth), oldest first by the manifest's
    started_at, never by folder name."""
    found = []
    for manifest_path in Path(root).glob("**/manifest.json"):
        try:
            manifest = RunDir.open(manifest_path.parent).read_manifest()
        except BenchError:
            continue
        found.append((manifest.started_at, manifest_path.parent))
    return [path for _, path in sorted(found)]


def default_run_dirs(root: str | Path = DEFAULT_RESULTS) -> list[Path]:
    """$BENCH_RUN_DIRS (os.pathsep-separated) if set, else the newest run under `root`
    (results/runs and results/baselines)."""
    given = os.environ.get(RUN_DIRS_ENV, "")
    if given.strip():
        return [Path(p).expanduser() for p in given.split(os.pathsep) if p.strip()]
    runs = find_runs(root)
    if not runs:
        raise BenchError(
            f"no run directories under {root}; make one with `python -m bench run` "
            f"or set {RUN_DIRS_ENV}"
        )
    return runs[-1:]


# --- tidy frames -----------------------------------------------------------------------


def steps_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per step of every successful turn with real per-step detail (turns whose
    engine gave totals only, or whose stream merged steps, have no rows): `tokens` = e,
    `position` = tokens the turn emitted before the step (`metrics.step_positions`),
    `prefill` flags the prefill step, `counted` whether the question enters the summary
    (both turns succeeded)."""
    rows = []
    for run in runs:
        counted = run.counted_ids
        for r in run.turns:
            if not r.ok or not r.has_step_detail:
                continue
            drafted = r.drafted or [None] * len(r.steps)
            positions = step_positions(r.steps)
            for index, (position, e, d) in enumerate(zip(positions, r.steps, drafted)):
                rows.append(
                    {
                        "run": run.label,
                        "question_id": r.question_id,
                        "category": r.category,
                        "turn": r.turn,
                        "step": index,
                        "position": position,
                        "tokens": e,
                        "drafted": d,
                        "prefill": r.prefill_step and index == 0,
                        "counted": r.question_id in counted,
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "run",
            "question_id",
            "category",
            "turn",
            "step",
            "position",
            "tokens",
            "drafted",
            "prefill",
            "counted",
        ],
    )


def turns_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per recorded (question, turn), failed ones included (`ok` False, no AL).
    `steps` and the ALs come from the turn's decided step count (`bench.engines.reconcile`):
    exact when `step_slack` is 0, else a lower bound at most `step_slack` short;
    `step_detail` says whether the turn's per-step counts are real (`exact`, `unchecked`)
    or not (`disagrees`, `none`)."""
    rows = []
    for run in runs:
        counted = run.counted_ids
        for r in run.turns:
            prefill = 1 if r.prefill_step and r.step_count else 0
            rows.append(
                {
                    "run": run.label,
                    "question_id": r.question_id,
                    "category": r.category,
                    "turn": r.turn,
                    "ok": r.ok,
                    "counted": r.question_id in counted,
                    "acceptance_length": (
                        acceptance_length_of_totals(r.output_tokens, r.step_count)
                        if r.ok and r.step_count
                        else None
                    ),
                    "decode_acceptance_length": (
                        (r.output_tokens - prefill) / (r.step_count - prefill)
                        if r.ok and r.step_count > prefill
                        else None
                    ),
                    "steps": r.step_count,
                    "step_slack": r.step_slack,
                    "step_detail": r.step_detail,
                    "output_tokens": r.output_tokens,
                    "prompt_tokens": r.prompt_tokens,
                    "finish_reason": r.finish_reason,
                    "duration_s": r.duration_s,
                    "error": r.error,
                    "text": r.text,
                }
            )
    return pd.DataFrame(rows)


def questions_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per counted question: its `QuestionSummary` from `summarize`, plus the
    question's turn texts when the run's dataset could be read, and both answers."""
    rows = []
    for run in runs:
        answers = {(r.question_id, r.turn): r.text for r in run.turns}
        for q in run.summary.questions:
            source = run.questions.get(q.question_id)
            row = {"run": run.label, **q.model_dump()}
            row["finish_reasons"] = "/".join(q.finish_reasons)
            row["question_turn1"] = source.turns[0] if source else None
            row["question_turn2"] = source.turns[1] if source and len(source.turns) > 1 else None
            row["answer_turn1"] = answers.get((q.question_id, 1))
            row["answer_turn2"] = answers.get((q.question_id, 2))
            rows.append(row)
    return pd.DataFrame(rows)


def _groups(summary: Summary) -> list[tuple[str, GroupSummary]]:
    rows = list(summary.categories.items())  # the dataset's own categories, in its order
    if summary.overall is not None:
        rows.append((OVERALL, summary.overall))
    return rows


def _blocks(group: GroupSummary) -> list[tuple[str, RateBlock]]:
    return [(ALL, group), ("1", group.turns["1"]), ("2", group.turns["2"])]


def categories_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run × category (and "overall"): the run's identity columns (engine,
    model, draft length, reasoning effort, temperature, commit …) and the summary's
    figures, both turns pooled, then `turn1_`/`turn2_` prefixed for each turn alone."""
    figures = (
        "acceptance_length",
        "decode_acceptance_length",
        "pooled_acceptance_length",
        "draft_acceptance_rate",
        "proposed_draft_acceptance_rate",
        "steps",
        "decode_steps",
        "output_tokens",
        "turn_count",
        "step_detail_turns",
    )
    rows = []
    for run in runs:
        for category, group in _groups(run.summary):
            row = {**run.info(), "category": category, "n_questions": group.n_questions}
            for turn, block in _blocks(group):
                prefix = "" if turn == ALL else f"turn{turn}_"
                for name in figures:
                    row[prefix + name] = getattr(block, name)
                row[prefix + "ci95_low"] = block.ci95[0] if block.ci95 else None
                row[prefix + "ci95_high"] = block.ci95[1] if block.ci95 else None
            rows.append(row)
    return pd.DataFrame(rows)


def segments_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Reasoning and answer apart (docs/metrics.md): one row per run × category (and
    "overall") × segment ("reasoning", "answer", "both"), with card, decode and pooled AL,
    draft acceptance, the histogram (`histogram`, e = 1 … k+1) and per-position rates as
    lists, and how many turns were split, had no reasoning, or could not be split."""
    figures = (
        "n_questions",
        "acceptance_length",
        "decode_acceptance_length",
        "pooled_acceptance_length",
        "draft_acceptance_rate",
        "steps",
        "decode_steps",
        "output_tokens",
        "turn_count",
        "step_detail_turns",
        "histogram",
        "joint_acceptance",
        "conditional_acceptance",
    )
    rows = []
    for run in runs:
        segments = run.summary.segments
        if segments is None:
            continue
        for category, group in [*segments.categories.items(), (OVERALL, segments.overall)]:
            counts = {
                "split_turns": group.split_turns,
                "no_reasoning_turns": group.no_reasoning_turns,
                "not_split_turns": group.not_split_turns,
            }
            for segment, block in group.segments.items():
                row = {"run": run.label, "category": category, "segment": segment, **counts}
                row.update({name: getattr(block, name) for name in figures})
                rows.append(row)
    return pd.DataFrame(rows)


def histogram_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Long form of the summary's histograms: run × category × turn ("all", "1", "2") ×
    e, with `decode_steps` (the count) and `share` of the group's decode steps, and
    `step_detail_turns` of `turn_count`: the turns with real per-step detail the histogram
    rests on (none for a totals-only engine such as llama.cpp)."""
    rows = []
    for run in runs:
        for category, group in _groups(run.summary):
            for turn, block in _blocks(group):
                total = sum(block.histogram)
                for index, count in enumerate(block.histogram):
                    rows.append(
                        {
                            "run": run.label,
                            "category": category,
                            "turn": turn,
                            "e": index + 1,
                            "decode_steps": count,
                            "share": count / total if total else None,
                            "step_detail_turns": block.step_detail_turns,
                            "turn_count": block.turn_count,
                        }
                    )
    return pd.DataFrame(rows)


def positions_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Long form of the summary's joint and conditional acceptance: run × category × turn
    × draft position j = 1..k, with `step_detail_turns` of `turn_count` they rest on."""
    rows = []
    for run in runs:
        for category, group in _groups(run.summary):
            for turn, block in _blocks(group):
                pairs = zip(block.joint_acceptance, block.conditional_acceptance)
                for j, (joint, conditional) in enumerate(pairs, 1):
                    rows.append(
                        {
                            "run": run.label,
                            "category": category,
                            "turn": turn,
                            "position": j,
                            "joint": joint,
                            "conditional": conditional,
                            "step_detail_turns": block.step_detail_turns,
                            "turn_count": block.turn_count,
                        }
                    )
    return pd.DataFrame(rows)


def position_buckets_frame(runs: Sequence[Run], bucket_tokens: int = 32) -> pd.DataFrame:
    """Decode AL by position in the response (`metrics.decode_acceptance_length_by_position`):
    run × category (and "overall") × bucket, over the turns of counted questions."""
    rows = []
    for run in runs:
        counted = run.counted_ids
        turns = [r for r in run.turns if r.ok and r.question_id in counted and r.has_step_detail]
        groups = [(c, [r for r in turns if r.category == c]) for c in run.summary.categories]
        groups.append((OVERALL, turns))
        for category, members in groups:
            pairs = [(r.steps, r.prefill_step) for r in members]
            for b in decode_acceptance_length_by_position(pairs, bucket_tokens):
                rows.append(
                    {
                        "run": run.label,
                        "category": category,
                        "start_tokens": b.start_tokens,
                        "decode_steps": b.decode_steps,
                        "decode_acceptance_length": b.decode_acceptance_length,
                    }
                )
    return pd.DataFrame(
        rows,
        columns=["run", "category", "start_tokens", "decode_steps", "decode_acceptance_length"],
    )


def length_correlation(turns: pd.DataFrame) -> pd.DataFrame:
    """Per run and turn: how many counted turns, and the Spearman rank correlation of turn
    AL with response length (output tokens); negative means longer answers accept less.
    Takes `turns_frame`; the correlation is empty (NaN) with fewer than 3 turns or when
    either column is constant."""
    rows = []
    counted = turns[turns["ok"] & turns["counted"]] if len(turns) else turns
    for (run, turn), part in counted.groupby(["run", "turn"], sort=False):
        usable = len(part) >= 3 and part["output_tokens"].nunique() > 1
        usable = usable and part["acceptance_length"].nunique() > 1
        rho = (
            part["acceptance_length"].corr(part["output_tokens"], method="spearman")
            if usable
            else float("nan")
        )
        rows.append({"run": run, "turn": turn, "turns": len(part), "spearman_al_vs_length": rho})
    return pd.DataFrame(rows, columns=["run", "turn", "turns", "spearman_al_vs_length"])


def lowest_questions(runs: Sequence[Run], n: int = 10, snippet_chars: int = 80) -> pd.DataFrame:
    """The `n` counted questions with the lowest AL in each run, with a snippet of the
    question (turn 1) and of the turn-1 answer."""
    frame = questions_frame(runs)
    if frame.empty:
        return frame

    def snip(text: object) -> str | None:
        if not isinstance(text, str):
            return None
        flat = " ".join(text.split())
        return flat if len(flat) <= snippet_chars else flat[: snippet_chars - 1] + "…"

    frame = frame.sort_values(["run", "acceptance_length", "question_id"])
    frame = frame.groupby("run", sort=False).head(n).copy()
    frame["question"] = frame["question_turn1"].map(snip)
    frame["answer"] = frame["answer_turn1"].map(snip)
    return frame[
        [
            "run",
            "question_id",
            "category",
            "acceptance_length",
            "turn1_acceptance_length",
            "turn2_acceptance_length",
            "output_tokens",
            "finish_reasons",
            "question",
            "answer",
        ]
    ].reset_index(drop=True)


# --- tables for reading ----------------------------------------------------------------


def card_table(run: Run, reference: ReferenceTable | None = None) -> pd.DataFrame:
    """The model card's table (category, AL) with the 95 % interval, beside a published
    table when given (`reference`, Δ = run − reference, Δ % of the reference, and whether
    the reference lies inside the interval; None where the interval has zero width)."""
    rows = []
    for category, group in _groups(run.summary):
        row = {
            "category": category,
            "acceptance_length": group.acceptance_length,
            "ci95_low": group.ci95[0] if group.ci95 else None,
            "ci95_high": group.ci95[1] if group.ci95 else None,
            "n_questions": group.n_questions,
        }
        if reference is not None:
            ref = lookup(reference, category)
            mine = group.acceptance_length
            row["reference"] = ref
            row["delta"] = None if ref is None or mine is None else mine - ref
            row["delta_pct"] = None if ref is None or mine is None else 100 * (mine - ref) / ref
            # A zero-width interval (one question, or one per category overall) has
            # nothing to judge by: None, not a confident False.
            row["reference_in_ci95"] = (
                None
                if ref is None or group.ci95 is None or group.ci95[0] == group.ci95[1]
                else group.ci95[0] <= ref <= group.ci95[1]
            )
        rows.append(row)
    return pd.DataFrame(rows)


def runs_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: identity columns and completeness."""
    return pd.DataFrame(
        [
            {
                **run.info(),
                "path": str(run.path),
                "counted_questions": run.summary.counted_questions,
                "expected_questions": run.summary.expected_questions,
                "valid": run.summary.valid,
                "length_capped_share": run.summary.length_capped_share,
            }
            for run in runs
        ]
    )


def compare_runs(runs: Sequence[Run], baseline: int | str = 0) -> pd.DataFrame:
    """Every other run against `baseline` (an index or a label), per category and overall.

    `delta` is the difference of the reported ALs (each over its own counted questions);
    `paired_delta` and its interval come from `metrics.paired_difference_ci95` over the
    questions both runs counted (stratified by category for overall), and `exceeds_noise`
    says whether that interval leaves out 0 (None: fewer than 2 shared questions).
    """
    labels = [r.label for r in runs]
    if isinstance(baseline, str):
        if baseline not in labels:
            raise BenchError(f"no loaded run is labelled {baseline!r}; loaded: {labels}")
        baseline = labels.index(baseline)
    base = runs[baseline]
    base_al = {q.question_id: q.acceptance_length for q in base.summary.questions}
    category_of = {q.question_id: q.category for q in base.summary.questions}
    base_groups = dict(_groups(base.summary))
    rows = []
    for run in runs:
        if run is base:
            continue
        other_al = {q.question_id: q.acceptance_length for q in run.summary.questions}
        for category, group in _groups(run.summary):
            if category == OVERALL:
                pick, strata = (lambda qid: True), category_of
            else:
                pick, strata = (lambda qid, c=category: category_of.get(qid) == c), None
            paired = paired_difference_ci95(
                {q: v for q, v in base_al.items() if pick(q)},
                {q: v for q, v in other_al.items() if pick(q)},
                strata,
            )
            base_group = base_groups.get(category)
            base_value = base_group.acceptance_length if base_group else None
            value = group.acceptance_length
            rows.append(
                {
                    "baseline": base.label,
                    "run": run.label,
                    "category": category,
                    "baseline_acceptance_length": base_value,
                    "acceptance_length": value,
                    "delta": None if base_value is None or value is None else value - base_value,
                    "shared_questions": paired.shared_questions,
                    "paired_delta": paired.mean_difference,
                    "paired_ci95_low": paired.ci95[0] if paired.ci95 else None,
                    "paired_ci95_high": paired.ci95[1] if paired.ci95 else None,
                    "exceeds_noise": paired.exceeds_noise,
                }
            )
    return pd.DataFrame(rows)


# --- sweeps -----------------------------------------------------------------------------


def find_sweeps(results: str | Path = "results") -> list[Path]:
    """Sweep folders (`bench sweep --out`) under `results`, oldest first by sweep.json."""
    from bench.sweep import find_sweeps as found

    return found(Path(results))


def sweep_frame(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per cell of a `bench sweep` folder: draft_len, concurrency, the card AL with
    its interval, decode AL beside the prediction from the largest draft length, tokens/s,
    aggregate tokens/s, TPOT, the speedup over draft length 0 with its interval, whether the
    cell is its concurrency's recommendation, and the cell's run directory."""
    from bench.sweep import read_sweep

    sweep = read_sweep(Path(sweep_dir))
    chosen = {(r.concurrency, r.draft_len) for r in sweep.recommendations}
    rows = []
    for c in sweep.cells:
        low, high = c.speedup_ci95 or (None, None)
        rows.append(
            {
                "draft_len": c.draft_len,
                "concurrency": c.concurrency,
                "acceptance_length": c.acceptance_length,
                "decode_acceptance_length": c.decode_acceptance_length,
                "predicted_decode_acceptance_length": c.predicted_decode_acceptance_length,
                "predicted_from_draft_len": c.predicted_from_draft_len,
                "tokens_per_s": c.tokens_per_s,
                "aggregate_tokens_per_s": c.aggregate_tokens_per_s,
                "tpot_s": c.tpot_s,
                "speedup": c.speedup,
                "speedup_ci95_low": low,
                "speedup_ci95_high": high,
                "recommended": (c.concurrency, c.draft_len) in chosen,
                "run_dir": str(Path(sweep_dir) / c.run),
            }
        )
    return pd.DataFrame(rows)
