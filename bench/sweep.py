"""`bench sweep`: the run grid over draft lengths × concurrency, and which draft length to
run at each load.

Every cell is an ordinary run directory (`DIR/cells/k{K}-c{C}`), made by the same runner as
`bench run`, so it can be re-reported, compared or opened in a notebook on its own. Draft
length 0 is speculation off on the same engine, the baseline of every speedup. Cells at
concurrency c run the reference engine at batch size c and other engines with c requests
in flight. A rerun skips finished cells and resumes unfinished ones; `DIR/sweep-settings.json`
holds the sweep's settings, and a rerun with other settings is refused.

What the sweep writes: `sweep.json` (one entry per cell, the recommendations, how the cells
were ordered and any change in machine load), `report.md` and `plots/`. Every figure comes
from the cells' own summaries (`bench.metrics`, `bench.speed`); nothing is recomputed here
except the pairing of cells and the prediction of smaller draft lengths
(`metrics.predicted_decode_acceptance_length`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bench.config import RunConfig
from bench.dataset import category_order
from bench.errors import BenchError
from bench.metrics import pooled_decode_acceptance_length, predicted_decode_acceptance_length
from bench.rundir import Manifest, RunDir, write_text_atomic
from bench.speed import speed_rows, throughput_speedup
from bench.summary import Summary
from bench.tables import OVERALL, fmt, lookup

SWEEP_SCHEMA_VERSION = 1
ORDER = (
    "concurrency by concurrency (ascending); within each, draft lengths in ascending order, "
    "so the speculation-off cell (draft length 0) that its speedups divide by runs first"
)
LOAD_CHANGE = 0.5
"""Warn when the machine's 1-minute load average per core, read at the end of each cell
(the sweep's own work included), moved by more than this across the cells."""


# --- settings ---------------------------------------------------------------------------


def check_grid(draft_lens: Sequence[int], concurrencies: Sequence[int]) -> None:
    """One sentence for a grid that cannot be run."""
    if not draft_lens:
        raise BenchError("--draft-len needs at least one draft length, e.g. 0,1,2,3")
    if any(k < 0 for k in draft_lens):
        raise BenchError(f"draft lengths must be 0 or more, got {list(draft_lens)}")
    if len(set(draft_lens)) != len(draft_lens):
        raise BenchError(f"--draft-len lists a draft length twice: {list(draft_lens)}")
    if not concurrencies:
        raise BenchError("--concurrency needs at least one value, e.g. 1,16")
    if any(c < 1 for c in concurrencies):
        raise BenchError(f"concurrency must be 1 or more, got {list(concurrencies)}")
    if len(set(concurrencies)) != len(concurrencies):
        raise BenchError(f"--concurrency lists a value twice: {list(concurrencies)}")


class SweepSettings(BaseModel):
    """What makes two sweeps the same sweep: the base run settings and the grid."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SWEEP_SCHEMA_VERSION
    base: dict[str, Any]
    """The resolved run config, draft length and concurrency left out."""
    draft_lens: list[int]
    concurrencies: list[int]


def cell_config(base: RunConfig, draft_len: int, concurrency: int) -> RunConfig:
    """The run config of one cell: the reference engine decodes `concurrency` turns per
    batch; other engines keep `concurrency` requests in flight."""
    update: dict[str, Any] = {"draft_len": draft_len, "concurrency": concurrency}
    if base.engine.kind == "reference":
        update["engine"] = base.engine.model_copy(update={"batch_size": concurrency})
    return base.model_copy(update=update)


def settings_of(base: RunConfig, draft_lens: Sequence[int], concurrencies: Sequence[int]):
    dumped = base.model_dump(mode="json")
    dumped.pop("draft_len", None)
    dumped.pop("concurrency", None)
    if isinstance(dumped.get("engine"), dict):
        dumped["engine"].pop("batch_size", None)
    return SweepSettings(
        base=dumped, draft_lens=list(draft_lens), concurrencies=list(concurrencies)
    )


def claim_folder(out: Path, settings: SweepSettings) -> None:
    """Make `out` this sweep's folder, or check that it already is."""
    path = out / "sweep-settings.json"
    if path.exists():
        try:
            existing = SweepSettings.model_validate_json(path.read_text("utf-8"))
        except ValueError:
            raise BenchError(f"{path} is not a sweep settings file") from None
        if existing != settings:
            raise BenchError(
                f"{out} holds another sweep's settings ({_difference(existing, settings)}); "
                "choose another --out, or rerun with the same settings to resume it"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} exists and is not a sweep folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, settings.model_dump_json(indent=2))


