"""report.py's charts survive the intervals real runs produce."""

from __future__ import annotations

from bench.metrics import summarize
from bench.report import render_plots
from tests.test_metrics import WORKED


def test_category_bars_survive_an_interval_rounded_past_the_value(tmp_path):
    summary = summarize(WORKED, draft_len=3)
    group = summary.categories["writing"]
    # What a one-question category gave on a real run: the percentile of 2000 equal means
    # came out one ulp above the mean itself, and matplotlib rejected the negative bar.
    value = group.acceptance_length
    rounded = group.model_copy(update={"ci95": (value + 1e-15, value + 1e-15)})
    summary = summary.model_copy(update={"categories": {"writing": rounded}})
    written = render_plots(summary, None, tmp_path)
    assert (tmp_path / "categories.png") in written
