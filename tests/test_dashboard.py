"""`bench dashboard`: the static site, its escaping, and the page in a real headless Chromium.

The browser test needs Chromium and its driver from the system packages (`.ci/run` installs
them). Where they are missing it is skipped, unless BENCH_REQUIRE_BROWSER=1 (set by
`.ci/run`) makes that a failure. Its screenshot is kept as test-artifacts/dashboard.png.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest
from conftest import records_for, steps_for

from bench.cli import main
from bench.config import REPO_ROOT
from bench.dashboard import build_dashboard
from bench.summary import Summary

REFERENCE = REPO_ROOT / "configs" / "references" / "kimi-k2-thinking-eagle3.yaml"
ARTIFACTS = REPO_ROOT / "test-artifacts"
HOSTILE_TEXT = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned=2'>"
HOSTILE_ID = "r3<img src=x onerror=window.__pwned=3>"
MATH = (111, 112)


def worse_math():
    change = {}
    for qid in MATH:
        t1, t2 = steps_for(qid)
        change[qid] = tuple([t[0], *(max(1, e - 1) for e in t[1:])] for t in (t1, t2))
    return records_for(change=change)


@pytest.fixture
def results(tmp_path, make_run) -> Path:
    """A results folder: a baseline, two older runs, and a newest run with hostile text."""
    root = tmp_path / "results"
    make_run("cpu-baseline", root=root / "baselines", started_at="2026-11-27T08:00:00+00:00")
    make_run("run-a", root=root / "runs", started_at="2026-11-28T08:00:00+00:00")
    make_run("run-b", root=root / "runs", started_at="2026-11-28T20:00:00+00:00", draft_len=4)
    records = worse_math()
    records[0] = records[0].model_copy(update={"text": HOSTILE_TEXT})
    make_run(
        "run-c",
        records,
        root=root / "runs",
        started_at="2026-11-29T08:00:00+00:00",
        run_id=HOSTILE_ID,
        target_name="Smol<script>window.__pwned=4</script>",
    )
    # Something that looks like a run but is not readable, and unrelated files.
    (root / "runs" / "broken").mkdir()
    (root / "runs" / "broken" / "manifest.json").write_text("{}")
    (root / "runs" / "broken" / "summary.json").write_text("{}")
    (root / "notes.txt").write_text("not a run")
    return root


def summary_of(run: Path) -> Summary:
    return Summary.model_validate_json((run / "summary.json").read_text())


def test_site_files_order_and_links(results, capsys):
    assert main(["dashboard", str(results), "--reference", str(REFERENCE)]) == 0
    out = results / "dashboard"
    page = (out / "index.html").read_text()
    md = (out / "dashboard.md").read_text()
    assert "4 runs; wrote" in capsys.readouterr().out
    # Runs table: newest first; every row links to a report.md copied into the site.
    links = re.findall(r'<a href="([^"]+)">', page)
    assert len(links) == 4
    for link in links:
        assert (out / urllib.parse.unquote(link)).is_file(), link
        assert link.startswith("runs/") and link.endswith("/report.md")
    ids = re.findall(r'<a href="[^"]+">([^<]+)</a>', page)
    assert ids[1:] == ["run-b", "run-a", "cpu-baseline"]
    # The latest run is the newest non-baseline run; the gate ran against the baseline.
    latest = summary_of(results / "runs" / "run-c")
    assert f"{latest.overall.acceptance_length:.3f}" in page
    assert "Gate against the baseline: 2 problems" in page
    assert "math AL dropped" in page and "math AL dropped" in md
    assert "| overall |" in md and "### All runs" in md
    # Charts: one trend chart per category and overall, plus the three latest-run charts.
    assert page.count("<svg") == 9 + 3
    # The unreadable folder is listed, not silently dropped.
    assert "Skipped folders" in page and "broken" in page
    # Self-contained: no scripts, no remote URLs (the SVG namespace is an identifier).
    assert "<script" not in page
    assert not re.findall(r"(?:src|href)=\"(?:https?:)?//", page)
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "Content-Security-Policy" in page


def test_everything_from_files_and_models_is_escaped(results):
    build_dashboard(results, results / "dashboard")
    page = (results / "dashboard" / "index.html").read_text()
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "Smol&lt;script&gt;window.__pwned=4&lt;/script&gt;" in page
    assert "r3&lt;img src=x onerror=window.__pwned=3&gt;" in page
    assert "<img" not in page and "<script" not in page
    md = (results / "dashboard" / "dashboard.md").read_text()
    assert "<script" not in md and "<img" not in md


def test_baseline_and_out_options(results, tmp_path):
    site = build_dashboard(results, tmp_path / "site", baseline=results / "runs" / "run-a")
    assert (tmp_path / "site" / "index.html").is_file()
    assert not (results / "dashboard").exists()
    assert site.latest.run_id == HOSTILE_ID
    page = (tmp_path / "site" / "index.html").read_text()
    assert "Baseline: <b>run-a</b>" in page


def test_no_runs_is_unusable_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["dashboard", str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path / "absent")]) == 2
    assert "absent is not a folder" in capsys.readouterr().err


# --- the page in a real browser ----------------------------------------------------------


CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver:
        if os.environ.get("BENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(
                "Chromium, chromedriver and selenium are required (BENCH_REQUIRE_BROWSER=1)"
            )
        pytest.skip("needs chromium, chromium-driver (apt) and selenium (pip)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_dashboard_in_headless_chromium(results):
    # The committed CPU baseline joins the synthetic runs: real numbers on the page.
    for real in sorted((REPO_ROOT / "results" / "baselines").glob("*/summary.json")):
        shutil.copytree(real.parent, results / "baselines" / real.parent.name)
    build_dashboard(results, results / "dashboard", reference=REFERENCE)
    page = results / "dashboard" / "index.html"
    latest = summary_of(results / "runs" / "run-c")

    browser = _browser()
    try:
        browser.get(page.as_uri())
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1400, height + 80)
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        pwned = browser.execute_script("return typeof window.__pwned")
        cells = browser.execute_script(
            "return [...document.querySelectorAll('#latest-table tbody tr')]"
            ".map(r => [...r.cells].map(c => c.textContent))"
        )
        answer = browser.execute_script(
            "return document.querySelector('#questions-table tbody tr code').textContent"
        )
        runs = browser.execute_script(
            "return [...document.querySelectorAll('#runs-table tbody tr')].length"
        )
        svgs = browser.execute_script("return document.querySelectorAll('svg').length")
        title = browser.title
    finally:
        browser.quit()

    assert errors == []
    assert pwned == "undefined"  # no injected script or handler ran
    assert answer.startswith(HOSTILE_TEXT[:40])  # shown as text
    assert HOSTILE_ID in title
    by_name = {row[0]: row for row in cells}
    for name in ["writing", "math", "humanities", "overall"]:
        group = latest.overall if name == "overall" else latest.categories[name]
        assert by_name[name][1] == f"{group.acceptance_length:.3f}"
        assert by_name[name][2] == f"[{group.ci95[0]:.3f}, {group.ci95[1]:.3f}]"
    assert by_name["math"][5] == "3.340"  # the model card's value
    assert runs == 4 + len(list((REPO_ROOT / "results" / "baselines").glob("*/summary.json")))
    assert svgs == 12
    shot = ARTIFACTS / "dashboard.png"
    assert shot.stat().st_size > 20_000


def test_baseline_that_cannot_be_compared_is_shown_not_fatal(results):
    summary = results / "baselines" / "cpu-baseline" / "summary.json"
    data = summary.read_text().replace('"draft_len": 3', '"draft_len": 4', 1)
    summary.write_text(data)
    build_dashboard(results, results / "dashboard", baseline=summary.parent)
    page = (results / "dashboard" / "index.html").read_text()
    assert "cannot compare: " in page and "disagree on draft_len" in page


def test_trend_lines_follow_setups_and_datasets_bring_their_categories(tmp_path, make_run):
    """Runs of another draft length or dataset are their own series; a HumanEval run's
    category gets its own trend chart."""
    from conftest import turn

    root = tmp_path / "results"
    make_run("a", root=root, started_at="2026-11-28T08:00:00+00:00")
    make_run("b", root=root, started_at="2026-11-28T09:00:00+00:00")
    make_run("c", root=root, started_at="2026-11-28T10:00:00+00:00", draft_len=4)
    humaneval = [
        turn(i, 1, [1, 2, 3, 1], category="humaneval", reasoning_tokens=0) for i in range(4)
    ]
    make_run("d", humaneval, root=root, started_at="2026-11-28T11:00:00+00:00", dataset="humaneval")
    build_dashboard(root, tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    setups = re.search(r"One line per setup.*?</p>", page).group(0)
    assert setups.count("<b>") == 3  # k=3 MT-Bench (a, b), k=4 MT-Bench (c), HumanEval (d)
    assert "HumanEval, reference" in setups and "k=4" in setups
    # a–b joined in each MT-Bench category and overall (9), and the latest run's
    # per-position chart (joint, conditional)
    assert page.count("<polyline") == 9 + 2
    assert 'aria-label="humaneval"' in page
    assert "<td>HumanEval</td>" in page