def _difference(a: SweepSettings, b: SweepSettings) -> str:
    if a.draft_lens != b.draft_lens:
        return f"draft lengths {a.draft_lens}, not {b.draft_lens}"
    if a.concurrencies != b.concurrencies:
        return f"concurrency {a.concurrencies}, not {b.concurrencies}"
    keys = sorted(k for k in {*a.base, *b.base} if a.base.get(k) != b.base.get(k))
    return "run settings differ: " + ", ".join(keys)


# --- running ----------------------------------------------------------------------------


def cell_name(draft_len: int, concurrency: int) -> str:
    return f"k{draft_len}-c{concurrency}"


def cell_order(draft_lens: Sequence[int], concurrencies: Sequence[int]) -> list[tuple[int, int]]:
    return [(k, c) for c in sorted(concurrencies) for k in sorted(draft_lens)]


def run_sweep(
    base: RunConfig,
    draft_lens: Sequence[int],
    concurrencies: Sequence[int],
    out: Path,
    quiet: bool = False,
    progress: Any = None,
) -> SweepResult:
    """Run every unfinished cell, then summarise the sweep into `out`."""
    from bench.runner import execute

    check_grid(draft_lens, concurrencies)
    settings = settings_of(base, draft_lens, concurrencies)
    claim_folder(out, settings)
    with _shared_models(base):
        for k, c in cell_order(draft_lens, concurrencies):
            path = out / "cells" / cell_name(k, c)
            status = _status(path)
            if status == "complete":
                continue
            if progress is not None:
                progress(f"cell draft_len={k} concurrency={c}")
            if status is None:
                execute(cell_config(base, k, c), out=path, quiet=quiet, command=["bench sweep"])
            else:
                execute(None, resume=path, quiet=quiet)
    result = summarize_sweep(out)
    write_sweep(out, result)
    return result


@contextlib.contextmanager
def _shared_models(base: RunConfig) -> Iterator[None]:
    """Cells on the reference engine share one loaded target model."""
    if base.engine.kind != "reference":
        yield
        return
    from bench.engines.reference import sharing_loaded_models

    with sharing_loaded_models():
        yield


def _status(path: Path) -> str | None:
    if not (path / "manifest.json").exists():
        if path.exists():
            raise BenchError(f"{path} is in the way of a sweep cell and is not a run directory")
        return None
    return RunDir.open(path).read_manifest().status


# --- summarising ------------------------------------------------------------------------


class Cell(BaseModel):
    draft_len: int
    concurrency: int
    run: str
    """The cell's run directory, relative to the sweep folder."""
    status: str
    acceptance_length: float | None
    acceptance_length_ci95: tuple[float, float] | None
    decode_acceptance_length: float | None
    """Pooled over decode steps: tokens per step after the first token of each turn."""
    predicted_decode_acceptance_length: float | None = None
    """What the sweep's largest draft length at this concurrency predicts for this cell:
    1 + Σ_{j ≤ k} joint acceptance at j (greedy chain drafts at positions 1..j do not
    depend on k); None for that cell itself and for k = 0."""
    predicted_from_draft_len: int | None = None
    tokens_per_s: float | None
    """Mean question tokens/s (each question: both turns' tokens over their time)."""
    tokens_per_s_ci95: tuple[float, float] | None
    aggregate_tokens_per_s: float | None
    """The run's output tokens over its decoding wall time, at its concurrency."""
    tpot_s: float | None
    ttft_s: float | None
    speedup: float | None = None
    """Latency speedup over draft length 0 at the same concurrency (paired over
    questions); None without a draft-length-0 cell."""
    speedup_ci95: tuple[float, float] | None = None
    throughput_speedup: float | None = None
    tpot_ratio: float | None = None
    """TPOT at draft length 0 ÷ this cell's TPOT (above 1: faster tokens)."""


class Recommendation(BaseModel):
    concurrency: int
    draft_len: int | None
    """The fastest draft length; None when no cell has a speedup (no draft length 0 cell,
    or no timing)."""
    speedup: float | None
    speedup_ci95: tuple[float, float] | None
    runner_up: int | None
    margin: float | None
    """Speedup of the fastest minus that of the runner-up."""
    separated: bool | None
    """Whether the two speedups' intervals do not overlap."""
    beats_speculation_off: bool | None
    message: str


