"""The dashboard's charts: small inline SVG plots, pure functions of summaries.

No scripts, no fonts: each chart is one `<svg>` element whose strings are escaped here.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from bench.references import ReferenceTable
from bench.summary import Summary
from bench.sweep import SweepResult
from bench.tables import lookup

if TYPE_CHECKING:
    from bench.dashboard import RunEntry

SERIES_COLORS = {
    "run": "#4C72B0",
    "baseline": "#55A868",
    "reference": "#DD8452",
    "turn1": "#4C72B0",
    "turn2": "#8172B3",
    "joint": "#4C72B0",
    "conditional": "#C44E52",
    "reasoning": "#8172B3",
    "answer": "#55A868",
    "both": "#4C72B0",
}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


class Plot:
    """A small SVG chart: a y axis with ticks, slots along x, and marks added in order."""

    def __init__(
        self,
        title: str,
        slots: list[str],
        ymin: float,
        ymax: float,
        ylabel: str,
        width: int = 420,
        height: int = 240,
    ) -> None:
        self.title, self.slots, self.ylabel = title, slots, ylabel
        self.ymin, self.ymax = ymin, ymax if ymax > ymin else ymin + 1
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 48, 10, 28, 46
        self.marks: list[str] = []
        self.legend: list[tuple[str, str, str]] = []

    def x(self, slot: float) -> float:
        span = self.width - self.left - self.right
        return self.left + span * (slot + 0.5) / max(len(self.slots), 1)

    def y(self, value: float) -> float:
        span = self.height - self.top - self.bottom
        clipped = min(max(value, self.ymin), self.ymax)
        return self.top + span * (1 - (clipped - self.ymin) / (self.ymax - self.ymin))

    def slot_width(self) -> float:
        return (self.width - self.left - self.right) / max(len(self.slots), 1)

    def add_legend(self, label: str, color: str, dash: str = "") -> None:
        self.legend.append((label, color, dash))

    def point(
        self, slot: float, value: float, ci: tuple[float, float] | None, color: str, tip: str
    ) -> None:
        x, y = self.x(slot), self.y(value)
        if ci is not None:
            self.marks.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.y(ci[0]):.1f}" '
                f'y2="{self.y(ci[1]):.1f}" stroke="{color}" stroke-width="1.5"/>'
            )
        self.marks.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"><title>{esc(tip)}'
            "</title></circle>"
        )

    def hline(self, value: float, color: str, dash: str, tip: str) -> None:
        y = self.y(value)
        self.marks.append(
            f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}">'
            f"<title>{esc(tip)}</title></line>"
        )

    def bar(self, slot: int, part: int, parts: int, value: float, color: str, tip: str) -> None:
        w = self.slot_width() * 0.8 / parts
        x0 = self.x(slot) - self.slot_width() * 0.4 + part * w
        y = self.y(value)
        self.marks.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" height="{self.y(self.ymin) - y:.1f}" '
            f'fill="{color}"><title>{esc(tip)}</title></rect>'
        )

    def line(self, values: list[float | None], color: str, dash: str, tip: str) -> None:
        points = [f"{self.x(i):.1f},{self.y(v):.1f}" for i, v in enumerate(values) if v is not None]
        self.marks.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"><title>{esc(tip)}</title></polyline>'
        )
        for i, v in enumerate(values):
            if v is not None:
                self.point(i, v, None, color, f"{tip}: {v:.3f}")

    def render(self) -> str:
        h, w = self.height, self.width
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" '
            f'height="{h}" role="img" aria-label="{esc(self.title)}">',
            f'<text x="{w / 2:.0f}" y="16" text-anchor="middle" class="ct">{esc(self.title)}</text>',
        ]
        for i in range(5):
            value = self.ymin + (self.ymax - self.ymin) * i / 4
            y = self.y(value)
            parts.append(
                f'<line x1="{self.left}" x2="{w - self.right}" y1="{y:.1f}" y2="{y:.1f}" '
                f'class="grid"/><text x="{self.left - 4}" y="{y + 3:.1f}" text-anchor="end" '
                f'class="tick">{value:.2f}</text>'
            )
        parts.append(
            f'<text transform="translate(11,{(self.top + h - self.bottom) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle" class="tick">{esc(self.ylabel)}</text>'
        )
        every = max(1, len(self.slots) // 8)
        for i, label in enumerate(self.slots):
            if i % every == 0 or i == len(self.slots) - 1:
                parts.append(
                    f'<text x="{self.x(i):.1f}" y="{h - self.bottom + 14}" text-anchor="middle" '
                    f'class="tick">{esc(label[:14])}</text>'
                )
        parts += self.marks
        for n, (label, color, dash) in enumerate(self.legend):
            lx, ly = self.left + 4 + (n % 3) * 125, h - 16 + (n // 3) * 12
            parts.append(
                f'<line x1="{lx}" x2="{lx + 16}" y1="{ly - 3}" y2="{ly - 3}" stroke="{color}" '
                f'stroke-width="3" stroke-dasharray="{dash}"/><text x="{lx + 20}" y="{ly}" '
                f'class="tick">{esc(label[:22])}</text>'
            )
        parts.append("</svg>")
        return "".join(parts)


SETUP_COLORS = ["#4C72B0", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974"]


def setup_letter(index: int) -> str:
    """How a trend chart names the setup at `index` (A, B, …, then A2, B2, …)."""
    letter = chr(ord("A") + index % 26)
    return letter if index < 26 else f"{letter}{index // 26 + 1}"


def trend_chart(
    name: str,
    runs: list[RunEntry],
    baseline: RunEntry | None,
    reference: ReferenceTable | None,
    setups: list[int] | None = None,
) -> str:
    """Card AL of one category over runs (oldest left) with intervals, one line per setup
    (`setups[i]` is run i's setup index; a line joins only runs of one setup); baseline
    and reference as horizontal lines."""
    setups = setups if setups is not None else [0] * len(runs)
    values = []
    for entry in runs:
        g = lookup(entry.summary, name)
        values.append((entry, g.acceptance_length if g else None, g.ci95 if g else None))
    lines: list[tuple[str, float, str, str]] = []
    if baseline is not None:
        g = lookup(baseline.summary, name)
        if g is not None and g.acceptance_length is not None:
            lines.append(("baseline", g.acceptance_length, SERIES_COLORS["baseline"], "6,3"))
    if reference is not None:
        ref = lookup(reference, name)
        if ref is not None:
            lines.append(("reference", ref, SERIES_COLORS["reference"], "2,3"))
    seen = [v for _, v, _ in values if v is not None] + [v for _, v, _, _ in lines]
    seen += [c for _, _, ci in values if ci for c in ci]
    low, high = (min(seen), max(seen)) if seen else (1.0, 2.0)
    pad = max(0.05, (high - low) * 0.1)
    plot = Plot(name, [e.run_id for e in runs], max(1.0, low - pad), high + pad, "AL")
    for label, value, color, dash in lines:
        plot.hline(value, color, dash, f"{label}: {value:.3f}")
        plot.add_legend(label, color, dash)
    for setup in dict.fromkeys(setups):
        color = SETUP_COLORS[setup % len(SETUP_COLORS)]
        mine = [v if s == setup else None for (_, v, _), s in zip(values, setups)]
        if sum(v is not None for v in mine) > 1:
            plot.line(mine, color, "", f"setup {setup_letter(setup)}")
        for i, (entry, value, ci) in enumerate(values):
            if value is not None and setups[i] == setup:
                tip = f"{entry.run_id}: {value:.3f}" + (
                    f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
                )
                plot.point(i, value, ci, color, tip)
        plot.add_legend(f"setup {setup_letter(setup)} (95 % CI)", color)
    return plot.render()


def turn_chart(summary: Summary) -> str:
    names = [*summary.categories, "overall"]
    groups = [lookup(summary, n) for n in names]
    values = [g.turns[t].acceptance_length or 1.0 for g in groups if g for t in ("1", "2")]
    plot = Plot("AL by turn", names, 1.0, max([*values, 1.5]) * 1.05, "AL", width=620)
    for i, g in enumerate(groups):
        if g is None:
            continue
        for part, turn in enumerate(("1", "2")):
            value = g.turns[turn].acceptance_length
            if value is not None:
                plot.bar(
                    i,
                    part,
                    2,
                    value,
                    SERIES_COLORS[f"turn{turn}"],
                    f"{names[i]} turn {turn}: {value:.3f}",
                )
    plot.add_legend("turn 1", SERIES_COLORS["turn1"])
    plot.add_legend("turn 2", SERIES_COLORS["turn2"])
    return plot.render()


def histogram_chart(summary: Summary, baseline: Summary | None) -> str:
    assert summary.overall is not None
    k = summary.draft_len
    shares = _shares(summary.overall.histogram)
    plot = Plot(
        "Decode steps by tokens emitted",
        [f"e={e}" for e in range(1, k + 2)],
        0.0,
        max([*shares, 0.1]) * 1.1,
        "share of decode steps",
    )
    for i, share in enumerate(shares):
        plot.bar(i, 0, 1, share, SERIES_COLORS["run"], f"e={i + 1}: {share:.1%}")
    plot.add_legend("latest run", SERIES_COLORS["run"])
    if baseline is not None and baseline.overall is not None and baseline.draft_len == k:
        base = _shares(baseline.overall.histogram)
        for i, share in enumerate(base):
            plot.point(
                i, share, None, SERIES_COLORS["baseline"], f"baseline e={i + 1}: {share:.1%}"
            )
        plot.add_legend("baseline", SERIES_COLORS["baseline"])
    return plot.render()


def segment_chart(summary: Summary) -> str:
    """Card AL of the reasoning, the answer and both, per category and overall."""
    assert summary.segments is not None
    groups = [*summary.segments.categories.items(), ("overall", summary.segments.overall)]
    names = [n for n, _ in groups]
    parts = ("reasoning", "answer", "both")
    values = [
        g.segments[p].acceptance_length or 1.0 for _, g in groups for p in parts if p in g.segments
    ]
    plot = Plot("AL: reasoning and answer", names, 1.0, max([*values, 1.5]) * 1.05, "AL", width=620)
    for i, (name, g) in enumerate(groups):
        for part, segment in enumerate(parts):
            value = g.segments[segment].acceptance_length if segment in g.segments else None
            if value is not None:
                color = SERIES_COLORS[segment]
                plot.bar(i, part, len(parts), value, color, f"{name} {segment}: {value:.3f}")
    for segment in parts:
        plot.add_legend(segment, SERIES_COLORS[segment])
    return plot.render()


def _shares(hist: list[int]) -> list[float]:
    total = sum(hist) or 1
    return [c / total for c in hist]


def position_chart(summary: Summary, baseline: Summary | None) -> str:
    assert summary.overall is not None
    k = summary.draft_len
    plot = Plot(
        "Acceptance per draft position", [f"j={j}" for j in range(1, k + 1)], 0.0, 1.0, "acceptance"
    )
    plot.line(summary.overall.joint_acceptance, SERIES_COLORS["joint"], "", "joint")
    plot.line(
        summary.overall.conditional_acceptance, SERIES_COLORS["conditional"], "", "conditional"
    )
    plot.add_legend("joint", SERIES_COLORS["joint"])
    plot.add_legend("conditional", SERIES_COLORS["conditional"])
    if baseline is not None and baseline.overall is not None and baseline.draft_len == k:
        plot.line(
            baseline.overall.joint_acceptance, SERIES_COLORS["baseline"], "6,3", "baseline joint"
        )
        plot.add_legend("baseline joint", SERIES_COLORS["baseline"], "6,3")
    return plot.render()


def sweep_chart(sweep: SweepResult) -> str:
    """Speedup over speculation off against draft length, one line per concurrency."""
    ks = sorted({c.draft_len for c in sweep.cells if c.draft_len > 0})
    values = [c.speedup for c in sweep.cells if c.speedup is not None]
    values += [x for c in sweep.cells if c.speedup_ci95 for x in c.speedup_ci95]
    low, high = (min([*values, 1.0]), max([*values, 1.0])) if values else (0.5, 1.5)
    pad = max(0.05, (high - low) * 0.1)
    plot = Plot(
        "Speedup over speculation off", [f"k={k}" for k in ks], low - pad, high + pad, "speedup"
    )
    plot.hline(1.0, SERIES_COLORS["reference"], "2,3", "speculation off: 1.0")
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]
    for i, concurrency in enumerate(sweep.settings.concurrencies):
        color = colors[i % len(colors)]
        by_k = {c.draft_len: c for c in sweep.cells if c.concurrency == concurrency}
        plot.line(
            [by_k[k].speedup if k in by_k else None for k in ks],
            color,
            "",
            f"concurrency {concurrency}",
        )
        for slot, k in enumerate(ks):
            cell = by_k.get(k)
            if cell is not None and cell.speedup is not None:
                tip = f"k={k}, concurrency {concurrency}: {cell.speedup:.3f}"
                plot.point(slot, cell.speedup, cell.speedup_ci95, color, tip)
        plot.add_legend(f"concurrency {concurrency}", color)
    return plot.render()
