"""Drafters for the reference engine: they propose up to k tokens the target then verifies.

A drafter sees the accepted context (prompt and generated tokens so far) and returns its
proposal, with the probabilities it drew each token from when it has any (`probs`, one
distribution over the target vocabulary per token). A drafter without probabilities is
deterministic, i.e. its distribution is one-hot on its choice, and speculative sampling
treats it exactly so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bench.config import NgramDrafterConfig


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]
    probs: Any | None = None
    """A [len(tokens), vocab] tensor of draft probabilities, or None for one-hot."""


class Drafter(Protocol):
    def propose(self, context: list[int], k: int) -> Proposal:
        """Up to `k` tokens continuing `context` (fewer, or none, when it has no guess)."""
        ...


class NgramDrafter:
    """Prompt-lookup decoding: find the latest earlier occurrence of the context's last n
    tokens (n from `max_ngram` down to `min_ngram`) and propose what followed it."""

    def __init__(self, config: NgramDrafterConfig) -> None:
        self.max_ngram = config.max_ngram
        self.min_ngram = config.min_ngram

    def propose(self, context: list[int], k: int) -> Proposal:
        length = len(context)
        if k <= 0:
            return Proposal([])
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if length <= n:
                continue
            suffix = context[-n:]
            # Latest start j < length - n (an earlier occurrence, not the suffix itself).
            for j in range(length - n - 1, -1, -1):
                if context[j : j + n] == suffix:
                    follow = context[j + n : j + n + k]
                    if follow:
                        return Proposal(follow)
        return Proposal([])


def build_drafter(config: NgramDrafterConfig) -> Drafter:
    return NgramDrafter(config)
