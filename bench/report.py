"""report.md and plots/*.png, as pure functions of a summary (plus the manifest and a
reference table when there are any). `write_results` is the one place that writes them.

The report opens with the model card's own table shape, so it can be laid beside the card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.dataset import dataset_label
from bench.metrics import GroupSummary
from bench.references import ReferenceTable
from bench.rundir import Manifest, RunDir, write_text_atomic
from bench.summary import Summary
from bench.tables import fmt, fmt_ci, lookup


def _rows(summary: Summary) -> list[tuple[str, GroupSummary]]:
    rows = list(summary.categories.items())  # in the dataset's order (MT-Bench: the cards')
    if summary.overall is not None:
        rows.append(("overall", summary.overall))
    return rows


def step_detail_note(summary: Summary) -> str:
    """What the histogram and the per-position rates rest on: only the turns whose per-step
    counts are real (the card AL and the figures above use every turn's totals)."""
    overall = summary.overall
    if overall is None:
        return ""
    return step_detail_line(overall) + step_bound_line(overall)


def step_bound_line(overall: GroupSummary) -> str:
    """Turns whose step count is a bound, not exact; nothing when every count is exact."""
    if not overall.step_bound_turns or overall.acceptance_length_min is None:
        return ""
    return (
        f"Step counts: {overall.step_bound_turns} of {overall.turn_count} turns are lower "
        "bounds (their engine's counters and stream could not pin them down; see the "
        f"`step_count_bounds` signal), so the overall card AL {fmt(overall.acceptance_length)} "
        f"is an upper bound: it could be as low as {fmt(overall.acceptance_length_min)}.\n"
    )


def step_detail_line(overall: GroupSummary) -> str:
    detail, turns = overall.step_detail_turns, overall.turn_count
    if detail == turns:
        return f"Per-step detail: all {turns} turns.\n"
    if detail == 0:
        return (
            f"Per-step detail: none of the {turns} turns. The engine reports per-request "
            "totals only (or its stream merged steps), so the card AL and the figures above "
            "come from its totals, and the histogram and per-position rates are "
            "unavailable (shown empty, not as 1.0).\n"
        )
    return (
        f"Per-step detail: {detail} of {turns} turns. The histogram and per-position rates "
        "rest on those alone; the other turns' chunks are not their decoding steps (a "
        "stream that merged steps, or no steps shown), so their AL comes from the "
        "engine's per-request totals.\n"
    )


def card_table(summary: Summary) -> str:
    """The model card's table: | Category | MT Bench Acceptance Rate |, then overall (another
    dataset's name in the header for another dataset)."""
    label = "MT Bench" if summary.dataset in (None, "mt-bench") else dataset_label(summary.dataset)
    lines = [f"| Category | {label} Acceptance Rate |", "|---|---|"]
    for name, group in _rows(summary):
        label = "**overall**" if name == "overall" else name
        lines.append(f"| {label} | {fmt(group.acceptance_length)} |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return fmt(None if value is None else 1000 * value, ".1f")


def speed_section(summary: Summary) -> str:
    """Speed beside acceptance (docs/metrics.md "Speed"): per category and overall, the
    mean question tokens/s with its interval, TTFT, TPOT and step time; then the run's
    aggregate tokens/s at its concurrency."""
    speed = summary.speed
    out = ["## Speed\n"]
    if speed is None or speed.overall is None:
        out.append("No timed turns: the engine did not report when each turn's first token came.\n")
        return "\n".join(out)
    out.append(
        "Per question: tokens/s = "
        + ("(n₁ + n₂) / (t₁ + t₂)" if _its_turns(summary) == "both turns" else "Σn / Σt")
        + ", TTFT the mean of its turns', "
        "TPOT = Σ(t − TTFT) / Σ(n − 1), step time = Σ(t − TTFT) / Σ(steps − 1); each "
        "averaged over questions (95 % CI over questions).\n"
    )
    out.append(
        "| Category | tokens/s | 95 % CI | TTFT ms | TPOT ms | step ms |\n|---|---|---|---|---|---|"
    )
    rows = list(speed.categories.items())
    for name, g in [*rows, ("overall", speed.overall)]:
        ci = g.tokens_per_s.ci95
        out.append(
            f"| {name} | {fmt(g.tokens_per_s.mean, '.1f')} | "
            f"{'–' if ci is None else f'[{ci[0]:.1f}, {ci[1]:.1f}]'} | {_ms(g.ttft_s.mean)} | "
            f"{_ms(g.tpot_s.mean)} | {_ms(g.mean_step_s.mean)} |"
        )
    out.append("")
    if speed.untimed_turns:
        out.append(
            f"{len(speed.untimed_turns)} turns have no timing; their questions are left out "
            f"(figures over {speed.timed_questions} questions).\n"
        )
    aggregate = speed.aggregate
    if aggregate is None:
        out.append("Aggregate tokens/s: not recorded (the manifest has no decoding time).\n")
    else:
        out.append(
            f"Aggregate: {fmt(aggregate.tokens_per_s, '.1f')} output tokens/s at concurrency "
            f"{aggregate.concurrency} ({aggregate.output_tokens} tokens in "
            f"{aggregate.decode_s:.1f} s of decoding"
            + (
                f", pooled over {aggregate.sessions} sessions of a resumed run, which reads "
                "low where a session redid only a few turns"
                if aggregate.sessions > 1
                else ""
            )
            + ").\n"
        )
    return "\n".join(out)


PLOT_CAPTIONS = {
    "categories.png": "per category",
    "histogram.png": "histogram",
    "positions.png": "per position",
}


def render_report(
    summary: Summary,
    manifest: Manifest | None = None,
    reference: ReferenceTable | None = None,
    plots: Sequence[Path] = (),
) -> str:
    """report.md's text; `plots` are the charts `render_plots` wrote, linked at the end."""
    out = _headline(summary, manifest)
    if manifest is not None:
        out += _setup(summary, manifest)
    if reference is not None:
        out += _against(summary, reference)
    out += _conventions(summary)
    out += _turn_split(summary)
    out.append(step_detail_note(summary))
    out += _histogram(summary)
    out += _positions(summary)
    out += segments_section(summary)
    out.append(speed_section(summary))
    out += _signals_and_failures(summary)
    for plot in plots:  # only the charts that were written
        out.append(f"![{PLOT_CAPTIONS.get(plot.name, plot.stem)}](plots/{plot.name})\n")
    return "\n".join(out)


def _headline(summary: Summary, manifest: Manifest | None) -> list[str]:
    """The title, warnings for an incomplete or invalid run, and the card's table."""
    title = manifest.run_id if manifest else "run"
    out = [f"# {dataset_label(summary.dataset)} acceptance: {title}\n"]
    if not summary.complete:
        out.append(
            f"> **Incomplete run**: {len(summary.failed)} failed and {len(summary.missing)} "
            f"missing turns; {summary.counted_questions} of {summary.expected_questions} "
            "questions are counted. The figures below cover only those.\n"
        )
    if not summary.valid:
        errors = [s for s in summary.signals if s.severity == "error"]
        out.append("> **Invalid run**: " + " ".join(s.message for s in errors) + "\n")
    out.append(
        f"Acceptance length (tokens per step, prefill steps included, per-question mean; "
        f'the model cards\' "acceptance rate") at draft length {summary.draft_len}.\n'
    )
    out.append(card_table(summary) + "\n")
    return out


def _setup(summary: Summary, manifest: Manifest) -> list[str]:
    c = manifest.config
    engine = manifest.engine.name if manifest.engine else c.engine.kind
    template = manifest.chat_template
    effort_used = template.reasoning_effort_used if template else "?"
    return [
        "## Setup\n",
        "| | |\n|---|---|\n"
        f"| target | {c.target.name} |\n| engine | {engine} |\n"
        f"| draft length | {summary.draft_len} |\n| temperature | {c.sampling.temperature} |\n"
        f"| max tokens per turn | {c.sampling.max_tokens} |\n"
        f"| reasoning effort | {c.conversation.reasoning_effort} "
        f"(template uses it: {effort_used}) |\n"
        f"| turn-2 history | {c.conversation.turn2_history} |\n"
        + _dataset_rows(manifest)
        + f"| questions | {summary.counted_questions} of {summary.expected_questions} |\n"
        f"| methodology | v{summary.methodology_version} |\n",
    ]


def _dataset_rows(manifest: Manifest) -> str:
    """The dataset and sample, for any dataset but MT-Bench (whose setup table predates
    them and stays as it was)."""
    d = manifest.dataset
    if d.name == "mt-bench":
        return ""
    rows = f"| dataset | {dataset_label(d.name)} ({d.source}, sha256 {d.sha256[:12]}…) |\n"
    if d.sample:
        rows += f"| sample | {d.sample} |\n"
    if d.turn_counts:
        rows += f"| user turns | {sum(d.turn_counts)} in {len(d.turn_counts)} conversations |\n"
    return rows


def _against(summary: Summary, reference: ReferenceTable) -> list[str]:
    """This run's card AL beside the reference table's, category by category."""
    out = [
        f"## Against {reference.name}\n",
        f"Reference: {reference.source} (draft length {reference.draft_len}; "
        f"{reference.setup}). Δ = this run − reference.\n",
        "| Category | this run | 95 % CI | reference | Δ | Δ % |\n|---|---|---|---|---|---|",
    ]
    for name, group in _rows(summary):
        ref = lookup(reference, name)
        mine = group.acceptance_length
        if ref is None or mine is None:
            delta = rel = "–"
        else:
            delta = f"{mine - ref:+.3f}"
            rel = f"{(mine - ref) / ref:+.1%}"
        out.append(
            f"| {name} | {fmt(mine)} | {fmt_ci(group.ci95)} | {fmt(ref)} | {delta} | {rel} |"
        )
    out.append("")
    return out


def _its_turns(summary: Summary) -> str:
    """How a question's turns are named: MT-Bench's two, or any number."""
    return "both turns" if summary.dataset in (None, "mt-bench") else "all its turns"


def _conventions(summary: Summary) -> list[str]:
    out = [
        "## Other conventions\n",
        f"Card AL: per question Σe/steps over {_its_turns(summary)}, averaged over questions. "
        "Decode AL: "
        "the same without prefill steps. Pooled AL: Σe/Σsteps over all steps (token-weighted). "
        "Draft acceptance: Σ(e−1)/(k·decode steps); 'of proposed' divides by the drafts "
        "the engine really proposed.\n",
        "| Category | card AL | 95 % CI | decode AL | pooled AL | draft acceptance | of proposed |\n"
        "|---|---|---|---|---|---|---|",
    ]
    for name, g in _rows(summary):
        out.append(
            f"| {name} | {fmt(g.acceptance_length)} | {fmt_ci(g.ci95)} | {fmt(g.decode_acceptance_length)} "
            f"| {fmt(g.pooled_acceptance_length)} | {fmt(g.draft_acceptance_rate)} "
            f"| {fmt(g.proposed_draft_acceptance_rate)} |"
        )
    out.append("")
    return out


MAX_TURN_COLUMNS = 6
"""Turn columns of the turn split; later turns of long conversations are in summary.json."""


def _turn_split(summary: Summary) -> list[str]:
    """Card AL of each turn alone (MT-Bench: turn 1 and turn 2), over the questions that
    have that turn."""
    overall = summary.overall
    turns = [t for t, block in (overall.turns.items() if overall else []) if block.n_questions]
    if turns == ["1"]:
        return ["## Turn split\n", "Every question has one turn.\n"]
    turns = sorted(set(turns) | {"1", "2"}, key=int)
    shown = turns[:MAX_TURN_COLUMNS]
    header = " | ".join(f"turn {t} AL" for t in shown)
    out = ["## Turn split\n", f"| Category | {header} |\n|---|" + "---|" * len(shown)]
    for name, g in _rows(summary):
        cells = " | ".join(
            fmt(g.turns[t].acceptance_length if t in g.turns else None) for t in shown
        )
        out.append(f"| {name} | {cells} |")
    out.append("")
    if len(turns) > len(shown):
        out.append(f"Turns {int(shown[-1]) + 1} to {turns[-1]} are in summary.json.\n")
    return out


def _histogram(summary: Summary) -> list[str]:
    k = summary.draft_len
    header = " | ".join(f"e={e}" for e in range(1, k + 2))
    out = [
        "## Histogram (decode steps by tokens emitted)\n",
        f"| Category | {header} |\n|---|" + "---|" * (k + 1),
    ]
    for name, g in _rows(summary):
        out.append(f"| {name} | " + " | ".join(str(c) for c in g.histogram) + " |")
    out.append("")
    return out


def _positions(summary: Summary) -> list[str]:
    k = summary.draft_len
    positions = " | ".join(f"joint j={j} | cond j={j}" for j in range(1, k + 1))
    out = [
        "## Acceptance per draft position\n",
        "Joint: share of decode steps whose first j drafts were all accepted. "
        "Conditional: draft j accepted given drafts 1..j−1 were.\n",
        f"| Category | {positions} |\n|---|" + "---|" * (2 * k),
    ]
    for name, g in _rows(summary):
        cells = " | ".join(
            f"{fmt(jv)} | {fmt(cv)}" for jv, cv in zip(g.joint_acceptance, g.conditional_acceptance)
        )
        out.append(f"| {name} | {cells} |")
    out.append("")
    return out


def _slashed(values: Sequence[float | int | None], spec: str = ".3f") -> str:
    return " / ".join(str(v) if isinstance(v, int) else fmt(v, spec) for v in values)


def segments_section(summary: Summary) -> list[str]:
    """Reasoning and answer apart (docs/metrics.md), per category: card, decode and pooled
    AL, histogram and per-position rates of each segment and of both. Left out when no
    turn has reasoning (a run of a model that does not think reads as it always did)."""
    seg = summary.segments
    if seg is None or not (seg.overall.split_turns or seg.overall.not_split_turns):
        return []
    o = seg.overall
    turns = o.split_turns + o.no_reasoning_turns + o.not_split_turns
    k = summary.draft_len
    out = [
        "## Reasoning and answer apart\n",
        f"{o.split_turns} of {turns} turns are split at the end of their reasoning; "
        f"{o.no_reasoning_turns} have no reasoning and {o.not_split_turns} have reasoning "
        "but no per-step detail to place their steps (both left out of this table). "
        f"Rule: {seg.rule}. Histogram: decode steps with e = 1 … {k + 1}; joint and "
        f"conditional acceptance at draft positions j = 1 … {k}.\n",
        "| Category | segment | card AL | decode AL | pooled AL | histogram | joint | "
        "conditional |\n|---|---|---|---|---|---|---|---|",
    ]
    for name, group in [*seg.categories.items(), ("overall", o)]:
        for segment, b in group.segments.items():
            if not b.n_questions:
                continue
            out.append(
                f"| {name} | {segment} | {fmt(b.acceptance_length)} | "
                f"{fmt(b.decode_acceptance_length)} | {fmt(b.pooled_acceptance_length)} | "
                f"{_slashed(b.histogram)} | {_slashed(b.joint_acceptance, '.2f')} | "
                f"{_slashed(b.conditional_acceptance, '.2f')} |"
            )
    out.append("")
    return out


def _signals_and_failures(summary: Summary) -> list[str]:
    out = ["## Sanity signals\n"]
    for s in summary.signals:
        out.append(f"- **{s.severity}** `{s.code}`: {s.message}")
    if not summary.signals:
        out.append("- none")
    out.append("")
    if summary.failed:
        out.append("## Failed turns\n")
        for ref in summary.failed:
            out.append(f"- question {ref.question_id} turn {ref.turn}: {ref.error}")
        out.append("")
    return out


def render_plots(summary: Summary, reference: ReferenceTable | None, folder: Path) -> list[Path]:
    """Per-category bars with intervals and reference markers, histogram, per-position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(summary)
    written = []
    k = summary.draft_len

    fig, ax = plt.subplots(figsize=(9, 4))
    names = [n for n, _ in rows]
    values = [g.acceptance_length or 0 for _, g in rows]
    # Clipped at 0: a one-question interval is the value itself up to float rounding, and
    # matplotlib refuses an error bar of length -1e-16 (that crashed `bench run`).
    low = [max(0.0, v - (g.ci95[0] if g.ci95 else v)) for v, (_, g) in zip(values, rows)]
    high = [max(0.0, (g.ci95[1] if g.ci95 else v) - v) for v, (_, g) in zip(values, rows)]
    ax.bar(names, values, yerr=[low, high], capsize=4, color="#4C72B0", label="this run (95 % CI)")
    if reference is not None:
        ref_vals = [lookup(reference, n) for n in names]
        xs = [i for i, v in enumerate(ref_vals) if v is not None]
        ax.scatter(
            xs,
            [ref_vals[i] for i in xs],
            marker="D",
            color="#DD8452",
            zorder=3,
            label=reference.name,
        )
    ax.set_ylabel("acceptance length (tokens/step)")
    ax.set_ylim(1, max([k + 1.05, *values]))
    ax.set_title(f"{dataset_label(summary.dataset)} acceptance length per category (k = {k})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    written.append(folder / "categories.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # Without per-step detail (totals-only engines) there is no histogram to draw.
    if summary.overall is not None and summary.overall.step_detail_turns:
        fig, ax = plt.subplots(figsize=(6, 4))
        hist = summary.overall.histogram
        total = sum(hist) or 1
        ax.bar([str(e) for e in range(1, k + 2)], [c / total for c in hist], color="#55A868")
        ax.set_xlabel("tokens emitted per decode step (e)")
        ax.set_ylabel("share of decode steps")
        ax.set_title("Acceptance histogram, all categories")
        fig.tight_layout()
        written.append(folder / "histogram.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        positions = list(range(1, k + 1))
        joint = [v or 0 for v in summary.overall.joint_acceptance]
        cond = [v or 0 for v in summary.overall.conditional_acceptance]
        ax.plot(positions, joint, marker="o", label="joint (drafts 1..j accepted)")
        ax.plot(positions, cond, marker="s", label="conditional (j given 1..j-1)")
        ax.set_xticks(positions)
        ax.set_xlabel("draft position j")
        ax.set_ylabel("acceptance")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("Acceptance per draft position, all categories")
        fig.tight_layout()
        written.append(folder / "positions.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write_results(
    run: RunDir,
    summary: Summary,
    manifest: Manifest | None,
    reference: ReferenceTable | None,
) -> None:
    """The one writer of summary.json, report.md and plots/."""
    plots = render_plots(summary, reference, run.plots_dir)
    write_text_atomic(run.report_path, render_report(summary, manifest, reference, plots))
    write_text_atomic(run.summary_path, summary.model_dump_json(indent=2))
