"""The speculative loop with every drafter kind on a tiny random target: lossless against
plain greedy decoding; a draft model identical to the target accepted on every draft; the
EAGLE-3 drafter's incremental proposals (KV cache rolled back after every verification)
equal proposals computed from scratch; turns decoded together draft exactly as each would
alone, in k batched forwards of the draft network; configs and vocabulary checks."""

from __future__ import annotations

import pytest
import torch

from bench.config import NgramDrafterConfig, RunConfig
from bench.engines import SamplingParams
from bench.engines.drafters import (
    DraftInputs,
    DraftModelDrafter,
    DraftRequest,
    Eagle3Drafter,
    NgramDrafter,
    check_same_vocabulary,
)
from bench.engines.eagle3 import load_eagle3
from bench.engines.speculative import SpeculativeDecoder
from bench.errors import BenchError
from tests.tiny_models import (
    greedy,
    head_config,
    random_head_weights,
    save_head,
    tiny_target,
)

STOP = 1  # the tiny target's eos
PROMPTS = [[0, 5, 9, 17, 33, 2, 41, 7, 12], [0, 3, 3, 8, 3, 3, 8, 3, 3]]


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=64, layers=8, hidden=32, seed=0, scale=4.0)


@pytest.fixture(scope="module")
def head(target, tmp_path_factory):
    cfg = head_config(target, draft_vocab=24)
    folder = save_head(
        tmp_path_factory.mktemp("head"), cfg, random_head_weights(cfg, seed=3), "eagle_authors"
    )
    return load_eagle3(str(folder), None, target)[0]


def decode(target, drafter, prompt, k=3, max_tokens=24, temperature=0.0, seed=0):
    decoder = SpeculativeDecoder(target, drafter, {STOP})
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, draft_len=k, seed=seed)
    turn = decoder.run_alone(prompt, params)
    return turn.out, turn.steps, turn.drafted


def make_drafter(kind, target, head, slots=1):
    if kind == "ngram":
        return NgramDrafter(NgramDrafterConfig())
    if kind == "draft_model_twin":  # the target's exact copy
        twin = tiny_target(vocab=64, layers=8, hidden=32, seed=0, scale=4.0)
        return DraftModelDrafter(twin, 64, slots)
    if kind == "draft_model_other":
        other = tiny_target(vocab=64, layers=2, hidden=16, seed=7, scale=4.0)
        return DraftModelDrafter(other, 64, slots)
    return Eagle3Drafter(head, target.get_input_embeddings(), slots)


@pytest.mark.parametrize("kind", ["ngram", "draft_model_twin", "draft_model_other", "eagle3"])
def test_lossless_against_greedy_decoding(kind, target, head):
    drafter = make_drafter(kind, target, head)
    for prompt in PROMPTS:  # two turns through the same drafter: its state resets between
        tokens, steps, drafted = decode(target, drafter, prompt)
        assert tokens == greedy(target, prompt, 24)
        assert sum(steps) == len(tokens) and all(1 <= e <= 4 for e in steps)


def test_identical_draft_model_is_accepted_on_every_draft(target, head):
    drafter = make_drafter("draft_model_twin", target, head)
    tokens, steps, drafted = decode(target, drafter, PROMPTS[0], k=3, max_tokens=24)
    assert len(tokens) == 24, "the tiny target should not stop early on this prompt"
    # Every decode step that could draft 3 emits 3 + 1; the last ones are cut by max_tokens.
    full = [e for e, d in zip(steps[1:], drafted[1:]) if d == 3]
    assert full and all(e == 4 for e in full)
    assert [e for e, d in zip(steps[1:], drafted[1:])] == [d + 1 for d in drafted[1:]]


# Turns of different lengths and budgets, more than the batch holds: they join as others
# leave, and reuse the slots freed.
BATCH_PROMPTS = [
    PROMPTS[0],
    PROMPTS[1],
    [0, 22, 40],
    [0, 11, 50, 11, 50, 11, 6, 19, 27, 11, 50, 60, 3],
    [0, 44, 2, 9, 13, 44],
]
BATCH_MAX_TOKENS = [24, 10, 17, 20, 5]
KINDS = ["ngram", "draft_model_twin", "draft_model_other", "eagle3"]


