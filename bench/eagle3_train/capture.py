"""Stage 4a: the target's hidden states for each generated sample, cached on disk.

One plain forward of the target over prompt + answer gives, per position t:

- the captured states the head is fed: the outputs of the layers the head reads
  (`captured_layers`, indices into transformers' `hidden_states`; for SmolLM2's 30
  layers the outputs of layers 1, 14, 26: `hidden_states[2], [15], [27]`), concatenated
  low -> mid -> high, float32 (SmolLM2's activations reach about 25,000);
- the target's final normed state, from which its logits over the draft vocabulary are
  recomputed in training (`final @ lm_head[used].T`), only from the last prompt position
  on (the earlier ones predict prompt tokens, which carry no loss);
- the target's argmax over its whole vocabulary at those positions (the loss is masked
  where it falls outside the draft vocabulary).

Caching costs one forward per sample once (measured in docs/eagle3-training.md) and about
9 KB per token of disk; training then reads the states for every epoch instead of running
the target again. Files are `capture/<id>.safetensors`, written under a temporary name and
renamed: a rerun captures only the samples without a file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench.eagle3_train import training_answers


def sample_path(folder: Path, sample_id: str) -> Path:
    return folder / "capture" / f"{sample_id}.safetensors"


def capture_sample(target: Any, row: dict[str, Any], captured: tuple[int, ...]) -> dict[str, Any]:
    """The tensors stored for one sample (see the module docstring)."""
    import torch

    ids = row["prompt_ids"] + row["response_ids"]
    start = len(row["prompt_ids"]) - 1  # the position predicting the answer's first token
    with torch.inference_mode():
        out = target(input_ids=torch.tensor([ids]), output_hidden_states=True)
        states = out.hidden_states
        return {
            "input_ids": torch.tensor(ids, dtype=torch.int32),
            "hidden": torch.cat([states[i][0] for i in captured], dim=-1).float().contiguous(),
            "final": states[-1][0, start:].float().contiguous(),  # after the final norm
            "argmax": out.logits[0, start:].argmax(-1).to(torch.int32),
            "start": torch.tensor([start], dtype=torch.int32),
        }


def capture(target: Any, folder: Path, captured: tuple[int, ...], limit: int | None) -> dict:
    """Capture every answered sample (the first `limit`) that has no file yet."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    rows = training_answers(folder)[:limit]
    todo = [row for row in rows if not sample_path(folder, row["id"]).is_file()]
    (folder / "capture").mkdir(parents=True, exist_ok=True)
    print(
        f"capture: {len(rows) - len(todo)} of {len(rows)} samples already captured", file=sys.stderr
    )
    start, tokens = time.perf_counter(), 0
    for row in tqdm(todo, unit="sample", desc="capture"):
        tensors = capture_sample(target, row, captured)
        path = sample_path(folder, row["id"])
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial))
        partial.replace(path)
        tokens += len(tensors["input_ids"])
    return {"captured": len(todo), "tokens": tokens, "seconds": time.perf_counter() - start}


def load_sample(folder: Path, sample_id: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(sample_path(folder, sample_id)))
