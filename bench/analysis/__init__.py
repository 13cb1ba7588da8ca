"""Run directories in pandas, and charts of them: the API behind
notebooks/category_breakdown.ipynb, usable from any script.

    from bench import analysis
    runs = analysis.load_runs(analysis.default_run_dirs())
    analysis.categories_frame(runs)          # one row per run × category
    analysis.sweep_frame("results/sweeps/s1")  # one row per cell of a `bench sweep`

Loaders read manifest.json and records.jsonl; every figure comes from `bench.metrics`
(the code behind summary.json). Needs pandas: `pip install 'bench[analysis]'`.
"""

from bench.analysis.frames import (
    ALL,
    OVERALL,
    RUN_DIRS_ENV,
    Run,
    card_table,
    categories_frame,
    compare_runs,
    default_run_dirs,
    find_runs,
    find_sweeps,
    histogram_frame,
    length_correlation,
    load_run,
    load_runs,
    lowest_questions,
    position_buckets_frame,
    positions_frame,
    questions_frame,
    runs_frame,
    segments_frame,
    steps_frame,
    sweep_frame,
    turns_frame,
)
from bench.analysis.plots import (
    plot_categories,
    plot_differences,
    plot_histograms,
    plot_length,
    plot_position_buckets,
    plot_positions,
    plot_turns,
)

__all__ = [
    "ALL",
    "OVERALL",
    "RUN_DIRS_ENV",
    "Run",
    "card_table",
    "categories_frame",
    "compare_runs",
    "default_run_dirs",
    "find_runs",
    "find_sweeps",
    "histogram_frame",
    "length_correlation",
    "load_run",
    "load_runs",
    "lowest_questions",
    "position_buckets_frame",
    "positions_frame",
    "questions_frame",
    "runs_frame",
    "segments_frame",
    "steps_frame",
    "sweep_frame",
    "turns_frame",
    "plot_categories",
    "plot_differences",
    "plot_histograms",
    "plot_length",
    "plot_position_buckets",
    "plot_positions",
    "plot_turns",
]
