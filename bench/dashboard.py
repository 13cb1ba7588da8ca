"""`bench dashboard RESULTS_DIR`: a static site over every run under a folder.

It reads run directories only (manifest.json + summary.json, records.jsonl for answer
excerpts), orders them by their manifest's start time, and renders:

- `index.html`: the latest run's table against its reference table and a baseline (with the
  gate's verdict from `bench.compare`), a trend chart per category (card AL with its 95 %
  interval over runs; baseline and reference as lines), the turn split, histogram and
  per-position charts, per-question ALs with answer excerpts, and a table of all runs whose
  rows link to each run's report.md;
- `dashboard.md`: the same tables for a CI job summary;
- `runs/<id>/`: a copy of each run's report.md and plots, so the folder stands alone.

The page is one self-contained file: inline CSS and inline SVG charts, no scripts, no fonts,
no network (a Content-Security-Policy forbids scripts outright). Every string that came from
a file or a model (run ids, names, paths, generated text) goes through `html.escape`.

`load_page` reads and computes what the page needs (the latest run's answers, the gate);
`render_site` turns that into the site as values; `write_site` is the one writer.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bench.compare import Comparison, GateConfig, compare, load_side
from bench.compare_render import md_escape
from bench.dashboard_charts import (
    esc,
    histogram_chart,
    position_chart,
    segment_chart,
    setup_letter,
    sweep_chart,
    trend_chart,
    turn_chart,
)
from bench.dataset import category_order, dataset_label
from bench.errors import BenchError
from bench.records import latest_by_turn, read_records
from bench.references import ReferenceTable, load_reference
from bench.report import step_detail_note
from bench.rundir import (
    Manifest,
    RunDir,
    drafter_identity,
    manifest_reference,
    write_text_atomic,
)
from bench.summary import Summary
from bench.sweep import SweepResult, find_sweeps, read_sweep
from bench.tables import fmt, fmt_ci, lookup

EXCERPT_CHARS = 160


# --- collecting runs ---------------------------------------------------------------------


@dataclass
class RunEntry:
    path: Path
    manifest: Manifest
    summary: Summary
    is_baseline: bool
    slug: str = ""
    """Folder name of this run's copy inside the site."""

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def setup(self) -> str:
        """What a trend line follows: dataset, engine, model, drafter and draft length
        (runs of one setup differ only in code, time or questions drawn)."""
        m = self.manifest
        engine = m.engine.name if m.engine else m.config.engine.kind
        drafter = drafter_identity(m)
        return (
            f"{dataset_label(m.dataset.name)}, {engine}, {m.config.target.name}, "
            f"{drafter['kind']} {drafter['checkpoint']}, k={m.config.draft_len}"
        )


def collect_runs(results_dir: Path, skip: Path | None = None) -> tuple[list[RunEntry], list[str]]:
    """Every run directory under `results_dir` with a summary, oldest first; and a line for
    each folder that looks like a run but could not be read."""
    if not results_dir.is_dir():
        raise BenchError(f"{results_dir} is not a folder")
    skip = skip.resolve() if skip is not None else None
    runs: list[RunEntry] = []
    problems: list[str] = []
    for manifest_path in sorted(results_dir.rglob("manifest.json")):
        folder = manifest_path.parent
        if skip is not None and folder.resolve().is_relative_to(skip):
            continue
        if _in_sweep(folder, results_dir):  # a sweep's cells are shown as the sweep
            continue
        run = RunDir(folder)
        if not run.summary_path.is_file():
            problems.append(f"{folder}: no summary.json (python -m bench report {folder})")
            continue
        try:
            manifest = run.read_manifest()
            summary = Summary.model_validate_json(run.summary_path.read_text("utf-8"))
        except (BenchError, ValueError) as err:
            problems.append(f"{folder}: unreadable ({str(err).splitlines()[0]})")
            continue
        is_baseline = "baselines" in folder.relative_to(results_dir).parts
        runs.append(RunEntry(folder, manifest, summary, is_baseline))
    runs.sort(key=lambda r: (r.manifest.started_at, r.run_id))
    used: set[str] = set()
    for entry in runs:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", entry.run_id).strip("._") or "run"
        while slug in used:
            slug += "_"
        used.add(slug)
        entry.slug = slug
    return runs, problems


