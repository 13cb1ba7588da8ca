"""`bench compare BASELINE CANDIDATE`: the regression gate.

Each side is a run directory, a `summary.json`, or a published reference table
(configs/references/*.yaml). The gate compares the card AL (docs/metrics.md) per category
and overall, says whether each difference is beyond noise, and fails when:

- a category or the overall AL of the candidate drops by more than its relative tolerance;
- a joint acceptance per draft position of the candidate falls under a lower bound;
- a sanity signal of severity "error" fired on either side (AL ≈ 1, every decode step at
  k + 1, a step above k + 1, failed or missing turns);
- the two sides are not comparable (draft length, temperature, max_tokens, questions,
  turn-2 history policy, methodology version, drafter, target weight precision), unless
  `--allow` names the difference.

Noise: where both sides carry question-level ALs, the paired differences over the questions
both ran are bootstrapped (questions resampled, stratified by category for overall; the same
`bootstrap_ci95` as every interval in the summary). Against a reference table, which has no
question-level data, the reference value is tested against the candidate's own interval.
Noise is reported beside each delta; the gate itself is the tolerance, as stated.

Speed (docs/metrics.md "Speed") is shown beside acceptance when both sides timed their
turns: tokens/s, TPOT and TTFT of each, the paired latency speedup (candidate ÷ baseline,
bench.speed.speedup) and the throughput speedup. It is reported, not gated, unless the gate
sets `min_speedup`. For the speedup of speculation, the baseline is the speculation-off run
of the same engine and settings; its draft length differs, so pass `--allow draft_len`.

`compare` returns values; bench/compare_render.py turns them into the terminal table, the
markdown page and the files (`write_outputs`, the one writer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.config import describe_validation_error, read_yaml
from bench.dataset import CATEGORIES, SPEED_BENCH_CATEGORIES, dataset_label
from bench.errors import BenchError
from bench.metrics import paired_difference_ci95
from bench.references import ReferenceTable, load_reference
from bench.rundir import Manifest, RunDir, drafter_mismatch
from bench.speed import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    SpeedRow,
    speed_rows,
    throughput_speedup,
)
from bench.summary import Summary
from bench.tables import lookup

COMPARE_SCHEMA_VERSION = 1
DEFAULT_TOLERANCE = 0.02

# Comparability fields: name (as `--allow` takes it) -> what it means.
COMPARABILITY: dict[str, str] = {
    "draft_len": "draft length k",
    "temperature": "sampling temperature",
    "max_tokens": "max output tokens per turn",
    "questions": "question ids",
    "turn2_history": "turn-2 history policy",
    "methodology": "methodology version",
    "drafter": "drafter (kind and checkpoint files)",
    "precision": "target weight precision (dtype and quantisation)",
    "dataset": "dataset (a comparison across datasets is refused unless allowed)",
}

PAIRED_METHOD = (
    "paired bootstrap: the per-question AL differences (candidate − baseline) over the "
    "questions both sides ran, resampled with replacement ({resamples} resamples, seed "
    "{seed}, stratified by category for overall unless a category has a single shared "
    "question; no interval from fewer than 2); beyond noise when the 95 % interval of "
    "the mean difference excludes 0"
)
REFERENCE_METHOD = (
    "one-sided data: {which} has no question-level ALs (a published table), so a difference "
    "is beyond noise when the table's value lies outside the other side's 95 % bootstrap "
    "interval over questions"
)
NO_NOISE_METHOD = "neither side has question-level ALs: noise cannot be judged"


# --- the gate's settings -----------------------------------------------------------------


class GateConfig(BaseModel):
    """Thresholds of the gate; a YAML file (`--gate`) with these keys, flags override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float = Field(DEFAULT_TOLERANCE, ge=0)
    """Largest allowed relative drop of an AL, (candidate − baseline) / baseline ≥ −tolerance."""
    categories: dict[str, float] = Field(default_factory=dict)
    """Per-category (or "overall") tolerance overriding `tolerance`."""
    joint_acceptance_min: list[float] = Field(default_factory=list)
    """Lower bound of the candidate's overall joint acceptance at draft positions j = 1, 2, …"""
    allow: list[str] = Field(default_factory=list)
    """Comparability differences accepted (names as `--allow` takes them)."""
    min_speedup: float | None = Field(None, gt=0)
    """Lowest allowed overall latency speedup (candidate ÷ baseline mean question
    tokens/s); unset: speed is reported, not gated."""

    def tolerance_for(self, name: str) -> float:
        return self.categories.get(name, self.tolerance)