class RecordingBatch:
    """Wraps a batch drafter; maps each (context, k) it was asked for to its drafts."""

    def __init__(self, inner):
        self.inner, self.drafts = inner, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def propose_batch(self, requests):
        proposals = self.inner.propose_batch(requests)
        for request, proposal in zip(requests, proposals):
            self.drafts[tuple(request.context), request.k] = proposal.tokens
        return proposals


def decode_together(target, drafter, temperature=0.0, k=3):
    """Every BATCH_PROMPTS turn through one decoder of batch size 3; per turn (tokens,
    steps, drafted). Turn i samples with seed 10 + i."""
    decoder = SpeculativeDecoder(target, drafter, {STOP}, batch_size=3)
    rows = [
        decoder.submit(
            prompt, SamplingParams(temperature=temperature, max_tokens=m, draft_len=k, seed=10 + i)
        )
        for i, (prompt, m) in enumerate(zip(BATCH_PROMPTS, BATCH_MAX_TOKENS))
    ]
    while decoder.busy:
        decoder.step()
    assert all(row.error is None for row in rows)
    return [(row.out, row.steps, row.drafted) for row in rows]


@pytest.mark.parametrize("kind", KINDS)
def test_turns_decoded_together_equal_each_turn_alone(kind, target, head):
    """Lossless per row, and each row drafts (the very tokens) and accepts what it does at
    batch size 1."""
    batched = RecordingBatch(make_drafter(kind, target, head, slots=3))
    together = decode_together(target, batched)
    alone = RecordingBatch(make_drafter(kind, target, head))
    for prompt, max_tokens, row in zip(BATCH_PROMPTS, BATCH_MAX_TOKENS, together):
        assert row[0] == greedy(target, prompt, max_tokens)
        assert row == decode(target, alone, prompt, max_tokens=max_tokens)
    assert batched.drafts == alone.drafts
    assert any(d > 0 for _, _, drafted in together for d in drafted)


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_turns_decoded_together_follow_their_own_seeds(kind, target, head):
    together = decode_together(target, make_drafter(kind, target, head, slots=3), 1.0)
    alone = make_drafter(kind, target, head)
    for i, (prompt, max_tokens, row) in enumerate(zip(BATCH_PROMPTS, BATCH_MAX_TOKENS, together)):
        assert row == decode(
            target, alone, prompt, max_tokens=max_tokens, temperature=1.0, seed=10 + i
        )
    assert together != decode_together(target, make_drafter(kind, target, head, slots=3))


@pytest.mark.parametrize("kind", ["draft_model_other", "eagle3"])
def test_a_batch_drafts_k_tokens_in_k_forwards(kind, target, head):
    """Rows in any slot order, asking for different k (0 included): one forward per draft
    position for all rows, and each row's proposal is the one it gets alone."""
    contexts = [[*PROMPTS[0], 20], [0, 3, 3, 8, 4], [0, 7, 30, 2], [0, 9, 9, 14, 2, 6, 60]]
    ks, slots = [3, 1, 0, 2], [2, 0, 3, 1]

    def inputs(context):
        if kind != "eagle3":
            return DraftInputs()
        out = target(input_ids=torch.tensor([context[:-1]]), output_hidden_states=True)
        return DraftInputs(0, torch.cat([out.hidden_states[i][0] for i in (2, 4, 5)], -1))

    drafter = make_drafter(kind, target, head, slots=4)
    network = drafter.head if kind == "eagle3" else drafter.lm.model
    forwards = []
    hook = network.register_forward_hook(lambda *_: forwards.append(1))
    requests = [DraftRequest(s, c, k, inputs(c)) for s, c, k in zip(slots, contexts, ks)]
    with torch.no_grad():
        proposals = drafter.propose_batch(requests)
        hook.remove()
        assert len(forwards) == max(ks)  # the context step, then one per later draft
        assert [len(p.tokens) for p in proposals] == ks
        for context, k, proposal in zip(contexts, ks, proposals):
            fresh = make_drafter(kind, target, head)
            assert fresh.propose(context, k, inputs(context)).tokens == proposal.tokens


