"""Turn by turn, do runs of the same questions produce the same tokens and the same steps?

The first run is the base; every other run is compared with it. For each pair: how many
turns have identical token ids (identical text where a run has no token ids: llama-server), and on those, whether the engines accepted the same drafts
step by step (both runs have per-step records: the emitted-token counts of the decoding
steps after the prefill are compared one by one) or, where one run has only per-turn
totals (llama-server), whether the turns took the same number of steps (both exact) or
the base's count lies within the other's bounds. Then where the differing turns first
diverge, and the per-category card ALs side by side.

For checking that a change of engine settings (batch size, threads, …) changed nothing but
float rounding, and that independent engines running the same target and draft agree:

    .venv/bin/python scripts/same_outputs.py results/runs/batch-1 results/runs/batch-16
    .venv/bin/python scripts/same_outputs.py runs/reference runs/vllm runs/llamacpp
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.records import TurnRecord, latest_by_turn, read_records


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def decode_steps(record: TurnRecord) -> list[int]:
    """Tokens emitted by each decoding step after the prefill's."""
    return record.steps[1:] if record.prefill_step else list(record.steps)


def same_drafts(a: TurnRecord, b: TurnRecord) -> str:
    """How two turns with identical tokens compare step by step, in one word."""
    if a.has_step_detail and b.has_step_detail:
        return "same steps" if decode_steps(a) == decode_steps(b) else "other steps"
    if a.step_slack == 0 and b.step_slack == 0:
        return "same count" if a.step_count == b.step_count else "other count"
    low_a, high_a = a.step_count, a.step_count + a.step_slack
    low_b, high_b = b.step_count, b.step_count + b.step_slack
    return "within bounds" if max(low_a, low_b) <= min(high_a, high_b) else "other count"


def compare_pair(base: dict, other: dict, names: tuple[str, str]) -> None:
    shared = sorted(set(base) & set(other))
    # llama-server's OpenAI stream carries text only: its turns are compared by text.
    by_text = any(not base[key].token_ids or not other[key].token_ids for key in shared)
    unit = "characters" if by_text else "token ids"
    same_tokens: list[tuple[int, int]] = []
    differing = []
    for key in shared:
        a, b = base[key], other[key]
        seq_a, seq_b = (a.text, b.text) if by_text else (a.token_ids, b.token_ids)
        if seq_a == seq_b:
            same_tokens.append(key)
        else:
            differing.append((key, first_difference(list(seq_a), list(seq_b))))
    print(f"\n{names[0]} against {names[1]}: {len(shared)} turns in both runs")
    print(
        f"identical {'text (token ids not streamed)' if by_text else 'token ids'}: {len(same_tokens)}"
    )
    verdicts: dict[str, list[tuple[int, int]]] = {}
    for key in same_tokens:
        verdicts.setdefault(same_drafts(base[key], other[key]), []).append(key)
    for verdict, keys in sorted(verdicts.items()):
        print(f"  of those, {verdict}: {len(keys)}")
        if verdict.startswith("other"):
            for qid, turn in keys:
                a, b = base[(qid, turn)], other[(qid, turn)]
                print(
                    f"    question {qid} turn {turn}: {a.step_count} steps against "
                    f"{b.step_count} ({a.output_tokens} tokens)"
                )
    differing_keys = {key for key, _ in differing}
    # A turn 2 differs whenever its turn 1 did (its prompt holds turn 1's answer).
    inherited = sum(1 for (qid, turn), _ in differing if turn == 2 and (qid, 1) in differing_keys)
    print(f"differing: {len(differing)} ({inherited} of them turn 2 after a differing turn 1)")
    for (qid, turn), at in differing:
        print(f"  question {qid} turn {turn}: first different {unit[:-1]} at position {at}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories, the base first")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("give at least two run directories")

    runs = [latest_by_turn(read_records(path / "records.jsonl")) for path in args.runs]
    names = [path.name for path in args.runs]
    for other, name in zip(runs[1:], names[1:]):
        compare_pair(runs[0], other, (names[0], name))

    summaries = [json.loads((path / "summary.json").read_text()) for path in args.runs]
    print(f"\n{'category':<12}" + "".join(f" {name:>16}" for name in names))
    for category in [*summaries[0]["categories"], "overall"]:
        values = []
        for summary in summaries:
            stats = (
                summary["overall"] if category == "overall" else summary["categories"].get(category)
            )
            values.append(f"{stats['acceptance_length']:.3f}" if stats else "-")
        print(f"{category:<12}" + "".join(f" {value:>16}" for value in values))


if __name__ == "__main__":
    main()
