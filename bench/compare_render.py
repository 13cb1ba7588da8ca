"""How a `bench compare` result reads: the terminal table, the markdown page and the JSON
file (`write_outputs`, the one writer). `bench.compare` computes the comparison; this
module only renders what it holds.
"""

from __future__ import annotations

from pathlib import Path

from bench.compare import Comparison, ComparisonRow, SpeedComparison
from bench.errors import BenchError
from bench.rundir import write_text_atomic
from bench.speed import SpeedRow
from bench.tables import fmt


def _noise(row: ComparisonRow) -> str:
    if row.beyond_noise is None:
        return "?"
    return "beyond noise" if row.beyond_noise else "within noise"


def _cells(row: ComparisonRow) -> list[str]:
    ci = "" if row.delta_ci95 is None else f"[{row.delta_ci95[0]:+.3f}, {row.delta_ci95[1]:+.3f}]"
    verdict = "REGRESSION" if row.regression else ("–" if row.delta is None else "ok")
    return [
        row.name,
        fmt(row.baseline),
        fmt(row.candidate),
        fmt(row.delta, "+.3f"),
        fmt(row.relative_delta, "+.2%"),
        ci or "–",
        _noise(row),
        f"-{row.tolerance:.1%}",
        verdict,
    ]


HEADER = [
    "category",
    "baseline",
    "candidate",
    "Δ",
    "Δ %",
    "Δ 95 % CI",
    "noise",
    "tolerance",
    "verdict",
]


SPEED_HEADER = [
    "category",
    "tokens/s base",
    "tokens/s cand",
    "speedup",
    "95 % CI",
    "TPOT ms base",
    "TPOT ms cand",
    "TPOT ratio",
    "TTFT ms base",
    "TTFT ms cand",
]


def _ms(value: float | None) -> str:
    return fmt(None if value is None else 1000 * value, ".1f")


def _speed_cells(row: SpeedRow) -> list[str]:
    ci = row.speedup_ci95
    return [
        row.name,
        fmt(row.baseline_tokens_per_s, ".1f"),
        fmt(row.candidate_tokens_per_s, ".1f"),
        fmt(row.speedup),
        "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
        _ms(row.baseline_tpot_s),
        _ms(row.candidate_tpot_s),
        fmt(row.tpot_ratio),
        _ms(row.baseline_ttft_s),
        _ms(row.candidate_ttft_s),
    ]


def throughput_line(speed: SpeedComparison) -> str:
    return (
        f"throughput: aggregate {fmt(speed.baseline_aggregate_tokens_per_s, '.1f')} → "
        f"{fmt(speed.candidate_aggregate_tokens_per_s, '.1f')} tokens/s at concurrency "
        f"{speed.baseline_concurrency or '?'} → {speed.candidate_concurrency or '?'}, "
        f"speedup {fmt(speed.throughput_speedup)}"
    )


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def verdict_line(result: Comparison) -> str:
    if result.passed:
        return (
            "no regression: every category and overall is within tolerance, no sanity "
            "signal fired, and the runs are comparable"
        )
    kinds = sorted({c.kind for c in result.failures})
    return f"FAILED ({', '.join(kinds)}): {len(result.failures)} problems"


def render_terminal(result: Comparison) -> str:
    rows = [HEADER, *(_cells(r) for r in result.rows)]
    lines = [
        f"baseline:  {result.baseline.label} ({result.baseline.kind}, {result.baseline.path})",
        f"candidate: {result.candidate.label} ({result.candidate.kind}, {result.candidate.path})",
        f"metric:    {result.metric}",
        f"noise:     {result.noise_method}",
        "",
    ]
    lines += _table(rows)
    for row in result.rows:
        if row.note:
            lines.append(f"  {row.name}: {row.note}")
    if result.speed is not None:
        lines += ["", f"speed:     {result.speed.method}", ""]
        lines += _table([SPEED_HEADER, *(_speed_cells(r) for r in result.speed.rows)])
        lines.append(throughput_line(result.speed))
    for j in result.joint_acceptance:
        lines.append(
            f"joint acceptance j={j['position']}: {fmt(j['joint_acceptance'])} "
            f"(min {j['min']:.3f}) {'ok' if j['ok'] else 'UNDER BOUND'}"
        )
    for note in result.notes:
        lines.append(f"note: {note}")
    for check in result.checks:
        lines.append(f"{'allowed' if check.allowed else 'FAIL'}: {check.message}")
    lines.append("")
    lines.append(verdict_line(result))
    return "\n".join(lines)


def md_escape(text: str) -> str:
    """Text from a file or a model, safe inside a markdown table cell (and its HTML)."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def render_markdown(result: Comparison) -> str:
    icon = "✅" if result.passed else "❌"
    out = [
        f"## {icon} bench compare: {md_escape(verdict_line(result))}\n",
        f"- baseline: `{md_escape(result.baseline.label)}` ({result.baseline.kind})",
        f"- candidate: `{md_escape(result.candidate.label)}` ({result.candidate.kind})",
        f"- metric: {result.metric}",
        f"- noise: {result.noise_method}\n",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    out += ["| " + " | ".join(md_escape(c) for c in _cells(r)) + " |" for r in result.rows]
    out.append("")
    for row in result.rows:
        if row.note:
            out.append(f"- {row.name}: {md_escape(row.note)}")
    if result.speed is not None:
        out += [
            "### Speed (reported, not gated unless `min_speedup` is set)\n",
            f"{result.speed.method}\n",
            "| " + " | ".join(SPEED_HEADER) + " |",
            "|" + "---|" * len(SPEED_HEADER),
            *(
                "| " + " | ".join(md_escape(c) for c in _speed_cells(r)) + " |"
                for r in result.speed.rows
            ),
            "",
            f"{throughput_line(result.speed)}\n",
        ]
    if result.joint_acceptance:
        out.append("\n| draft position | joint acceptance | lower bound | |\n|---|---|---|---|")
        for j in result.joint_acceptance:
            out.append(
                f"| {j['position']} | {fmt(j['joint_acceptance'])} | {j['min']:.3f} | "
                f"{'ok' if j['ok'] else '❌'} |"
            )
        out.append("")
    checks = [
        f"{'allowed' if c.allowed else '**fail**'} ({c.kind}): {c.message}" for c in result.checks
    ]
    for title, items in (("Checks", checks), ("Notes", result.notes)):
        if items:
            out += [f"### {title}\n", *(f"- {md_escape(i)}" for i in items), ""]
    return "\n".join(out)


def write_outputs(result: Comparison, markdown: Path | None, json_path: Path | None) -> None:
    """The one writer of compare's files."""
    for path, text in (
        (markdown, render_markdown(result)),
        (json_path, result.model_dump_json(indent=2)),
    ):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, text)
        except OSError as err:
            raise BenchError(f"cannot write {path}: {err.strerror}") from None