def load_gate(path: str | Path | None) -> GateConfig:
    if path is None:
        return GateConfig()
    data = read_yaml(Path(path), "gate file") or {}
    try:
        gate = GateConfig.model_validate(data)
    except ValidationError as err:
        raise BenchError(describe_validation_error(err, f"gate file {path}")) from None
    check_names(gate, _every_known_category())
    return gate


def _every_known_category() -> list[str]:
    """Every built-in dataset's categories: a gate file is checked against the runs it
    compares later, when they are known."""
    return [*CATEGORIES, *SPEED_BENCH_CATEGORIES, "humaneval", "sharegpt"]


def check_names(gate: GateConfig, known: Sequence[str] = CATEGORIES) -> None:
    """The gate's category and `allow` names exist (categories: `known`, the compared
    runs' own, MT-Bench's by default)."""
    unknown_cats = sorted(set(gate.categories) - {*known, "overall"})
    if unknown_cats:
        raise BenchError(
            f"unknown categories in the gate's tolerances: {', '.join(unknown_cats)} "
            f"(known: {', '.join(known)}, overall)"
        )
    unknown = sorted(set(gate.allow) - set(COMPARABILITY))
    if unknown:
        raise BenchError(f"--allow takes {', '.join(COMPARABILITY)}; got {', '.join(unknown)}")


# --- the two sides -----------------------------------------------------------------------


@dataclass
class Side:
    """One side of a comparison, with what it knows (None = it does not say)."""

    label: str
    kind: Literal["run", "summary", "reference"]
    path: str
    summary: Summary | None = None
    manifest: Manifest | None = None
    reference: ReferenceTable | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> float | None:
        """Card AL of a category, or "overall"."""
        if self.summary is not None:
            group = lookup(self.summary, name)
            return group.acceptance_length if group is not None else None
        assert self.reference is not None
        return lookup(self.reference, name)

    def ci95(self, name: str) -> tuple[float, float] | None:
        if self.summary is None:
            return None
        group = lookup(self.summary, name)
        return group.ci95 if group is not None else None

    def categories(self) -> list[str]:
        """Its categories, in its own report order."""
        if self.summary is not None:
            return list(self.summary.categories)
        assert self.reference is not None
        return list(self.reference.categories)

    @property
    def dataset(self) -> str:
        """The dataset it measured (MT-Bench where it predates the record)."""
        return self.settings.get("dataset") or "mt-bench"

    def question_als(self) -> dict[int, tuple[str, float]] | None:
        if self.summary is None:
            return None
        return {q.question_id: (q.category, q.acceptance_length) for q in self.summary.questions}


def target_precision(manifest: Manifest) -> str | None:
    """The target's weight precision as the run set it: its dtype, then the quantisation
    when there is one (`float32`, `float32+int8-dynamic`). Only the reference engine loads
    the weights itself; other engines' servers choose their own, so None (not checked).
    Manifests from before `target.quantization` existed read as unquantised."""
    if manifest.config.engine.kind != "reference":
        return None
    target = manifest.config.target
    return target.dtype + ("" if target.quantization == "none" else f"+{target.quantization}")


def _read_summary(path: Path) -> Summary:
    try:
        return Summary.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError:
        raise BenchError(f"{path} is not valid JSON") from None
    except ValidationError as err:
        raise BenchError(describe_validation_error(err, f"summary {path}")) from None


def _summary_settings(summary: Summary) -> dict[str, Any]:
    ids = {q.question_id for q in summary.questions}
    ids |= {t.question_id for t in (*summary.missing, *summary.failed)}
    return {
        "draft_len": summary.draft_len,
        "methodology": summary.methodology_version,
        "questions": sorted(ids),
    }


def load_side(path: str | Path) -> Side:
    """A run directory, a summary.json (its run directory's manifest is used when it sits
    in one), or a reference table YAML."""
    path = Path(path)
    if not path.exists():
        raise BenchError(
            f"{path} does not exist (expected a run directory, a summary.json "
            "or a reference table .yaml)"
        )
    if path.is_dir() or (path.name == "summary.json" and (path.parent / "manifest.json").is_file()):
        run = RunDir.open(path if path.is_dir() else path.parent)
        if not run.summary_path.is_file():
            raise BenchError(
                f"{run.path} has no summary.json; build it with: python -m bench report {run.path}"
            )
        manifest = run.read_manifest()
        summary = _read_summary(run.summary_path)
        c = manifest.config
        settings = {
            "draft_len": c.draft_len,
            "temperature": c.sampling.temperature,
            "max_tokens": c.sampling.max_tokens,
            "questions": sorted(manifest.dataset.question_ids),
            "turn2_history": c.conversation.turn2_history,
            "methodology": manifest.methodology_version,
            "precision": target_precision(manifest),
            "dataset": manifest.dataset.name,
        }
        if settings["draft_len"] != summary.draft_len:
            raise BenchError(f"{run.path}: manifest and summary.json disagree on draft_len")
        return Side(manifest.run_id, "run", str(run.path), summary, manifest, None, settings)
    if path.suffix == ".json":
        summary = _read_summary(path)
        return Side(str(path), "summary", str(path), summary, settings=_summary_settings(summary))
    if path.suffix in (".yaml", ".yml"):
        table = load_reference(path)
        return Side(
            table.name,
            "reference",
            str(path),
            reference=table,
            settings={"draft_len": table.draft_len, "dataset": table.dataset},
        )
    raise BenchError(
        f"{path} is neither a run directory, a .json summary nor a .yaml reference table"
    )