class SweepResult(BaseModel):
    schema_version: int = SWEEP_SCHEMA_VERSION
    settings: SweepSettings
    order: str = ORDER
    cells: list[Cell]
    recommendations: list[Recommendation]
    warnings: list[str]


def _load_cell(out: Path, k: int, c: int) -> tuple[Manifest, Summary] | None:
    path = out / "cells" / cell_name(k, c)
    if not (path / "summary.json").exists():
        return None
    run = RunDir.open(path)
    summary = Summary.model_validate_json((path / "summary.json").read_text("utf-8"))
    return run.read_manifest(), summary


def summarize_sweep(out: Path) -> SweepResult:
    """The sweep's figures from its cells' run directories."""
    settings = SweepSettings.model_validate_json((out / "sweep-settings.json").read_text("utf-8"))
    loaded = {
        (k, c): cell
        for k, c in cell_order(settings.draft_lens, settings.concurrencies)
        if (cell := _load_cell(out, k, c)) is not None
    }
    cells = [_cell(out, k, c, manifest, summary) for (k, c), (manifest, summary) in loaded.items()]
    for cell in cells:
        base = loaded.get((0, cell.concurrency))
        if base is not None and cell.draft_len > 0:
            _pair(cell, base[1], loaded[(cell.draft_len, cell.concurrency)][1])
        largest = max(
            (k for k, c in loaded if c == cell.concurrency and k > cell.draft_len), default=None
        )
        if largest is not None and cell.draft_len > 0:
            source = loaded[(largest, cell.concurrency)][1].overall
            if source is not None and source.step_detail_turns:
                cell.predicted_decode_acceptance_length = predicted_decode_acceptance_length(
                    source.joint_acceptance, cell.draft_len
                )
                cell.predicted_from_draft_len = largest
    recommendations = [
        recommend(c, [x for x in cells if x.concurrency == c]) for c in settings.concurrencies
    ]
    return SweepResult(
        settings=settings,
        cells=cells,
        recommendations=recommendations,
        warnings=_warnings(settings, loaded),
    )


def _cell(out: Path, k: int, c: int, manifest: Manifest, summary: Summary) -> Cell:
    overall = summary.overall
    speed = summary.speed.overall if summary.speed is not None else None
    aggregate = summary.speed.aggregate if summary.speed is not None else None
    decode = pooled_decode_acceptance_length(overall) if overall is not None else None
    return Cell(
        draft_len=k,
        concurrency=c,
        run=str(Path("cells") / cell_name(k, c)),
        status=manifest.status,
        acceptance_length=overall.acceptance_length if overall else None,
        acceptance_length_ci95=overall.ci95 if overall else None,
        decode_acceptance_length=decode,
        tokens_per_s=speed.tokens_per_s.mean if speed else None,
        tokens_per_s_ci95=speed.tokens_per_s.ci95 if speed else None,
        aggregate_tokens_per_s=aggregate.tokens_per_s if aggregate else None,
        tpot_s=speed.tpot_s.mean if speed else None,
        ttft_s=speed.ttft_s.mean if speed else None,
    )


def _pair(cell: Cell, base: Summary, other: Summary) -> None:
    """Speedups of `cell` over the speculation-off cell at its concurrency."""
    if base.speed is None or other.speed is None:
        return
    overall = [
        r for r in speed_rows(base.speed, other.speed, list(base.categories)) if r.name == OVERALL
    ]
    if overall:
        row = overall[0]
        cell.speedup, cell.speedup_ci95 = row.speedup, row.speedup_ci95
        cell.tpot_ratio = row.tpot_ratio
    cell.throughput_speedup = throughput_speedup(base.speed.aggregate, other.speed.aggregate)


