"""vLLM's n-gram proposer replayed offline: the truth a real vLLM run is checked against.

Greedy speculative decoding is lossless, so a turn's output is the target's own greedy
continuation, and vLLM's n-gram drafts are a function of the context alone. Given the
prompt and the output token ids, every step can be recomputed without the server: what
the proposer drafted after each step, how much of it the output confirms, and so how many
tokens each step emitted, up to the turn's cut. Nothing here reads the server's counters.

The proposer (vLLM 0.32, `v1/spec_decode/ngram_proposer.py`): after every step, over the
whole context (prompt and output so far), take the longest n in [min_n, max_n] whose last
n tokens occur earlier in the context (overlaps allowed), at the leftmost such place, and
propose the up to k tokens that followed it; where no n matches, propose nothing (a step
without drafts, which vLLM's per-request metrics do not list).
"""

from __future__ import annotations

from dataclasses import dataclass


def propose(context: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """The drafts vLLM's n-gram proposer makes after `context`."""
    size = len(context)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = context[size - n :]
        for start in range(0, size - n):  # leftmost earlier occurrence
            if context[start : start + n] == suffix:
                return context[start + n : start + n + k]
    return []


@dataclass(frozen=True)
class Replay:
    steps: list[int]
    """Tokens emitted per step, the prefill step first."""
    drafting_accepted: list[int]
    """Drafts accepted at each step that drafted, as far as the output shows them."""


def replay(prompt: list[int], output: list[int], k: int, min_n: int, max_n: int) -> Replay:
    steps = [1]
    accepted_per_drafting_step: list[int] = []
    position = 1
    while position < len(output):
        drafts = propose(prompt + output[:position], min_n, max_n, k)
        accepted = 0
        while (
            accepted < len(drafts)
            and position + accepted < len(output)
            and drafts[accepted] == output[position + accepted]
        ):
            accepted += 1
        emitted = min(accepted + 1, len(output) - position)
        if drafts:
            accepted_per_drafting_step.append(accepted)
        steps.append(emitted)
        position += emitted
    return Replay(steps, accepted_per_drafting_step)
