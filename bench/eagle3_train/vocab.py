"""Stage 3: the draft vocabulary, the N most frequent tokens of the target's answers.

The head predicts over these N ids only; `d2t[i] = used[i] - i` maps draft id i to its
target id (the used ids ascending, as the EAGLE authors and SpecForge write it) and `t2d`
marks the target ids that are in the draft vocabulary. N trades coverage (the share of
answer tokens the head can propose at all) against the checkpoint's size, whose `lm_head`
grows by N rows: the size is chosen by measured coverage among the candidates that fit
the budget for the whole float16 checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.eagle3_train import is_heldout, training_answers
from bench.errors import BenchError
from bench.rundir import write_text_atomic

CANDIDATE_SIZES = (4096, 8192, 16384, 32768)
BUDGET_BYTES = 20_000_000
"""The whole exported checkpoint, float16 weights plus d2t and t2d."""


def count_tokens(rows: Iterable[dict[str, Any]]) -> Counter[int]:
    """Token frequencies over every answer (stop tokens included: the head drafts them)."""
    counts: Counter[int] = Counter()
    for row in rows:
        counts.update(row["response_ids"])
    return counts


def top_ids(counts: Counter[int], size: int) -> list[int]:
    """The `size` most frequent ids (ties: lower id first), ascending. With fewer distinct
    ids than `size`, the rest is filled with the lowest unused ids so the size holds."""
    ranked = sorted(counts, key=lambda token: (-counts[token], token))[:size]
    chosen = set(ranked)
    filler = (token for token in range(size + len(chosen)) if token not in chosen)
    while len(chosen) < size:
        chosen.add(next(filler))
    return sorted(chosen)


def coverage(counts: Counter[int], size: int, over: Counter[int] | None = None) -> float:
    """Share of the tokens counted in `over` (default: `counts` itself) whose id is among
    the `size` most frequent of `counts`."""
    over = counts if over is None else over
    total = sum(over.values())
    chosen = top_ids(counts, size) if len(counts) > size else list(counts)
    return sum(over[token] for token in chosen) / total if total else 0.0


def head_parameters(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int):
    """Parameters of an EAGLE-3 head without its lm_head: fc, the layer (q/k/v on 2H
    inputs), four norms. Returns (fixed, per draft-vocabulary row)."""
    h = hidden
    attention = 2 * h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h
    fixed = 3 * h * h + attention + 3 * h * intermediate + 4 * h
    return fixed, h


def checkpoint_bytes(fixed_params: int, row_params: int, size: int, vocab_size: int) -> int:
    """float16 weights, d2t int64 per draft id, t2d one byte per target id."""
    return 2 * (fixed_params + row_params * size) + 8 * size + vocab_size


def choose_size(
    counts: Counter[int],
    fixed_params: int,
    row_params: int,
    vocab_size: int,
    candidates: Iterable[int] = CANDIDATE_SIZES,
    budget_bytes: int = BUDGET_BYTES,
    heldout: Counter[int] | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """The candidate with the highest coverage (of the `heldout` answers' tokens when
    given, else of the counted ones) among those within budget, and the table (size,
    coverage, checkpoint bytes, within budget) of every candidate."""
    table = []
    for size in candidates:
        nbytes = checkpoint_bytes(fixed_params, row_params, size, vocab_size)
        table.append(
            {
                "size": size,
                "coverage": round(coverage(counts, size, heldout), 6),
                "checkpoint_bytes": nbytes,
                "within_budget": nbytes <= budget_bytes,
            }
        )
    fitting = [row for row in table if row["within_budget"]]
    if not fitting:
        raise BenchError(f"no draft vocabulary size fits {budget_bytes} bytes")
    best = max(fitting, key=lambda row: (row["coverage"], -row["size"]))
    return best["size"], table


def make_vocab(
    folder: Path,
    target_config: Any,
    size: int | None,
    budget_bytes: int = BUDGET_BYTES,
    heldout_percent: int = 5,
) -> dict[str, Any]:
    """Count the answers in responses.jsonl, pick the size (unless given), write vocab.json."""
    rows = training_answers(folder)
    if not rows:
        raise BenchError(f"{folder / 'responses.jsonl'} has no answers yet: run generate")
    # Counted on the training answers, coverage measured on the held-out ones (the split
    # training uses): in-sample coverage flatters a small set.
    counts = count_tokens(r for r in rows if not is_heldout(r["id"], heldout_percent))
    heldout = count_tokens(r for r in rows if is_heldout(r["id"], heldout_percent))
    measured_on = "held-out answers" if heldout else "the counted answers (none held out)"
    c = target_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    fixed, per_row = head_parameters(
        c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, head_dim
    )
    chosen, table = choose_size(
        counts, fixed, per_row, c.vocab_size, budget_bytes=budget_bytes, heldout=heldout or None
    )
    size = size or chosen
    vocab = {
        "size": size,
        "chosen_by": "given" if size != chosen else "highest coverage within budget",
        "budget_bytes": budget_bytes,
        "candidates": table,
        "coverage": coverage(counts, size, heldout or None),
        "coverage_measured_on": measured_on,
        "answers": len(rows),
        "answer_tokens": sum(counts.values()),
        "heldout_answer_tokens": sum(heldout.values()),
        "distinct_tokens": len(counts),
        "used": top_ids(counts, size),
    }
    write_text_atomic(folder / "vocab.json", json.dumps(vocab) + "\n")
    return vocab


def read_vocab(folder: Path) -> list[int]:
    path = folder / "vocab.json"
    if not path.is_file():
        raise BenchError(f"{path} does not exist: run the vocab stage")
    return json.loads(path.read_text(encoding="utf-8"))["used"]


def mappings(used: list[int], vocab_size: int) -> tuple[Any, Any]:
    """(d2t int64 [N], t2d bool [vocab_size]) for the ascending draft ids `used`."""
    import torch

    ids = torch.tensor(used, dtype=torch.long)
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[ids] = True
    return ids - torch.arange(len(used)), t2d
