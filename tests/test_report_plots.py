"""report.py's charts survive the intervals real runs produce."""

from __future__ import annotations

from bench.report import render_plots, render_report
from bench.summary import summarize
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


def test_report_links_only_the_charts_that_were_written(tmp_path):
    summary = summarize(WORKED, draft_len=3)
    written = render_plots(summary, None, tmp_path / "all")
    report = render_report(summary, plots=written)
    for name in ("categories.png", "histogram.png", "positions.png"):
        assert f"(plots/{name})" in report
    # With no overall figure, only the per-category chart is drawn, and only it is linked.
    no_overall = summary.model_copy(update={"overall": None})
    written = render_plots(no_overall, None, tmp_path / "some")
    assert [p.name for p in written] == ["categories.png"]
    report = render_report(no_overall, plots=written)
    assert "(plots/categories.png)" in report
    assert "histogram.png" not in report and "positions.png" not in report
