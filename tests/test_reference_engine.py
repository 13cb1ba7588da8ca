"""The reference engine: lossless against plain greedy decoding of the real embedded model,
step-count invariants, and speculative sampling that keeps the target's distribution."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bench.config import NgramDrafterConfig  # noqa: E402
from bench.conversation import ChatFormat, turn_messages  # noqa: E402
from bench.dataset import load_questions  # noqa: E402
from bench.engines import SamplingParams  # noqa: E402
from bench.engines.drafters import NgramDrafter, Proposal  # noqa: E402
from bench.engines.reference import ReferenceEngine, verify  # noqa: E402


def test_ngram_drafter_continues_the_latest_match():
    drafter = NgramDrafter(NgramDrafterConfig(max_ngram=3, min_ngram=1))
    #            0  1  2  3  4  5  6  7  8  9
    context = [5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 5, 6, 7]
    assert drafter.propose(context, 3).tokens == [1, 2, 5]  # latest earlier "5 6 7" is at 5
    assert drafter.propose([1, 2, 3], 3).tokens == []  # nothing repeats
    assert drafter.propose([4, 9, 4], 2).tokens == [9, 4]  # falls back to a 1-gram
    assert drafter.propose(context, 0).tokens == []


@pytest.mark.parametrize("drafter_probs", [False, True])
def test_speculative_sampling_keeps_the_target_distribution(drafter_probs):
    """Rows are the target's next-token distributions along the draft path (p0, then p1
    after draft 1). Whatever the drafter does, the first emitted token must be distributed
    as p0, and the second, given draft 1 was accepted, as p1: a chi-square goodness of fit
    over many draws. A deterministic drafter proposes fixed tokens (one-hot); a drafter
    with probabilities draws its drafts from them, as speculative sampling requires."""
    scipy_stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(1)
    vocab = 6
    logits = torch.randn(3, vocab, generator=gen) * 1.5  # rows p0, p1, p2
    p = torch.softmax(logits.double(), -1)
    q = torch.softmax(torch.randn(2, vocab, generator=gen), -1)
    fixed = [int(p[0].argsort()[-2]), int(p[1].argmax())]
    n = 8000
    results = []
    for _ in range(n):
        if drafter_probs:
            drafts = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
            proposal = Proposal(drafts, q)
        else:
            drafts, proposal = fixed, Proposal(fixed)
        accepted, token = verify(logits, proposal, 1.0, gen)
        emitted = [*drafts[:accepted], token]
        results.append(emitted)
    first = torch.tensor([e[0] for e in results])
    counts = torch.bincount(first, minlength=vocab).double()
    assert scipy_stats.chisquare(counts, p[0] * n).pvalue > 1e-3
    second = torch.tensor([e[1] for e in results if len(e) > 1])
    counts = torch.bincount(second, minlength=vocab).double()
    assert len(second) > 500
    assert scipy_stats.chisquare(counts, p[1] * len(second)).pvalue > 1e-3


def test_greedy_verify_accepts_the_agreeing_prefix_plus_one():
    logits = torch.full((4, 10), -1.0)
    for row, token in enumerate([3, 4, 7, 2]):  # the target's argmax per row
        logits[row, token] = 1.0
    assert verify(logits, Proposal([3, 4, 5]), 0.0, None) == (2, 7)
    assert verify(logits, Proposal([3, 4, 7]), 0.0, None) == (3, 2)  # bonus token
    assert verify(logits, Proposal([9, 4, 7]), 0.0, None) == (0, 3)
    assert verify(logits[:1], Proposal([]), 0.0, None) == (0, 3)


@pytest.fixture(scope="module")
def engine(default_config, smol_tokenizer):
    chat = ChatFormat(smol_tokenizer, default_config.conversation)
    return ReferenceEngine(default_config, chat), chat


@pytest.fixture(scope="module")
def prompts(default_config, engine):
    _, chat = engine
    from bench.config import DatasetConfig

    _, questions = load_questions(DatasetConfig(question_ids=[81, 121, 131]))
    return [chat.prompt_ids(turn_messages(q, 1, default_config.conversation)) for q in questions]


def decode_alone(reference, prompt, sampling, on_step=None):
    """One turn through the engine's decoder on its own, as the engine records it."""
    return reference.generation(reference.decoder.run_alone(prompt, sampling, on_step))


@pytest.mark.slow
def test_lossless_against_plain_greedy_generate(engine, prompts):
    reference, _ = engine
    model = reference.model
    for prompt in prompts:
        plain = model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)
        expected = plain[0, len(prompt) :].tolist()
        got = decode_alone(reference, prompt, SamplingParams(0.0, 64, 3))
        assert got.token_ids == expected
        assert sum(got.steps) == len(got.token_ids)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_step_invariants(engine, prompts, temperature):
    reference, _ = engine
    k = 3
    seen: list[list[int]] = []
    got = decode_alone(
        reference, prompts[2], SamplingParams(temperature, 48, k, seed=3), seen.append
    )
    assert got.steps[0] == 1 and got.prefill_step and got.drafted[0] == 0
    assert all(1 <= e <= k + 1 for e in got.steps)
    assert all(0 <= d <= k for d in got.drafted)
    assert all(e <= d + 1 for e, d in zip(got.steps, got.drafted))
    assert sum(got.steps) == len(got.token_ids) <= 48
    assert [len(s) for s in seen] == got.steps  # streamed once per step
    assert got.finish_reason in ("stop", "length")
    if temperature > 0:  # seeded sampling is reproducible
        again = decode_alone(reference, prompts[2], SamplingParams(temperature, 48, k, seed=3))
        assert again.token_ids == got.token_ids
