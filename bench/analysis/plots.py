"""Charts of the analysis frames (matplotlib), for the notebook and for scripts.

Each helper takes a frame from `bench.analysis.frames`, draws on a new figure and returns
it; nothing is shown or written here (call `fig.savefig` or let Jupyter display it). Runs
are told apart by colour, categories by position on the x axis or by panel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.analysis.frames import ALL
from bench.references import ReferenceTable
from bench.tables import OVERALL, lookup


def _error_bars(mid: np.ndarray, low: pd.Series, high: pd.Series) -> list[np.ndarray]:
    """Distances from `mid` to an interval's ends, as matplotlib's yerr wants them: a
    missing interval draws no bar, and float rounding (a one-question interval is the
    value itself, summed in another order) never gives a negative length."""
    below = mid - low.to_numpy(dtype=float)
    above = high.to_numpy(dtype=float) - mid
    return [np.clip(np.nan_to_num(d), 0, None) for d in (below, above)]


def _categories(frame: pd.DataFrame) -> list[str]:
    """Categories in the frame's order (card order, overall last)."""
    return list(dict.fromkeys(frame["category"]))


def _panels(n: int, columns: int = 4, size: tuple[float, float] = (3.2, 2.6)) -> tuple:
    rows = max(1, -(-n // columns))
    cols = min(columns, max(n, 1))
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _grouped_bars(
    ax, categories: Sequence[str], series: Sequence[tuple[str, pd.DataFrame, str]]
) -> None:
    """Bars per category, one per series (label, frame indexed by category, value prefix),
    with the 95 % interval as error bars."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(categories))
    for i, (label, frame, prefix) in enumerate(series):
        frame = frame.reindex(categories)
        values = frame[prefix + "acceptance_length"].to_numpy(dtype=float)
        yerr = _error_bars(values, frame[prefix + "ci95_low"], frame[prefix + "ci95_high"])
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            yerr=yerr,
            capsize=3,
            label=label,
        )
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.set_ylabel("acceptance length (tokens/step)")


def plot_categories(categories: pd.DataFrame, reference: ReferenceTable | None = None) -> Figure:
    """Card AL per category with 95 % intervals, runs side by side, reference as diamonds."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    names = _categories(categories)
    series = [
        (run, f.set_index("category"), "") for run, f in categories.groupby("run", sort=False)
    ]
    _grouped_bars(ax, names, series)
    if reference is not None:
        values = [lookup(reference, c) for c in names]
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.scatter(
            xs, [values[i] for i in xs], marker="D", color="black", zorder=3, label=reference.name
        )
    ax.set_ylim(bottom=1)  # last: setting a limit stops autoscaling to later artists
    ax.set_title("MT-Bench acceptance length per category (95 % bootstrap interval)")
    ax.legend(fontsize=8)
    return fig


def plot_turns(categories: pd.DataFrame) -> Figure:
    """Turn 1 against turn 2 per category, one panel per run, with 95 % intervals."""
    runs = list(dict.fromkeys(categories["run"]))
    fig, axes = _panels(len(runs), columns=1, size=(10, 3.6))
    for ax, run in zip(axes, runs):
        frame = categories[categories["run"] == run].set_index("category")
        _grouped_bars(
            ax, list(frame.index), [("turn 1", frame, "turn1_"), ("turn 2", frame, "turn2_")]
        )
        ax.set_ylim(bottom=1)
        ax.set_title(f"{run}: turn 1 vs turn 2")
        ax.legend(fontsize=8)
    return fig


def plot_histograms(histogram: pd.DataFrame, turn: str = ALL) -> Figure:
    """Share of decode steps by tokens emitted (e), one panel per category, runs overlaid."""
    frame = histogram[histogram["turn"] == turn]
    names = _categories(frame)
    fig, axes = _panels(len(names))
    runs = list(dict.fromkeys(frame["run"]))
    width = 0.8 / max(len(runs), 1)
    for ax, category in zip(axes, names):
        for i, run in enumerate(runs):
            part = frame[(frame["category"] == category) & (frame["run"] == run)]
            ax.bar(part["e"] + (i - (len(runs) - 1) / 2) * width, part["share"], width, label=run)
        ax.set_title(category)
        ax.set_xlabel("tokens per decode step (e)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("share of decode steps")
    axes[0].legend(fontsize=7)
    return fig


def plot_positions(positions: pd.DataFrame, turn: str = ALL) -> Figure:
    """Joint (solid) and conditional (dashed) acceptance per draft position, per category."""
    frame = positions[positions["turn"] == turn]
    names = _categories(frame)
    fig, axes = _panels(len(names))
    for ax, category in zip(axes, names):
        for run, part in frame[frame["category"] == category].groupby("run", sort=False):
            line = ax.plot(part["position"], part["joint"], marker="o", label=f"{run} joint")[0]
            ax.plot(
                part["position"],
                part["conditional"],
                marker="s",
                linestyle="--",
                color=line.get_color(),
                label=f"{run} conditional",
            )
        ax.set_title(category)
        ax.set_xlabel("draft position j")
        ax.set_ylim(0, 1)
        ax.set_xticks(sorted(frame["position"].unique()))
    axes[0].set_ylabel("acceptance")
    axes[0].legend(fontsize=7)
    return fig


def plot_length(turns: pd.DataFrame) -> Figure:
    """Each turn's AL against its response length (output tokens), coloured by category;
    turns that hit max_tokens are drawn as crosses."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    frame = turns[turns["ok"] & turns["counted"]]
    for category, part in frame.groupby("category", sort=False):
        capped = part["finish_reason"] == "length"
        color = ax.scatter(
            part.loc[~capped, "output_tokens"],
            part.loc[~capped, "acceptance_length"],
            label=category,
            alpha=0.7,
        ).get_facecolor()
        ax.scatter(
            part.loc[capped, "output_tokens"],
            part.loc[capped, "acceptance_length"],
            marker="x",
            color=color[:1] if len(color) else None,
            alpha=0.7,
        )
    ax.set_xlabel("response length (output tokens of the turn; × = cut at max_tokens)")
    ax.set_ylabel("turn acceptance length")
    ax.set_title("Acceptance length against response length, one point per turn")
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_position_buckets(buckets: pd.DataFrame, categories: Sequence[str] | None = None) -> Figure:
    """Decode AL by position in the response, one line per category (overall in black),
    one panel per run."""
    runs = list(dict.fromkeys(buckets["run"]))
    fig, axes = _panels(len(runs), columns=1, size=(8, 4))
    wanted = categories or _categories(buckets)
    for ax, run in zip(axes, runs):
        for category, part in buckets[buckets["run"] == run].groupby("category", sort=False):
            if category not in wanted:
                continue
            style = {"linewidth": 3, "color": "black"} if category == OVERALL else {}
            ax.plot(
                part["start_tokens"],
                part["decode_acceptance_length"],
                marker="o",
                label=category,
                **style,
            )
        ax.set_xlabel("position in the response (tokens before the step, bucket start)")
        ax.set_ylabel("decode acceptance length (pooled)")
        ax.set_title(f"{run}: does acceptance fall off in long answers?")
        ax.legend(fontsize=7, ncol=3)
    return fig


def plot_differences(comparison: pd.DataFrame) -> Figure:
    """Paired AL difference against the baseline per category with its 95 % interval;
    filled markers exceed the noise (interval leaves out 0)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    names = _categories(comparison)
    runs = list(dict.fromkeys(comparison["run"]))
    x = np.arange(len(names))
    for i, run in enumerate(runs):
        part = comparison[comparison["run"] == run].set_index("category").reindex(names)
        offset = x + (i - (len(runs) - 1) / 2) * 0.8 / max(len(runs), 1)
        mid = part["paired_delta"].to_numpy(dtype=float)
        yerr = _error_bars(mid, part["paired_ci95_low"], part["paired_ci95_high"])
        bars = ax.errorbar(offset, mid, yerr=yerr, fmt="o", capsize=3, mfc="white", label=run)
        real = part["exceeds_noise"].eq(True).to_numpy()
        ax.scatter(offset[real], mid[real], color=bars[0].get_color(), zorder=3)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(x, names, rotation=30, ha="right")
    baseline = comparison["baseline"].iloc[0] if len(comparison) else "baseline"
    ax.set_ylabel(f"AL − {baseline} (shared questions)")
    ax.set_title("Difference against the baseline (95 % paired bootstrap; filled = beyond noise)")
    ax.legend(fontsize=8)
    return fig