def _in_sweep(folder: Path, results_dir: Path) -> bool:
    """Whether `folder` is a cell of a `bench sweep` folder under `results_dir`."""
    for parent in folder.parents:
        if (parent / "sweep-settings.json").is_file():
            return True
        if parent == results_dir:
            return False
    return False


def latest_sweep(results_dir: Path) -> tuple[Path, SweepResult] | None:
    """The newest readable `bench sweep` folder under `results_dir`, read."""
    for folder in reversed(find_sweeps(results_dir)):
        try:
            return folder, read_sweep(folder)
        except (BenchError, ValueError):
            continue
    return None


def _excerpts(entry: RunEntry) -> dict[int, str]:
    try:
        records = read_records(entry.path / "records.jsonl")
    except (BenchError, OSError):
        return {}
    latest = latest_by_turn(records)
    return {
        qid: " ".join(record.text.split())[:EXCERPT_CHARS]
        for (qid, turn), record in latest.items()
        if turn == 1
    }


def _run_reference(entry: RunEntry) -> ReferenceTable | None:
    """The run's own reference table, or None where it can no longer be found."""
    try:
        return manifest_reference(entry.manifest)
    except BenchError:
        return None


# --- the site ----------------------------------------------------------------------------


@dataclass
class Page:
    """Everything the page shows, read and computed before any of it is rendered."""

    runs: list[RunEntry]
    """Oldest first."""
    latest: RunEntry
    baseline: RunEntry | None
    reference: ReferenceTable | None
    gate: Comparison | str | None
    """The gate against the baseline; a sentence where it could not run; None, no baseline."""
    excerpts: dict[int, str]
    """Question id -> start of the latest run's turn-1 answer."""
    problems: list[str]
    """Folders that look like runs but could not be read."""
    sweep: tuple[Path, SweepResult] | None = None
    """The newest `bench sweep` under the results folder, and where it is."""


def load_page(
    runs: list[RunEntry],
    latest: RunEntry | None,
    baseline: RunEntry | None,
    reference: ReferenceTable | None,
    problems: list[str],
) -> Page:
    """Reads the latest run's answers and runs the gate: all the page needs from disk."""
    if latest is None:
        raise BenchError("no run directories with a summary.json were found")
    gate: Comparison | str | None = None
    if baseline is not None and baseline is not latest:
        try:
            gate = compare(load_side(baseline.path), load_side(latest.path), GateConfig())
        except BenchError as err:  # shown on the page; the other runs still render
            gate = f"cannot compare: {err}"
    return Page(runs, latest, baseline, reference, gate, _excerpts(latest), problems)