def recommend(concurrency: int, cells: Sequence[Cell]) -> Recommendation:
    """The fastest draft length at one concurrency, by latency speedup over draft length 0
    (which counts as speedup 1.0), with its margin over the runner-up."""
    timed = {c.draft_len: c.speedup for c in cells if c.draft_len > 0 and c.speedup is not None}
    if not timed or not any(c.draft_len == 0 for c in cells):
        return Recommendation(
            concurrency=concurrency,
            draft_len=None,
            speedup=None,
            speedup_ci95=None,
            runner_up=None,
            margin=None,
            separated=None,
            beats_speculation_off=None,
            message=f"concurrency {concurrency}: no recommendation (it needs a draft length 0 "
            "cell and timed cells to compare with it)",
        )
    ranked = sorted({0: 1.0, **timed}.items(), key=lambda kv: kv[1], reverse=True)
    (best, best_speedup), (second, second_speedup) = ranked[0], ranked[1]
    intervals = {c.draft_len: c.speedup_ci95 for c in cells}
    intervals[0] = (1.0, 1.0)
    a, b = intervals.get(best), intervals.get(second)
    separated = None if a is None or b is None else (a[0] > b[1] or b[0] > a[1])
    margin = best_speedup - second_speedup
    if best == 0:
        message = (
            f"concurrency {concurrency}: no draft length beats speculation off; the best, "
            f"draft length {second}, reaches {second_speedup:.3f}x"
        )
    else:
        sure = "the intervals separate them" if separated else "their intervals overlap"
        message = (
            f"concurrency {concurrency}: draft length {best} ({best_speedup:.3f}x speculation "
            f"off), {margin:.3f} ahead of draft length {second} ({second_speedup:.3f}x); {sure}"
        )
    return Recommendation(
        concurrency=concurrency,
        draft_len=best,
        speedup=best_speedup,
        speedup_ci95=intervals.get(best),
        runner_up=second,
        margin=margin,
        separated=separated,
        beats_speculation_off=best != 0,
        message=message,
    )


def _warnings(settings: SweepSettings, loaded: dict[tuple[int, int], tuple[Manifest, Summary]]):
    warnings = []
    missing = [
        cell_name(k, c)
        for k, c in cell_order(settings.draft_lens, settings.concurrencies)
        if (k, c) not in loaded
    ]
    if missing:
        warnings.append(f"cells without a summary (not run or interrupted): {', '.join(missing)}")
    loads = []
    for k, c in cell_order(settings.draft_lens, settings.concurrencies):
        timing = loaded[(k, c)][0].timing if (k, c) in loaded else None
        # At each cell's end, while the sweep itself keeps the machine busy: the load
        # before the first cell (idle) would count the sweep's own work as a change.
        for session in timing.sessions if timing is not None else []:
            loads += [session.load_end] if session.load_end is not None else []
    per_core = [
        m.loadavg[0] / (m.cpu_count or 1) for m in loads if m.loadavg is not None and m.cpu_count
    ]
    if per_core and max(per_core) - min(per_core) > LOAD_CHANGE:
        warnings.append(
            f"the machine's load changed during the sweep (1-minute load per core at the cells' "
            f"ends from "
            f"{min(per_core):.2f} to {max(per_core):.2f}): speedups compare cells run under "
            "different conditions"
        )
    return warnings


# --- writing ----------------------------------------------------------------------------