# --- the result --------------------------------------------------------------------------


class SideInfo(BaseModel):
    label: str
    kind: str
    path: str
    settings: dict[str, Any]


class ComparisonRow(BaseModel):
    """One category (or overall): both values, the delta and the verdict."""

    name: str
    baseline: float | None
    candidate: float | None
    delta: float | None
    """candidate − baseline."""
    relative_delta: float | None
    """(candidate − baseline) / baseline."""
    delta_ci95: tuple[float, float] | None = None
    """Paired bootstrap interval of the mean per-question difference (paired method only)."""
    paired_questions: int | None = None
    beyond_noise: bool | None
    """None when noise cannot be judged."""
    tolerance: float
    regression: bool
    note: str = ""


class Check(BaseModel):
    """One reason the gate fails (or a difference `--allow` accepted)."""

    kind: Literal["regression", "joint_acceptance", "sanity", "incomparable", "speed"]
    subject: str
    message: str
    allowed: bool = False


class SpeedComparison(BaseModel):
    """Speed beside acceptance, when both sides timed their turns."""

    method: str
    rows: list[SpeedRow]
    baseline_aggregate_tokens_per_s: float | None
    candidate_aggregate_tokens_per_s: float | None
    baseline_concurrency: int | None
    candidate_concurrency: int | None
    throughput_speedup: float | None
    """Candidate ÷ baseline aggregate output tokens/s (one number per run: no interval)."""


SPEED_METHOD = (
    "latency speedup = candidate ÷ baseline mean question tokens/s over the questions both "
    "timed, TPOT ratio = baseline ÷ candidate mean TPOT (above 1: the candidate is faster); "
    "paired bootstrap of the ratio of means ({resamples} resamples, seed {seed}, stratified "
    "by category for overall); throughput speedup = ratio of aggregate tokens/s"
)


class Comparison(BaseModel):
    schema_version: int = COMPARE_SCHEMA_VERSION
    baseline: SideInfo
    candidate: SideInfo
    metric: str = (
        "card AL: tokens per step, prefill steps included, per-question mean over both turns"
    )
    noise_method: str
    rows: list[ComparisonRow]
    joint_acceptance: list[dict[str, Any]]
    checks: list[Check]
    notes: list[str]
    gate: GateConfig
    passed: bool
    speed: SpeedComparison | None = None

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.allowed]


# --- the comparison ----------------------------------------------------------------------


def _comparability(base: Side, cand: Side, allow: Sequence[str]) -> tuple[list[Check], list[str]]:
    checks: list[Check] = []
    notes: list[str] = []
    for name, meaning in COMPARABILITY.items():
        if name in ("drafter", "dataset"):
            continue  # from the manifests, below; the dataset is refused before
        b, c = base.settings.get(name), cand.settings.get(name)
        if b is None or c is None:
            if base.reference is not None or cand.reference is not None:
                continue  # said once, in the published table's note
            lacking = [s.label for s, v in ((base, b), (cand, c)) if v is None]
            notes.append(f"{meaning} not checked: {' and '.join(lacking)} does not record it")
            continue
        if b == c:
            continue
        if name == "questions":
            only_b, only_c = sorted(set(b) - set(c)), sorted(set(c) - set(b))
            shown = f"only in baseline {_ids(only_b)}; only in candidate {_ids(only_c)}"
        else:
            shown = f"baseline {b}, candidate {c}"
        checks.append(
            Check(
                kind="incomparable",
                subject=name,
                allowed=name in allow,
                message=f"{meaning} differs ({shown})"
                + ("; allowed by --allow" if name in allow else f"; pass --allow {name} to accept"),
            )
        )
    if base.manifest is not None and cand.manifest is not None:
        mismatch = drafter_mismatch(base.manifest, cand.manifest)
        if mismatch is not None:
            allowed = "drafter" in allow
            checks.append(
                Check(
                    kind="incomparable",
                    subject="drafter",
                    allowed=allowed,
                    message=f"the runs measured different drafters ({mismatch})"
                    + ("; allowed by --allow" if allowed else "; pass --allow drafter to accept"),
                )
            )
    elif base.reference is None and cand.reference is None:
        notes.append("drafter not checked: a bare summary.json does not record it")
    return checks, notes