class Recording:
    """Wraps a drafter; records what each propose() saw and returned."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.captured_layers = inner.captured_layers

    def propose(self, context, k, inputs=None):
        proposal = self.inner.propose(context, k, inputs)
        self.calls.append((list(context), k, proposal.tokens))
        return proposal

    def accept(self, accepted):
        self.inner.accept(accepted)


def test_eagle3_incremental_proposals_equal_from_scratch(target, head):
    """After every verification the draft cache is cut back and the accepted rows rerun:
    each proposal must equal a fresh drafter's over the whole context's target states."""
    recording = Recording(Eagle3Drafter(head, target.get_input_embeddings()))
    decode(target, recording, PROMPTS[0], k=3, max_tokens=24)
    assert len(recording.calls) > 3
    for context, k, tokens in recording.calls:
        with torch.no_grad():
            out = target(input_ids=torch.tensor([context[:-1]]), output_hidden_states=True)
            states = torch.cat([out.hidden_states[i][0] for i in head.spec.captured_layers], -1)
            fresh = Eagle3Drafter(head, target.get_input_embeddings())
            assert fresh.propose(context, k, DraftInputs(0, states)).tokens == tokens


def test_eagle3_reduced_vocabulary_probabilities_land_on_target_ids(target, head):
    drafter = Eagle3Drafter(head, target.get_input_embeddings())
    prompt = PROMPTS[0]
    with torch.no_grad():
        out = target(input_ids=torch.tensor([prompt]), output_hidden_states=True)
        states = torch.cat([out.hidden_states[i][0] for i in head.spec.captured_layers], -1)
        inputs = DraftInputs(0, states, temperature=1.0, generator=torch.Generator().manual_seed(0))
        proposal = drafter.propose([*prompt, 20], 3, inputs)
    probs = proposal.probs  # [3, 64] over the target vocabulary
    assert probs.shape == (3, 64)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    reachable = {2 * i + 2 for i in range(24)}
    assert set(probs.nonzero()[:, 1].tolist()) <= reachable
    assert all(t in reachable and probs[i, t] > 0 for i, t in enumerate(proposal.tokens))


def test_drafter_config_is_a_union_keyed_on_kind():
    base = {"name": "x", "target": {"name": "t", "path": "/tmp"}}
    for drafter, kind in (
        ({"kind": "ngram"}, "NgramDrafterConfig"),
        (
            {"kind": "eagle3", "checkpoint": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"},
            "Eagle3DrafterConfig",
        ),
        (
            {"kind": "draft_model", "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "DraftModelDrafterConfig",
        ),
    ):
        config = RunConfig.model_validate(
            {**base, "engine": {"kind": "reference", "drafter": drafter}}
        )
        assert type(config.engine.drafter).__name__ == kind
    with pytest.raises(ValueError, match="exactly one of path or hf_id"):
        RunConfig.model_validate(
            {**base, "engine": {"kind": "reference", "drafter": {"kind": "draft_model"}}}
        )


class Vocab:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_draft_model_with_another_vocabulary_is_refused():
    check_same_vocabulary(Vocab({"a": 0, "b": 1}), Vocab({"a": 0, "b": 1}), "same")
    with pytest.raises(BenchError, match="does not share the target's tokenizer: 2 tokens differ"):
        check_same_vocabulary(Vocab({"a": 0, "c": 1}), Vocab({"a": 0, "b": 1}), "other")


def test_drafter_paths_are_relative_to_the_config_file(tmp_path):
    from bench.config import load_config

    (tmp_path / "heads" / "mine").mkdir(parents=True)
    base = "name: x\ntarget: {name: t, hf_id: some/target}\n"
    for drafter, field, expected in (
        ("{kind: eagle3, checkpoint: heads/mine}", "checkpoint", str(tmp_path / "heads" / "mine")),
        (
            "{kind: eagle3, checkpoint: yuhuili/EAGLE3-LLaMA3.1-Instruct-8B}",
            "checkpoint",
            "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
        ),  # no such folder: a hub id, as written
        ("{kind: draft_model, path: drafts/small}", "path", str(tmp_path / "drafts" / "small")),
    ):
        path = tmp_path / "run.yaml"
        path.write_text(base + f"engine: {{kind: reference, drafter: {drafter}}}\n")
        assert getattr(load_config(path).engine.drafter, field) == expected