@dataclass
class Site:
    index_html: str
    markdown: str
    runs: list[RunEntry]
    latest: RunEntry


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.bad{color:#b00020;font-weight:600}.good{color:#1b7f3b;font-weight:600}.muted{color:#666}
.charts{display:flex;flex-wrap:wrap;gap:8px}svg{background:#fff;border:1px solid #e3e3e3}
.ct{font-size:13px;font-weight:600}.tick{font-size:10px;fill:#444}.grid{stroke:#eee}
code{font-size:12px;background:#f6f6f6;padding:0 2px;white-space:pre-wrap;word-break:break-word}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'"


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _delta(row_value: float | None, other: float | None) -> str:
    if row_value is None or other is None:
        return "–"
    delta = row_value - other
    rel = f" ({delta / other:+.1%})" if other else ""
    return f"{delta:+.3f}{rel}"


def _latest_rows(
    latest: RunEntry, baseline: RunEntry | None, reference: ReferenceTable | None
) -> list[tuple[str, list[str]]]:
    """Plain-text cells (escape before HTML) per category and overall."""
    s = latest.summary
    names = [*s.categories, "overall"]
    rows = []
    for name in names:
        g = lookup(s, name)
        mine = g.acceptance_length if g else None
        base_g = lookup(baseline.summary, name) if baseline else None
        base = base_g.acceptance_length if base_g else None
        ref = None
        if reference is not None:
            ref = lookup(reference, name)
        rows.append(
            (
                name,
                [
                    name,
                    fmt(mine),
                    fmt_ci(g.ci95 if g else None),
                    fmt(base),
                    _delta(mine, base),
                    fmt(ref),
                    _delta(mine, ref),
                    fmt(g.turns["1"].acceptance_length if g else None),
                    fmt(g.turns["2"].acceptance_length if g else None),
                ],
            )
        )
    return rows


LATEST_HEADER = [
    "category",
    "latest AL",
    "95 % CI",
    "baseline",
    "Δ vs baseline",
    "reference",
    "Δ vs reference",
    "turn 1",
    "turn 2",
]
RUNS_HEADER = [
    "date",
    "run",
    "kind",
    "dataset",
    "engine",
    "draft length",
    "model",
    "commit",
    "questions",
    "overall AL",
    "valid",
]


def _run_cells(entry: RunEntry) -> list[str]:
    m = entry.manifest
    engine = f"{m.engine.name} {m.engine.version}" if m.engine else m.config.engine.kind
    commit = (m.git.get("commit") or "?")[:10] + (" (dirty)" if m.git.get("dirty") else "")
    overall = entry.summary.overall
    return [
        m.started_at[:16].replace("T", " "),
        m.run_id,
        "baseline" if entry.is_baseline else "run",
        dataset_label(m.dataset.name),
        engine,
        str(m.config.draft_len),
        m.config.target.name,
        commit,
        f"{entry.summary.counted_questions}/{entry.summary.expected_questions}",
        fmt(overall.acceptance_length if overall else None),
        "yes" if entry.summary.valid else "NO",
    ]


def _gate_html(result: Comparison | str | None, against: str) -> str:
    if result is None:
        return f'<p class="muted">No {against} to gate against.</p>'
    if isinstance(result, str):
        return f'<p class="bad" id="gate-{against}">{esc(result)}</p>'
    if result.passed:
        return (
            f'<p class="good" id="gate-{against}">Gate against the {against}: no regression '
            f"(tolerance {result.gate.tolerance:.1%}).</p>"
        )
    items = "".join(f"<li>{esc(c.message)}</li>" for c in result.failures)
    return (
        f'<p class="bad" id="gate-{against}">Gate against the {against}: '
        f"{len(result.failures)} problems</p><ul>{items}</ul>"
    )


def render_site(page: Page) -> Site:
    """index.html and dashboard.md as strings (links point at runs/<slug>/report.md)."""
    rows = [cells for _, cells in _latest_rows(page.latest, page.baseline, page.reference)]
    html_page = "".join(
        [
            *_html_top(page),
            "<h2>Latest run</h2>",
            _table(LATEST_HEADER, [[esc(c) for c in cells] for cells in rows], "latest-table"),
            _gate_html(page.gate, "baseline"),
            *_html_charts(page),
            *_html_sweep(page),
            *_html_runs(page),
            *_html_questions(page),
            "</body></html>",
        ]
    )
    return Site(html_page, _markdown(page, rows), page.runs, page.latest)


def _html_top(page: Page) -> list[str]:
    """The head, the one-line summary of what is shown, and the latest run's errors."""
    latest, baseline, reference = page.latest, page.baseline, page.reference
    s = latest.summary
    h = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>bench dashboard: {esc(latest.run_id)}</title><style>{STYLE}</style></head><body>",
        "<h1>MT-Bench acceptance dashboard</h1>",
        f'<p>{len(page.runs)} runs. Latest: <b id="latest-run">{esc(latest.run_id)}</b> '
        f"({esc(latest.manifest.config.target.name)}, draft length {s.draft_len}, "
        f"{esc(latest.manifest.started_at)}). Baseline: "
        f"<b>{esc(baseline.run_id) if baseline else 'none'}</b>. Reference: "
        f"<b>{esc(reference.name) if reference else 'none'}</b>.</p>",
        '<p class="muted">AL = acceptance length, the model cards\' "acceptance rate": tokens '
        "per step, prefill steps included, mean over questions of both turns pooled; 95 % "
        "bootstrap interval over questions. Δ = latest − other.</p>",
    ]
    if not s.valid or not s.complete:
        h.append(
            '<p class="bad">Latest run: '
            + esc(" ".join(sig.message for sig in s.signals if sig.severity == "error"))
            + "</p>"
        )
    return h


def _html_charts(page: Page) -> list[str]:
    """A trend chart per category over the runs; the latest run's turn, step and position
    charts."""
    s, baseline = page.latest.summary, page.baseline
    trend_runs = [r for r in page.runs if r is not baseline]
    setups = list(dict.fromkeys(r.setup for r in trend_runs))
    names = category_order(c for r in trend_runs for c in r.summary.categories)
    h = [
        "<h2>Trend per category</h2><p class=muted>One line per setup (dataset, engine, "
        "model, drafter, draft length): "
        + "; ".join(f"<b>{setup_letter(i)}</b> = {esc(s)}" for i, s in enumerate(setups))
        + ".</p><div class=charts>"
    ]
    h += [
        trend_chart(
            n, trend_runs, baseline, page.reference, [setups.index(r.setup) for r in trend_runs]
        )
        for n in [*names, "overall"]
        if any(lookup(r.summary, n) for r in trend_runs)
    ]
    h.append("</div><h2>Turn split, histogram, draft positions (latest run)</h2><div class=charts>")
    if s.overall is not None:
        base_summary = baseline.summary if baseline else None
        h.append(turn_chart(s))
        if s.overall.step_detail_turns:  # totals-only runs have no per-step figures
            h += [histogram_chart(s, base_summary), position_chart(s, base_summary)]
        if s.segments is not None and s.segments.overall.split_turns:
            h.append(segment_chart(s))
    h.append("</div>")
    if s.overall is not None:
        h.append(f"<p class=note>{esc(step_detail_note(s).strip())}</p>")
    return h


def _html_sweep(page: Page) -> list[str]:
    """The newest sweep: its recommendation per concurrency and the speedup curves."""
    if page.sweep is None:
        return []
    folder, sweep = page.sweep
    h = [f"<h2>Latest sweep <span class=muted>{esc(folder.name)}</span></h2><ul>"]
    h += [f"<li>{esc(r.message)}</li>" for r in sweep.recommendations]
    h.append("</ul>")
    h += [f"<p class=bad>{esc(w)}</p>" for w in sweep.warnings]
    h.append(f"<div class=charts>{sweep_chart(sweep)}</div>")
    return h


def _html_runs(page: Page) -> list[str]:
    """Every run, newest first, each linking to its copied report.md."""
    run_rows = []
    for entry in reversed(page.runs):
        cells = [esc(c) for c in _run_cells(entry)]
        href = esc(urllib.parse.quote(f"runs/{entry.slug}/report.md"))
        cells[1] = f'<a href="{href}">{cells[1]}</a>'
        run_rows.append(cells)
    return ["<h2>All runs</h2>", _table(RUNS_HEADER, run_rows, "runs-table")]


def _html_questions(page: Page) -> list[str]:
    """The latest run's questions with answer excerpts; then the folders that were skipped."""
    q_rows = [
        [
            esc(q.question_id),
            esc(q.category),
            fmt(q.acceptance_length),
            fmt(q.turn1_acceptance_length),
            fmt(q.turn2_acceptance_length),
            esc(" / ".join(q.finish_reasons)),
            f"<code>{esc(page.excerpts.get(q.question_id, ''))}</code>",
        ]
        for q in page.latest.summary.questions
    ]
    h = [
        "<h2>Questions of the latest run</h2>",
        _table(
            ["question", "category", "AL", "turn 1", "turn 2", "finish", "turn-1 answer (start)"],
            q_rows,
            "questions-table",
        ),
    ]
    if page.problems:
        h.append("<h2>Skipped folders</h2><ul>")
        h += [f"<li>{esc(p)}</li>" for p in page.problems]
        h.append("</ul>")
    return h


def _markdown(page: Page, rows: list[list[str]]) -> str:
    """dashboard.md: the latest run's table, the gate's verdict and the runs, for a CI job
    summary."""
    baseline, reference, gate = page.baseline, page.reference, page.gate
    md = [
        f"## bench dashboard: latest run `{md_escape(page.latest.run_id)}`\n",
        f"Baseline: `{md_escape(baseline.run_id) if baseline else 'none'}`; reference: "
        f"{md_escape(reference.name) if reference else 'none'}. AL = tokens per step "
        "(the cards' acceptance rate), 95 % bootstrap interval over questions.\n",
        "| " + " | ".join(LATEST_HEADER) + " |",
        "|" + "---|" * len(LATEST_HEADER),
    ]
    md += ["| " + " | ".join(md_escape(c) for c in cells) + " |" for cells in rows]
    if isinstance(gate, str):
        md.append(f"\n**Gate against the baseline:** {md_escape(gate)}")
    elif gate is not None:
        verdict = (
            "no regression"
            if gate.passed
            else "; ".join(md_escape(c.message) for c in gate.failures)
        )
        md.append("\n**Gate against the baseline:** " + verdict)
    if page.sweep is not None:
        md.append(f"\n### Latest sweep `{md_escape(page.sweep[0].name)}`\n")
        md += [f"- {md_escape(r.message)}" for r in page.sweep[1].recommendations]
    md += [
        "\n### All runs\n",
        "| " + " | ".join(RUNS_HEADER) + " |",
        "|" + "---|" * len(RUNS_HEADER),
    ]
    md += [
        "| " + " | ".join(md_escape(c) for c in _run_cells(e)) + " |" for e in reversed(page.runs)
    ]
    md.append("")
    return "\n".join(md)


def write_site(site: Site, out: Path) -> None:
    """The one writer: index.html, dashboard.md, runs/<slug>/{report.md, plots/}."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for entry in site.runs:
            target = out / "runs" / entry.slug
            target.mkdir(parents=True, exist_ok=True)
            report = entry.path / "report.md"
            if report.is_file():
                shutil.copyfile(report, target / "report.md")
            plots = entry.path / "plots"
            if plots.is_dir():
                shutil.copytree(plots, target / "plots", dirs_exist_ok=True)
            (target / "summary.json").write_text(
                json.dumps(entry.summary.model_dump(mode="json"), indent=1), "utf-8"
            )
        write_text_atomic(out / "index.html", site.index_html)
        write_text_atomic(out / "dashboard.md", site.markdown)
    except OSError as err:
        raise BenchError(f"cannot write the dashboard to {out}: {err.strerror}") from None


def build_dashboard(
    results_dir: Path,
    out: Path,
    baseline: Path | None = None,
    reference: Path | None = None,
) -> Site:
    runs, problems = collect_runs(results_dir, skip=out)
    non_baseline = [r for r in runs if not r.is_baseline]
    latest = (non_baseline or runs)[-1] if runs else None
    chosen = _choose_baseline(runs, latest, baseline)
    table = (
        load_reference(reference)
        if reference is not None
        else (_run_reference(latest) if latest is not None else None)
    )
    page = load_page(runs, latest, chosen, table, problems)
    page.sweep = latest_sweep(results_dir)
    site = render_site(page)
    write_site(site, out)
    return site


def _choose_baseline(
    runs: list[RunEntry], latest: RunEntry | None, baseline: Path | None
) -> RunEntry | None:
    """The run given as --baseline (under the results folder or not); without one, the
    newest baseline run with the latest run's draft length."""
    if baseline is not None:
        resolved = baseline.resolve()
        chosen = next((r for r in runs if r.path.resolve() == resolved), None)
        if chosen is None:
            extra, extra_problems = collect_runs(baseline)
            if not extra or extra_problems:
                raise BenchError(f"--baseline {baseline} is not a run directory with a summary")
            chosen = extra[0]
            chosen.is_baseline = True
        return chosen
    if latest is None:
        return None
    candidates = [
        r
        for r in runs
        if r.is_baseline
        and r is not latest
        and r.summary.draft_len == latest.summary.draft_len
        and r.manifest.dataset.name == latest.manifest.dataset.name
    ]
    return candidates[-1] if candidates else None
