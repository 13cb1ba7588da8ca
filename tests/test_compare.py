"""`bench compare`: every exit path (0 no regression, 1 each failure kind, 2 unusable input).

Runs are built from turn records through `bench.summary.summarize` (see conftest.py), and
the committed CPU baseline is compared with itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QIDS, records_for, steps_for, turn

from bench.cli import main
from bench.compare import GateConfig, compare, load_side
from bench.config import REPO_ROOT

REFERENCE = REPO_ROOT / "configs" / "references" / "kimi-k2-thinking-eagle3.yaml"
BASELINES = REPO_ROOT / "results" / "baselines"

MATH = [111, 112]


def worse(qids, drop: int = 1):
    """Records where the given questions accept fewer drafts (every decode step lowered)."""
    change = {}
    for qid in qids:
        t1, t2 = steps_for(qid)
        change[qid] = tuple([t[0], *(max(1, e - drop) for e in t[1:])] for t in (t1, t2))
    return records_for(change=change)


def gate(tmp_path: Path, *args: str, out: str = "cmp") -> tuple[int, dict, str]:
    code = main(["compare", *args, "--out", str(tmp_path / out)])
    data = json.loads((tmp_path / out / "compare.json").read_text()) if code != 2 else {}
    md = (tmp_path / out / "compare.md").read_text() if code != 2 else ""
    return code, data, md


def failing(data: dict) -> list[tuple[str, str]]:
    return [(c["kind"], c["subject"]) for c in data["checks"] if not c["allowed"]]


# --- exit 0 ------------------------------------------------------------------------------


def test_identical_runs_pass_and_say_so(make_run, tmp_path, capsys):
    base, cand = make_run("base"), make_run("cand")
    code, data, md = gate(tmp_path, str(base), str(cand))
    out = capsys.readouterr().out
    assert code == 0 and data["passed"] and failing(data) == []
    assert "no regression" in out and "no regression" in md
    assert "paired bootstrap" in out and "paired bootstrap" in data["noise_method"]
    overall = data["rows"][-1]
    assert overall["name"] == "overall" and overall["delta"] == 0
    assert overall["delta_ci95"] == [0.0, 0.0] and overall["beyond_noise"] is False
    assert overall["paired_questions"] == len(QIDS)
    assert [r["name"] for r in data["rows"][:-1]] == [
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    ]
    assert "| overall |" in md and "Δ 95 % CI" in md


def test_improvement_passes_and_is_beyond_noise(make_run, tmp_path):
    base = make_run("base", worse(QIDS))
    cand = make_run("cand")
    code, data, _ = gate(tmp_path, str(base), str(cand))
    overall = data["rows"][-1]
    assert code == 0 and overall["delta"] > 0
    assert overall["beyond_noise"] is True and overall["delta_ci95"][0] > 0


# --- exit 1: regressions -----------------------------------------------------------------


def test_category_drop_beyond_tolerance_fails(make_run, tmp_path, capsys):
    base, cand = make_run("base"), make_run("cand", worse(MATH))
    code, data, md = gate(tmp_path, str(base), str(cand))
    assert code == 1 and not data["passed"]
    assert ("regression", "math") in failing(data)
    math = next(r for r in data["rows"] if r["name"] == "math")
    assert math["relative_delta"] == pytest.approx(
        (math["candidate"] - math["baseline"]) / math["baseline"]
    )
    assert math["relative_delta"] < -0.02 and math["regression"]
    assert "REGRESSION" in capsys.readouterr().out and "❌" in md
    # Other categories did not move.
    assert not next(r for r in data["rows"] if r["name"] == "writing")["regression"]


def test_per_category_tolerance_from_gate_yaml(make_run, tmp_path):
    base, cand = make_run("base"), make_run("cand", worse(MATH))
    loose = tmp_path / "gate.yaml"
    loose.write_text("tolerance: 0.02\ncategories:\n  math: 0.9\n  overall: 0.9\n")
    code, data, _ = gate(tmp_path, str(base), str(cand), "--gate", str(loose))
    assert code == 0, failing(data)
    # Math alone excused: the overall drop still fails at the default tolerance.
    math_only = tmp_path / "math.yaml"
    math_only.write_text("categories: {math: 0.9}\n")
    code, data, _ = gate(tmp_path, str(base), str(cand), "--gate", str(math_only))
    assert code == 1 and failing(data) == [("regression", "overall")]


def test_tolerance_flag(make_run, tmp_path):
    base, cand = make_run("base"), make_run("cand", worse(MATH))
    code, data, _ = gate(tmp_path, str(base), str(cand), "--tolerance", "0.9")
    assert code == 0 and data["gate"]["tolerance"] == 0.9


def test_joint_acceptance_under_lower_bound_fails(make_run, tmp_path, capsys):
    base, cand = make_run("base"), make_run("cand")
    code, data, _ = gate(tmp_path, str(base), str(cand), "--min-joint", "0.1,0.1,0.1")
    assert code == 0 and all(j["ok"] for j in data["joint_acceptance"])
    code, data, _ = gate(tmp_path, str(base), str(cand), "--min-joint", "0.1,0.1,0.99")
    assert code == 1 and failing(data) == [("joint_acceptance", "j=3")]
    assert "UNDER BOUND" in capsys.readouterr().out


# --- exit 1: sanity signals --------------------------------------------------------------


def _signal_records(kind: str):
    if kind == "acceptance_near_one":
        return [r for q in QIDS for r in (turn(q, 1, [1] * 10), turn(q, 2, [1] * 10))]
    if kind == "all_full_acceptance":
        return [r for q in QIDS for r in (turn(q, 1, [1, 4, 4, 4, 2]), turn(q, 2, [1, 4, 4, 3]))]
    if kind == "step_exceeds_draft_len":
        records = records_for()
        records[0] = turn(QIDS[0], 1, [1, 5, 2, 2])
        return records
    if kind == "failed_turns":
        records = records_for()
        records[1] = turn(QIDS[0], 2, [], finish_reason="error", error="RuntimeError: boom")
        return records
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "code_name",
    ["acceptance_near_one", "all_full_acceptance", "step_exceeds_draft_len", "failed_turns"],
)
def test_each_sanity_signal_fails_the_gate(make_run, tmp_path, code_name):
    base = make_run("base")
    cand = make_run("cand", _signal_records(code_name))
    code, data, md = gate(tmp_path, str(base), str(cand), "--tolerance", "1")
    assert code == 1
    assert ("sanity", f"candidate:{code_name}") in failing(data)
    signals = json.loads((cand / "summary.json").read_text())["signals"]
    assert any(s["code"] == code_name for s in signals)
    assert "sanity" in md


def test_sanity_signal_on_the_baseline_fails_too(make_run, tmp_path):
    base = make_run("base", _signal_records("failed_turns"))
    code, data, _ = gate(tmp_path, str(base), str(make_run("cand")))
    assert code == 1 and ("sanity", "baseline:failed_turns") in failing(data)


def test_warnings_do_not_fail_the_gate(make_run, tmp_path):
    # Every turn cut at max_tokens: a warning-level signal, reported but not gating.
    records = [r.model_copy(update={"finish_reason": "length"}) for r in records_for()]
    code, data, _ = gate(tmp_path, str(make_run("base")), str(make_run("cand", records)))
    assert code == 0, failing(data)


# --- exit 1: incomparable runs, and --allow ----------------------------------------------


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("draft_len", {"draft_len": 4}),
        ("temperature", {"temperature": 0.7}),
        ("max_tokens", {"max_tokens": 128}),
        ("questions", {"records": records_for(QIDS[:-1])}),
        ("turn2_history", {"turn2_history": "raw"}),
        ("methodology", {"methodology": "0"}),
        ("drafter", {"max_ngram": 2}),
        ("precision", {"target_fields": {"quantization": "int8-dynamic"}}),
        ("precision", {"target_fields": {"dtype": "bfloat16"}}),
    ],
)
def test_each_incomparability_fails_unless_allowed(make_run, tmp_path, capsys, field, kwargs):
    base, cand = make_run("base"), make_run("cand", **kwargs)
    code, data, _ = gate(tmp_path, str(base), str(cand))
    assert code == 1 and failing(data) == [("incomparable", field)]
    assert f"--allow {field}" in capsys.readouterr().out
    code, data, _ = gate(tmp_path, str(base), str(cand), "--allow", field, out="allowed")
    assert code == 0, failing(data)
    assert [c["subject"] for c in data["checks"] if c["allowed"]] == [field]


def test_questions_differ_pairs_only_shared_ones(make_run, tmp_path):
    base, cand = make_run("base"), make_run("cand", records_for(QIDS[:-2]))
    code, data, _ = gate(tmp_path, str(base), str(cand), "--allow", "questions")
    humanities = next(r for r in data["rows"] if r["name"] == "humanities")
    assert humanities["candidate"] is None and "not compared" in humanities["note"]
    assert data["rows"][-1]["paired_questions"] == len(QIDS) - 2


def test_manifest_from_before_quantization_reads_as_unquantised(make_run, tmp_path):
    old = make_run("old")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["config"]["target"]["quantization"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert load_side(old).settings["precision"] == "float32"
    code, data, _ = gate(tmp_path, str(old), str(make_run("new")))
    assert code == 0, failing(data)
    quantized = make_run("q", target_fields={"quantization": "int8-dynamic"})
    assert load_side(quantized).settings["precision"] == "float32+int8-dynamic"
    code, data, _ = gate(tmp_path, str(old), str(quantized), out="q")
    assert failing(data) == [("incomparable", "precision")]


# --- other kinds of sides ----------------------------------------------------------------


def test_bare_summary_json_carries_draft_len_methodology_and_questions(make_run, tmp_path):
    base = make_run("base")
    bare = tmp_path / "bare.json"
    bare.write_text((base / "summary.json").read_text())
    side = load_side(bare)
    assert side.kind == "summary"
    assert side.settings == {"draft_len": 3, "methodology": "1", "questions": QIDS}
    code, data, _ = gate(tmp_path, str(bare), str(make_run("cand")))
    assert code == 0
    assert any("temperature not checked" in n for n in data["notes"])
    # A summary.json inside a run directory is read with its manifest.
    assert load_side(base / "summary.json").kind == "run"


def test_reference_table_side_compares_on_what_it_has(make_run, tmp_path, capsys):
    cand = make_run("cand")
    code, data, md = gate(tmp_path, str(REFERENCE), str(cand), "--tolerance", "1")
    assert code == 0
    assert data["baseline"]["kind"] == "reference"
    assert "published table" in data["noise_method"]
    assert any("carries only draft length" in n for n in data["notes"])
    writing = data["rows"][0]
    assert writing["baseline"] == 2.282 and writing["beyond_noise"] in (True, False)
    # The table's draft length is still checked.
    code, data, _ = gate(
        tmp_path, str(REFERENCE), str(make_run("k4", draft_len=4)), "--tolerance", "1", out="k4"
    )
    assert code == 1 and failing(data) == [("incomparable", "draft_len")]


def test_library_call_returns_values(make_run):
    result = compare(load_side(make_run("a")), load_side(make_run("b")), GateConfig())
    assert result.passed and result.failures == []


# --- exit 2: unusable input --------------------------------------------------------------


def test_unusable_inputs_exit_2(make_run, tmp_path, capsys):
    good = str(make_run("good"))
    not_run = tmp_path / "empty"
    not_run.mkdir()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"draft_len": "three"}')
    no_summary = make_run("nosummary")
    (no_summary / "summary.json").unlink()
    bad_gate = tmp_path / "gate.yaml"
    bad_gate.write_text("tolerence: 0.1\n")
    unknown_cat = tmp_path / "cat.yaml"
    unknown_cat.write_text("categories: {poetry: 0.1}\n")
    text = tmp_path / "table.txt"
    text.write_text("x")
    cases = [
        ([str(tmp_path / "missing"), good], "missing does not exist (expected a run directory"),
        ([str(not_run), good], "empty is not a run directory (no manifest.json)"),
        ([str(broken), good], "broken.json is not valid JSON"),
        ([str(invalid), good], "invalid.json: draft_len: Input should be a valid integer"),
        ([str(no_summary), good], "nosummary has no summary.json; build it with"),
        ([str(text), good], "table.txt is neither a run directory, a .json summary nor a .yaml"),
        ([good, good, "--allow", "colour"], "--allow takes draft_len, temperature"),
        ([good, good, "--gate", str(bad_gate)], "gate.yaml: tolerence: Extra inputs are not"),
        ([good, good, "--gate", str(unknown_cat)], "unknown categories in the gate's tolerances"),
        ([good, good, "--tolerance", "-0.1"], "--tolerance must not be negative"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        assert main(["compare", *args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert fragment in err, (fragment, err)


# --- the committed CPU baseline ----------------------------------------------------------


def test_committed_baseline_against_itself(tmp_path):
    baselines = sorted(p for p in BASELINES.iterdir() if (p / "manifest.json").is_file())
    assert baselines, "results/baselines/ holds the CI gate's baseline"
    for run in baselines:
        code, data, _ = gate(tmp_path, str(run), str(run), out=run.name)
        assert code == 0, failing(data)
        assert data["rows"][-1]["beyond_noise"] is False


def test_a_comparison_across_datasets_is_refused_unless_allowed(make_run, tmp_path, capsys):
    base = make_run("base")
    cand = make_run("cand", dataset="humaneval")
    code, _, _ = gate(tmp_path, str(base), str(cand))
    err = capsys.readouterr().err
    assert code == 2
    assert "the baseline measured MT-Bench and the candidate HumanEval" in err
    assert "a comparison across datasets is refused (pass --allow dataset" in err
    assert err.strip().count("\n") == 0  # one sentence, one line
    code, data, _ = gate(tmp_path, str(base), str(cand), "--allow", "dataset", out="allowed")
    assert code == 0
    assert any("compared anyway (--allow dataset)" in note for note in data["notes"])
    # the same dataset on both sides compares as before
    code, _, _ = gate(tmp_path, str(cand), str(make_run("cand2", dataset="humaneval")), out="he")
    assert code == 0


def test_a_reference_table_of_another_dataset_is_refused(make_run, tmp_path, capsys):
    table = tmp_path / "speed.yaml"
    table.write_text(
        "name: t\nsource: s\ndraft_len: 3\ndataset: speed-bench\ncategories:\n  qa: 2.5\n"
    )
    code, _, _ = gate(tmp_path, str(table), str(make_run("cand")))
    assert (
        code == 2 and "measured SPEED-Bench and the candidate MT-Bench" in capsys.readouterr().err
    )
