"""Speculative sampling keeps the target's distribution (temperature above 0).

A tiny random target (vocabulary 8) and a different tiny draft model with a real,
non-one-hot distribution. The reference engine generates the first three tokens many times
(token 1 from the prefill, tokens 2 and 3 from speculative steps that draft up to 2), and
the empirical joint distribution of (token 2, token 3) is compared with the exact one,
computed from the target's own conditionals, by a Pearson chi-square test. Seeds are fixed,
so the outcome is deterministic; the bound (p > 0.001) leaves a correct implementation a
wide margin (p ≈ 0.65 here), and the same test rejects a drafter whose tokens were not
drawn from the distribution it reports (p < 1e-6), so it can tell.

Treating a sampled draft as one-hot is also lossless (it only accepts less: p(x) instead
of min(1, p(x) / q(x))), so the test checks that the drafter's actual probabilities are
used by the acceptance they buy, not by the distribution.
"""

from __future__ import annotations

import itertools

import torch

from bench.engines import SamplingParams
from bench.engines.drafters import DraftInputs, DraftModelDrafter, Proposal
from bench.engines.speculative import SpeculativeDecoder
from tests.tiny_models import tiny_target

V, T = 8, 0.8
PROMPT = [0, 3, 5, 2]


def exact_joint(target) -> torch.Tensor:
    """P(token 2, token 3) [V, V] = Σ_t1 p(t1) p(t2 | t1) p(t3 | t1, t2), at temperature T."""

    def probs(seqs):  # next-token distribution after each sequence
        with torch.no_grad():
            logits = target(input_ids=torch.tensor(seqs)).logits[:, -1]
        return torch.softmax(logits.double() / T, -1)

    p1 = probs([PROMPT])[0]  # [V]
    p2 = probs([[*PROMPT, a] for a in range(V)])  # [V(t1), V(t2)]
    pairs = list(itertools.product(range(V), range(V)))
    p3 = probs([[*PROMPT, a, b] for a, b in pairs]).view(V, V, V)  # [t1, t2, t3]
    return (p1[:, None, None] * p2[:, :, None] * p3).sum(0)  # [t2, t3]


def chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's test; cells expected below 5 are pooled into one."""
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    obs, exp = (obs, exp) if exp[-1] > 0 else (obs[:-1], exp[:-1])
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor(len(exp) - 1, dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))  # survival function of χ²(df)


class ArgmaxClaim:
    """A broken drafter: proposes its argmax but reports its sampling distribution, so
    verification divides by a q the token was not drawn from."""

    def __init__(self, inner):
        self.inner, self.captured_layers = inner, ()

    def propose(self, context, k, inputs=None):
        greedy = DraftInputs(inputs.start, inputs.hidden)  # temperature 0: argmax, no probs
        tokens = self.inner.propose(context, k, greedy).tokens
        self.inner.accept(0)
        sampled = self.inner.propose(context, k, inputs)
        return Proposal(tokens, sampled.probs)

    def accept(self, accepted):
        self.inner.accept(accepted)


class OneHotClaim(ArgmaxClaim):
    """Samples from its distribution but reports none: verification then treats the choice
    as one-hot, which stays lossless but accepts less (min(1, p/q) becomes p)."""

    def propose(self, context, k, inputs=None):
        return Proposal(self.inner.propose(context, k, inputs).tokens)


def sample_pairs(target, drafter, n: int) -> tuple[torch.Tensor, float]:
    """Counts [V, V] of (token 2, token 3) over n seeds, and the mean accepted drafts of the
    first decode step (which drafts 2)."""
    decoder = SpeculativeDecoder(target, drafter, set())  # no stop token: always 4 tokens
    counts = torch.zeros(V, V, dtype=torch.float64)
    accepted = 0
    for seed in range(n):
        params = SamplingParams(temperature=T, max_tokens=4, draft_len=3, seed=seed)
        turn = decoder.run_alone(PROMPT, params)
        tokens, steps = turn.out, turn.steps
        counts[tokens[1], tokens[2]] += 1
        accepted += steps[1] - 1
    return counts, accepted / n


def test_speculative_sampling_matches_the_target_distribution():
    torch.set_num_threads(1)
    target = tiny_target(vocab=V, layers=2, hidden=16, seed=11, scale=10.0)
    draft = tiny_target(vocab=V, layers=1, hidden=16, seed=12, scale=10.0)
    exact = exact_joint(target)
    assert abs(float(exact.sum()) - 1) < 1e-9

    n = 1000
    counts, accepted = sample_pairs(target, DraftModelDrafter(draft, V), n)
    p_value = chi_square_p_value(counts, exact * n)
    assert p_value > 1e-3, f"speculative sampling differs from the target (p = {p_value:.2e})"

    # The test can tell: a drafter whose tokens were not drawn from its reported q fails.
    broken, _ = sample_pairs(target, ArgmaxClaim(DraftModelDrafter(draft, V)), 300)
    assert chi_square_p_value(broken, exact * 300) < 1e-6

    # The actual probabilities are used: with them far more drafts are accepted than when
    # the same samples are treated as one-hot (both lossless).
    _, one_hot_accepted = sample_pairs(target, OneHotClaim(DraftModelDrafter(draft, V)), 300)
    assert accepted > one_hot_accepted + 0.3