def _ids(ids: Sequence[int]) -> str:
    if not ids:
        return "none"
    return ",".join(str(i) for i in ids[:12]) + (f" … ({len(ids)} in all)" if len(ids) > 12 else "")


def _sanity(side: Side, role: str) -> list[Check]:
    if side.summary is None:
        return []
    return [
        Check(kind="sanity", subject=f"{role}:{s.code}", message=f"{role}: {s.message}")
        for s in side.summary.signals
        if s.severity == "error"
    ]


def _paired(
    base: Side, cand: Side, name: str
) -> tuple[float | None, tuple[float, float] | None, int]:
    """Mean per-question difference, its bootstrap interval, and how many pairs."""
    b, c = base.question_als(), cand.question_als()
    assert b is not None and c is not None
    if name != "overall":
        b = {q: v for q, v in b.items() if v[0] == name}
    paired = paired_difference_ci95(
        {q: al for q, (_, al) in b.items()},
        {q: al for q, (_, al) in c.items()},
        strata={q: category for q, (category, _) in b.items()},
    )
    return paired.mean_difference, paired.ci95, paired.shared_questions


def _row(base: Side, cand: Side, name: str, gate: GateConfig, paired: bool) -> ComparisonRow:
    b, c = base.value(name), cand.value(name)
    tolerance = gate.tolerance_for(name)
    if b is None or c is None:
        missing = [s.label for s, v in ((base, b), (cand, c)) if v is None]
        return ComparisonRow(
            name=name,
            baseline=b,
            candidate=c,
            delta=None,
            relative_delta=None,
            beyond_noise=None,
            tolerance=tolerance,
            regression=False,
            note=f"not compared: no value in {' and '.join(missing)}",
        )
    delta = c - b
    relative = delta / b if b else None
    row = ComparisonRow(
        name=name,
        baseline=b,
        candidate=c,
        delta=delta,
        relative_delta=relative,
        beyond_noise=None,
        tolerance=tolerance,
        regression=relative is not None and relative < -tolerance,
    )
    if paired:
        mean_diff, ci, n = _paired(base, cand, name)
        row.delta_ci95, row.paired_questions = ci, n
        if ci is not None:
            row.beyond_noise = not (ci[0] <= 0.0 <= ci[1])
        if mean_diff is not None and abs(mean_diff - delta) > 1e-9:
            row.note = (
                f"paired over {n} shared questions (mean difference {mean_diff:+.3f}); "
                "the AL columns cover each side's own questions"
            )
    else:
        measured, table = (cand, b) if cand.summary is not None else (base, c)
        ci = measured.ci95(name)
        if measured.summary is not None and ci is not None:
            row.beyond_noise = not (ci[0] <= table <= ci[1])
    return row


def _speed(base: Side, cand: Side) -> SpeedComparison | None:
    b = base.summary.speed if base.summary is not None else None
    c = cand.summary.speed if cand.summary is not None else None
    if b is None or c is None or b.overall is None or c.overall is None:
        return None
    return SpeedComparison(
        method=SPEED_METHOD.format(resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED),
        rows=speed_rows(b, c, _names(base, cand)),
        baseline_aggregate_tokens_per_s=b.aggregate.tokens_per_s if b.aggregate else None,
        candidate_aggregate_tokens_per_s=c.aggregate.tokens_per_s if c.aggregate else None,
        baseline_concurrency=b.aggregate.concurrency if b.aggregate else None,
        candidate_concurrency=c.aggregate.concurrency if c.aggregate else None,
        throughput_speedup=throughput_speedup(b.aggregate, c.aggregate),
    )


def _speed_gate(speed: SpeedComparison | None, gate: GateConfig) -> list[Check]:
    if gate.min_speedup is None:
        return []
    overall = speed.rows[-1].speedup if speed is not None else None
    if overall is None:
        message = (
            f"min_speedup {gate.min_speedup:.3f} cannot be checked: the two sides do not both "
            "carry timed questions they share"
        )
    elif overall < gate.min_speedup:
        message = (
            f"overall latency speedup {overall:.3f} is under min_speedup {gate.min_speedup:.3f}"
        )
    else:
        return []
    return [Check(kind="speed", subject="overall", message=message)]


