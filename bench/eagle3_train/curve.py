"""Stage 7: the learning curve measured, not proxied: `bench run` with a run's checkpoints.

For each chosen checkpoint of `runs/<run>/`: export it (stage 6) into `curve/ckpt-<step>/`,
run the benchmark with it as the config's drafter (reference engine, the same questions and
settings for every checkpoint), and put the card AL beside what the training log says at
that step (answer tokens trained on, held-out loss, top-1 agreement and acceptance proxy).
Rows go to `runs/<run>/curve.jsonl` as they finish; a rerun skips steps already measured.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from bench.eagle3_train import read_jsonl
from bench.errors import BenchError
from bench.records import RecordWriter


def checkpoints(run_dir: Path, steps: list[int] | None) -> list[Path]:
    found = {int(p.stem.split("-")[1]): p for p in run_dir.glob("ckpt-*.pt")}
    if not found:
        raise BenchError(f"no checkpoints under {run_dir}: run the train stage first")
    if steps is None:
        return [found[s] for s in sorted(found)]
    missing = sorted(set(steps) - set(found))
    if missing:
        raise BenchError(
            f"{run_dir} has no checkpoint at step {', '.join(map(str, missing))}; "
            f"it has {', '.join(map(str, sorted(found)))}"
        )
    return [found[s] for s in sorted(set(steps))]


def measure_curve(
    config_path: str | None,
    folder: Path,
    run: str,
    steps: list[int] | None,
    overrides: dict[str, Any],
) -> list[dict[str, Any]]:
    """Measure the card AL of each checkpoint of run `run` with the config at `config_path`
    (default: the embedded default) and `overrides`, its drafter replaced by the checkpoint;
    returns every row of curve.jsonl."""
    from bench.config import load_config
    from bench.eagle3_train.export import export_checkpoint
    from bench.runner import execute

    config = load_config(config_path, overrides)
    if config.engine.kind != "reference":
        raise BenchError(f"the curve runs on the reference engine; {config.name} uses another")
    run_dir = folder / "runs" / run
    chosen = checkpoints(run_dir, steps)
    log = {row["step"]: row for row in read_jsonl(run_dir / "log.jsonl")}
    done = {row["step"]: row for row in read_jsonl(run_dir / "curve.jsonl")}
    with RecordWriter(run_dir / "curve.jsonl") as rows:
        for path in chosen:
            step = int(path.stem.split("-")[1])
            if step in done:
                continue
            head = export_checkpoint(config, folder, path, run_dir / "curve" / path.stem)
            drafter = {"kind": "eagle3", "checkpoint": str(head)}
            cell = load_config(config_path, {**overrides, "engine.drafter": drafter})
            out = run_dir / "curve" / f"run-{path.stem}"
            if out.exists():
                shutil.rmtree(out)  # an interrupted measurement: measured again whole
            outcome = execute(cell, out=out, quiet=True)
            summary = outcome.summary
            trained = log.get(step, {})
            row = {
                "step": step,
                "answer_tokens_seen": trained.get("answer_tokens_seen"),
                "heldout": trained.get("heldout"),
                "acceptance_length": summary.overall.acceptance_length,
                "categories": {k: v.acceptance_length for k, v in summary.categories.items()},
                "questions": len(outcome.run.read_manifest().dataset.question_ids),
                "max_tokens": cell.sampling.max_tokens,
                "draft_len": cell.draft_len,
                "run": str(out),
            }
            rows.append(row)
            done[step] = row
            print(
                f"curve: step {step}: AL {row['acceptance_length']:.3f} "
                f"({row['answer_tokens_seen']} answer tokens trained on)",
                file=sys.stderr,
                flush=True,
            )
    return [done[s] for s in sorted(done)]
