"""Stage 6: a training checkpoint as a head the engines load.

The layout is the EAGLE authors' (and SpecForge's), which the reference engine, vLLM
(`"method": "eagle3"`) and llama.cpp's converter (`LlamaForCausalLMEagle3`) all read:
`config.json` and `model.safetensors` in float16 with the layer under `midlayer.`, then
`fc.weight`, `norm.weight`, `lm_head.weight` [draft vocab, H], `d2t` (int64, draft id ->
target id offset) and `t2d` (bool over the target vocabulary). No `embed_tokens`: the head
uses the target's. `training.json` beside them says where the weights came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.rundir import write_text_atomic


def published_weights(head_state: dict[str, Any], used: list[int], vocab_size: int) -> dict:
    """The head's state dict under the published names, float16 (d2t/t2d as they are)."""
    import torch

    from bench.eagle3_train.vocab import mappings

    d2t, t2d = mappings(used, vocab_size)
    weights = {}
    for name, tensor in head_state.items():
        if name == "d2t" or name.startswith("rotary."):
            continue
        if name.startswith("layer."):
            name = "midlayer." + name[len("layer.") :]
        weights[name] = tensor.detach().to(torch.float16).contiguous()
    weights["d2t"], weights["t2d"] = d2t, t2d
    return weights


def export_checkpoint(
    config: Any,
    folder: Path,
    checkpoint: Path | None,
    out: Path,
    measured: list[Path] | None = None,
) -> Path:
    """Write `checkpoint` (default: the newest of run `run`) as a head folder `out`; each of
    `measured` (run directories of `bench run` with this head) adds its acceptance table to
    the provenance."""
    import torch
    from safetensors.torch import save_file

    from bench.eagle3_train.train import latest_checkpoint
    from bench.target import checkpoint_sha256

    if checkpoint is None:
        checkpoint = latest_checkpoint(folder / "runs" / "run")
        if checkpoint is None:
            raise BenchError(f"no checkpoint under {folder / 'runs' / 'run'}; pass --checkpoint")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    head_config = saved["config"]
    out.mkdir(parents=True, exist_ok=True)
    weights = published_weights(saved["head"], saved["used"], head_config["vocab_size"])
    save_file(weights, str(out / "model.safetensors"))
    write_text_atomic(out / "config.json", json.dumps(head_config, indent=2) + "\n")
    log = list(_read_log(checkpoint.parent / "log.jsonl"))
    provenance = {
        "head_sha256": checkpoint_sha256(out),
        "head_sha256_covers": "config.json and model.safetensors (bench.target.checkpoint_sha256)",
        "checkpoint": str(checkpoint.name),
        "step": saved["step"],
        "settings": saved["settings"],
        "train_samples": len(saved["train_ids"]),
        "heldout_samples": len(saved["heldout_ids"]),
        "draft_vocab_size": len(saved["used"]),
        "trained_with_commit": saved.get("git"),
        "training_commands": saved.get("commands"),
        "training_wall_s": saved.get("wall_s"),
        "target": config.target.model_dump(),
        "log": [row for row in log if row["step"] <= saved["step"]],
    }
    for name in ("prompts.json", "responses.json", "vocab.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            # The vocabulary's ids are the head's d2t; its summary belongs here only when the
            # checkpoint was trained on this vocab.json (a later `vocab` rewrites it).
            if "used" in data and data.pop("used") != list(saved["used"]):
                continue
            provenance[name.removesuffix(".json")] = data
    provenance["measured"] = [
        measured_run(run, provenance["head_sha256"]) for run in measured or []
    ]
    write_text_atomic(out / "training.json", json.dumps(provenance, indent=2) + "\n")
    return out


def measured_run(run: Path, head_sha256: str) -> dict[str, Any]:
    """What a `bench run` with this head measured: settings, card ALs, and how it was run."""
    from bench.rundir import RunDir
    from bench.summary import Summary

    if not (run / "manifest.json").is_file() or not (run / "summary.json").is_file():
        raise BenchError(f"--measured {run}: not a run directory (no manifest.json, summary.json)")
    manifest = RunDir(run).read_manifest()
    if manifest.status != "complete":
        raise BenchError(f"--measured {run}: the run is {manifest.status}, not complete")
    summary = Summary.model_validate_json((run / "summary.json").read_text(encoding="utf-8"))
    drafter = (manifest.engine.details if manifest.engine else {}).get("drafter") or {}
    if drafter.get("checkpoint_sha256") not in (None, head_sha256):
        raise BenchError(
            f"--measured {run} ran another head (sha256 {drafter['checkpoint_sha256'][:12]}), "
            f"not this one ({head_sha256[:12]})"
        )
    config = manifest.config
    return {
        "run": run.name,
        "config": config.name,
        "engine": manifest.engine.name if manifest.engine else config.engine.kind,
        "engine_version": manifest.engine.version if manifest.engine else None,
        "dataset": manifest.dataset.name,
        "questions": len(manifest.dataset.question_ids),
        "wall_s": manifest.wall_s,
        "draft_len": config.draft_len,
        "max_tokens": config.sampling.max_tokens,
        "temperature": config.sampling.temperature,
        "command": manifest.command,
        "commit": manifest.git,
        "acceptance_length": {
            **{name: stats.acceptance_length for name, stats in summary.categories.items()},
            "overall": summary.overall.acceptance_length,
        },
    }


def _read_log(path: Path):
    from bench.eagle3_train import read_jsonl

    return read_jsonl(path)
