"""Turn by turn, do two runs of the same questions produce the same tokens and steps?

For checking that a change of engine settings (batch size, threads, …) changed nothing but
float rounding: prints how many turns have identical token ids, identical per-step records,
where the differing turns first diverge, and the per-category card ALs side by side.

    .venv/bin/python scripts/same_outputs.py results/runs/batch-1 results/runs/batch-16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.records import latest_by_turn, read_records


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="run directory")
    parser.add_argument("b", type=Path, help="run directory")
    args = parser.parse_args()

    runs = [latest_by_turn(read_records(path / "records.jsonl")) for path in (args.a, args.b)]
    shared = sorted(set(runs[0]) & set(runs[1]))
    same_tokens = same_steps = 0
    differing = []
    for key in shared:
        a, b = runs[0][key], runs[1][key]
        if a.token_ids == b.token_ids:
            same_tokens += 1
            same_steps += a.steps == b.steps
        else:
            differing.append((key, first_difference(a.token_ids, b.token_ids), a.turn))
    print(f"{len(shared)} turns in both runs")
    print(f"identical token ids: {same_tokens}; of those, identical steps: {same_steps}")
    # A turn 2 differs whenever its turn 1 did (its prompt holds turn 1's answer).
    inherited = sum(
        1
        for (qid, turn), _, _ in differing
        if turn == 2 and (qid, 1) in {k for k, _, _ in differing}
    )
    print(f"differing: {len(differing)} ({inherited} of them turn 2 after a differing turn 1)")
    for (qid, turn), at, _ in differing:
        print(f"  question {qid} turn {turn}: first different token at position {at}")

    summaries = [json.loads((path / "summary.json").read_text()) for path in (args.a, args.b)]
    print(f"\n{'category':<12} {args.a.name:>14} {args.b.name:>14}")
    for name in [*summaries[0]["categories"], "overall"]:
        values = []
        for summary in summaries:
            stats = summary["overall"] if name == "overall" else summary["categories"].get(name)
            values.append(f"{stats['acceptance_length']:.3f}" if stats else "-")
        print(f"{name:<12} {values[0]:>14} {values[1]:>14}")


if __name__ == "__main__":
    main()