def _names(base: Side, cand: Side) -> list[str]:
    """Both sides' categories: the baseline's order, then any only the candidate has."""
    names = base.categories()
    return names + [c for c in cand.categories() if c not in names]


def refuse_across_datasets(base: Side, cand: Side, allow: Sequence[str]) -> str | None:
    """The one sentence refusing a comparison across datasets (their categories and
    questions differ, so every row would compare unlike things); a note when `allow`
    asks for it anyway; None when both measured the same dataset."""
    if base.dataset == cand.dataset:
        return None
    said = (
        f"the baseline measured {dataset_label(base.dataset)} and the candidate "
        f"{dataset_label(cand.dataset)}"
    )
    if "dataset" in allow:
        return f"{said}; compared anyway (--allow dataset): rows match by category name only"
    raise BenchError(
        f"{said}: a comparison across datasets is refused (pass --allow dataset to compare "
        "them anyway)"
    )


def compare(base: Side, cand: Side, gate: GateConfig) -> Comparison:
    check_names(gate, [*base.categories(), *cand.categories()])
    across = refuse_across_datasets(base, cand, gate.allow)
    checks, notes = _comparability(base, cand, gate.allow)
    if across:
        notes.append(across)
    checks += _sanity(base, "baseline") + _sanity(cand, "candidate")

    paired = base.summary is not None and cand.summary is not None
    if paired:
        s = base.summary
        assert s is not None
        method = PAIRED_METHOD.format(
            resamples=s.bootstrap.get("resamples", "?"), seed=s.bootstrap.get("seed", "?")
        )
    elif base.summary is None and cand.summary is None:
        method = NO_NOISE_METHOD
    else:
        which = "the baseline" if base.summary is None else "the candidate"
        method = REFERENCE_METHOD.format(which=which)

    names = [
        c for c in _names(base, cand) if base.value(c) is not None or cand.value(c) is not None
    ]
    rows = [_row(base, cand, n, gate, paired) for n in [*names, "overall"]]
    for side in (base, cand):
        if side.reference is not None:
            other = cand if side is base else base
            uncovered = [c for c in side.reference.categories if other.value(c) is None]
            notes.append(
                f"{side.label} is a published table: it carries only draft length and "
                "category values, so temperature, max_tokens, questions, turn-2 history and "
                "methodology are not checked, sanity signals and per-position rates come "
                "from the other side alone, and its overall is the mean of its categories"
                + (f"; the other side has no {', '.join(uncovered)}" if uncovered else "")
            )
    for row in rows:
        if row.regression:
            checks.append(
                Check(
                    kind="regression",
                    subject=row.name,
                    message=f"{row.name} AL dropped {row.relative_delta:+.2%} "
                    f"({row.baseline:.3f} → {row.candidate:.3f}), beyond the "
                    f"{row.tolerance:.1%} tolerance",
                )
            )

    joint: list[dict[str, Any]] = []
    if gate.joint_acceptance_min:
        if cand.summary is None or cand.summary.overall is None:
            notes.append("joint acceptance bounds not checked: the candidate has no step data")
        else:
            measured = cand.summary.overall.joint_acceptance
            for j, bound in enumerate(gate.joint_acceptance_min, start=1):
                value = measured[j - 1] if j <= len(measured) else None
                ok = value is not None and value >= bound
                joint.append({"position": j, "joint_acceptance": value, "min": bound, "ok": ok})
                if not ok:
                    shown = "absent" if value is None else f"{value:.3f}"
                    checks.append(
                        Check(
                            kind="joint_acceptance",
                            subject=f"j={j}",
                            message=f"joint acceptance at draft position {j} is {shown}, "
                            f"under the lower bound {bound:.3f}",
                        )
                    )

    speed = _speed(base, cand)
    checks += _speed_gate(speed, gate)
    timed = [
        s.label for s in (base, cand) if s.summary and s.summary.speed and s.summary.speed.overall
    ]
    if speed is None and len(timed) == 1:
        notes.append(f"speed not compared: only {timed[0]} has timed questions")

    result = Comparison(
        baseline=SideInfo(label=base.label, kind=base.kind, path=base.path, settings=base.settings),
        candidate=SideInfo(
            label=cand.label, kind=cand.kind, path=cand.path, settings=cand.settings
        ),
        noise_method=method,
        rows=rows,
        joint_acceptance=joint,
        checks=checks,
        notes=notes,
        gate=gate,
        passed=True,
        speed=speed,
    )
    result.passed = not result.failures
    return result