def render_report(result: SweepResult) -> str:
    s = result.settings
    out = [
        "# Draft-length sweep\n",
        f"Draft lengths {s.draft_lens} × concurrency {s.concurrencies}; cells ran {result.order}.\n",
    ]
    out += [f"> **Warning**: {w}\n" for w in result.warnings]
    out.append("## Recommendation\n")
    out += [f"- {r.message}" for r in result.recommendations]
    out.append("")
    out.append("## Cells\n")
    out.append(
        "| k | concurrency | card AL [95 % CI] | decode AL | predicted decode AL (from k) "
        "| tokens/s [95 % CI] | aggregate tokens/s | TPOT ms | speedup [95 % CI] "
        "| throughput speedup |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for c in result.cells:
        predicted = (
            f"{fmt(c.predicted_decode_acceptance_length)} (k={c.predicted_from_draft_len})"
            if c.predicted_from_draft_len is not None
            else "–"
        )
        out.append(
            f"| {c.draft_len} | {c.concurrency} "
            f"| {_with_ci(c.acceptance_length, c.acceptance_length_ci95)} "
            f"| {fmt(c.decode_acceptance_length)} "
            f"| {predicted} | {_with_ci(c.tokens_per_s, c.tokens_per_s_ci95, '.1f')} "
            f"| {fmt(c.aggregate_tokens_per_s, '.1f')} "
            f"| {fmt(c.tpot_s * 1000 if c.tpot_s else None, '.1f')} "
            f"| {_with_ci(c.speedup, c.speedup_ci95)} | {fmt(c.throughput_speedup)} |"
        )
    out.append("")
    out.append(
        "Speedup: mean question tokens/s over the draft-length-0 cell's at the same "
        "concurrency, paired over questions (bootstrap interval). Predicted decode AL: "
        "1 + Σ joint acceptance at positions 1..k of the largest-k cell at that concurrency, "
        "beside what the cell measured.\n"
    )
    out.append("![AL per category](plots/acceptance.png)\n")
    out.append("![speedup](plots/speedup.png)\n")
    out.append("![joint acceptance per position](plots/positions.png)\n")
    return "\n".join(out)


def _with_ci(value: float | None, ci: tuple[float, float] | None, spec: str = ".3f") -> str:
    """A figure and its interval in one cell; "–" alone when there is no figure."""
    if value is None:
        return "–"
    return fmt(value, spec) + ("" if ci is None else f" [{ci[0]:{spec}}, {ci[1]:{spec}}]")


def render_plots(out: Path, result: SweepResult) -> list[Path]:
    """AL against k per category, speedup against k per concurrency, joint acceptance per
    position (the largest k at each concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "plots"
    folder.mkdir(exist_ok=True)
    written = []
    lowest = min(result.settings.concurrencies)
    summaries = {
        (c.draft_len, c.concurrency): _load_cell(out, c.draft_len, c.concurrency)
        for c in result.cells
    }

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = sorted({c.draft_len for c in result.cells if c.concurrency == lowest})
    names = category_order(
        c for loaded in summaries.values() if loaded for c in loaded[1].categories
    )
    for name in [*names, OVERALL]:
        values = []
        for k in ks:
            loaded = summaries.get((k, lowest))
            group = lookup(loaded[1], name) if loaded is not None else None
            values.append(group.acceptance_length if group else float("nan"))
        ax.plot(ks, values, marker="o", label=name, linewidth=2.5 if name == OVERALL else 1)
    ax.set_xticks(ks)
    ax.set_xlabel("draft length k")
    ax.set_ylabel("card AL (tokens per step)")
    ax.set_title(f"Acceptance length by draft length (concurrency {lowest})")
    ax.legend(fontsize=7, ncol=3)
    written.append(_save(fig, folder / "acceptance.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in sorted(result.settings.concurrencies):
        cells = sorted(
            (x for x in result.cells if x.concurrency == c and x.draft_len > 0),
            key=lambda x: x.draft_len,
        )
        if not any(x.speedup is not None for x in cells):
            continue
        xs = [x.draft_len for x in cells]
        ys = [x.speedup if x.speedup is not None else float("nan") for x in cells]
        low = [y - (x.speedup_ci95 or (y, y))[0] for x, y in zip(cells, ys)]
        high = [(x.speedup_ci95 or (y, y))[1] - y for x, y in zip(cells, ys)]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=f"concurrency {c}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(sorted({x.draft_len for x in result.cells if x.draft_len > 0}))
    ax.set_xlabel("draft length k")
    ax.set_ylabel("speedup over speculation off")
    ax.set_title("Latency speedup by draft length")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:  # a sweep without draft length 0 has no baseline to divide by
        ax.text(
            0.5,
            0.5,
            "no speculation-off cell (draft length 0): no speedups",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    written.append(_save(fig, folder / "speedup.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in sorted(result.settings.concurrencies):
        largest = max((x.draft_len for x in result.cells if x.concurrency == c), default=0)
        loaded = summaries.get((largest, c))
        if largest == 0 or loaded is None or loaded[1].overall is None:
            continue
        joint = [v if v is not None else float("nan") for v in loaded[1].overall.joint_acceptance]
        ax.plot(range(1, len(joint) + 1), joint, marker="o", label=f"k={largest}, c={c}")
    ax.set_xlabel("draft position j")
    ax.set_ylabel("joint acceptance (drafts 1..j accepted)")
    ax.set_ylim(0, 1)
    ax.set_title("Joint acceptance per position")
    ax.legend(fontsize=8)
    written.append(_save(fig, folder / "positions.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep(out: Path, result: SweepResult) -> None:
    """The one writer: sweep.json, report.md, plots/."""
    render_plots(out, result)
    write_text_atomic(out / "report.md", render_report(result))
    write_text_atomic(out / "sweep.json", json.dumps(result.model_dump(mode="json"), indent=2))


def find_sweeps(results: Path) -> list[Path]:
    """Sweep folders (`bench sweep --out`) under `results`, oldest first by sweep.json."""
    found = sorted(results.rglob("sweep.json"), key=lambda p: p.stat().st_mtime)
    return [p.parent for p in found]


def read_sweep(out: Path) -> SweepResult:
    path = out / "sweep.json"
    if not path.is_file():
        raise BenchError(f"{out} has no sweep.json (run `bench sweep` with --out {out})")
    return SweepResult.model_validate_json(path.read_text("utf-8"))
