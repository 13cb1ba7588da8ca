"""Continuous batching in the reference engine: the slot cache against transformers' own
cache, rows joining and leaving, rows accepting different numbers of drafts in one step,
max_tokens and stop tokens mid-batch, cancellation and faults confined to their rows, and
equality with the one-row engine on the real embedded model."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")

from bench.engines import SamplingParams  # noqa: E402
from bench.engines.batching import BatchedLM  # noqa: E402
from bench.engines.drafters import DraftRequest, Proposal, cache_argument  # noqa: E402
from bench.engines.speculative import SpeculativeDecoder  # noqa: E402
from tests.tiny_models import greedy, tiny_target  # noqa: E402

STOP = 1  # the tiny target's eos
PROMPTS = [
    [0, 5, 9, 17, 33, 2, 41, 7, 12],
    [0, 3, 3, 8],
    [0, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34],
    [0, 60, 2],
    [0, 11, 13, 17, 19, 23, 29],
]


@pytest.fixture(scope="module")
def target():
    return tiny_target(vocab=64, layers=4, hidden=32, seed=0, scale=4.0)


class Oracle:
    """A scripted batch drafter: rows whose prompt is in `good` get the target's own greedy
    continuation (every draft accepted), the others a wrong guess (none accepted). Records
    which slots each call saw."""

    captured_layers: tuple[int, ...] = ()

    def __init__(self, continuations: dict[tuple[int, ...], list[int]], good: set) -> None:
        self.continuations, self.good = continuations, good
        self.calls: list[list[int]] = []
        self.released: list[int] = []

    def _split(self, context: list[int]) -> tuple[tuple[int, ...], int]:
        for prompt in self.continuations:
            if tuple(context[: len(prompt)]) == prompt:
                return prompt, len(context) - len(prompt)
        raise AssertionError(f"unknown context {context}")

    def propose_batch(self, requests: list[DraftRequest]) -> list[Proposal]:
        self.calls.append([r.slot for r in requests])
        out = []
        for r in requests:
            prompt, done = self._split(r.context)
            truth = self.continuations[prompt][done : done + r.k]
            guess = truth if prompt in self.good else [(t + 1) % 64 for t in truth]
            out.append(Proposal(guess))
        return out

    def accept_batch(self, accepted: dict[int, int]) -> None:
        pass

    def release(self, slot: int) -> None:
        self.released.append(slot)


def run_all(decoder, prompts, sampling):
    """Submit every prompt, step until done; per prompt (tokens, steps, drafted) and the
    slots running after each step."""
    rows = [decoder.submit(p, s) for p, s in zip(prompts, sampling)]
    occupancy = []
    while decoder.busy:
        decoder.step()
        occupancy.append(sorted(decoder.running))
    assert all(row.error is None for row in rows)
    return [(row.out, row.steps, row.drafted) for row in rows], occupancy


def test_one_row_in_the_slot_cache_matches_transformers_dynamic_cache(target):
    from transformers import DynamicCache

    prompt, block = PROMPTS[0], [4, 8, 15, 16]
    with torch.no_grad():
        cache = DynamicCache()
        arg = cache_argument(target)
        expected_prefill = target(input_ids=torch.tensor([prompt]), **{arg: cache}).logits[0]
        expected_step = target(input_ids=torch.tensor([block]), **{arg: cache}).logits[0]
        lm = BatchedLM(target, 3, arg)
        prefill, _ = lm.forward([1], [prompt])
        lm.commit(1, len(prompt))
        step, _ = lm.forward([1], [block])
    # Same maths, a different attention kernel: equal up to float rounding.
    torch.testing.assert_close(prefill[0], expected_prefill, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step[0], expected_step, rtol=1e-5, atol=1e-5)


def test_ragged_rows_see_only_their_own_context(target):
    """Three rows of different lengths and block widths in one forward (with stale rows left
    in the slots by rejected drafts) give each row's logits alone, up to rounding."""
    arg = cache_argument(target)
    blocks = [[4, 8], [15], [16, 23, 42, 7]]
    with torch.no_grad():
        alone = []
        for prompt, block in zip(PROMPTS[:3], blocks):
            lm = BatchedLM(target, 1, arg)
            lm.forward([0], [prompt])
            lm.commit(0, len(prompt))
            alone.append(lm.forward([0], [block])[0][0])
        lm = BatchedLM(target, 3, arg)
        lm.forward([0, 1, 2], PROMPTS[:3])
        for slot, prompt in enumerate(PROMPTS[:3]):
            lm.commit(slot, len(prompt) - 2)  # the last two rows become "rejected"
        lm.forward([0, 1, 2], [[9, 9], [9, 9], [9, 9]])  # overwrite them with garbage
        for slot in range(3):
            lm.commit(slot, 0)
        lm.forward([0, 1, 2], [p[-2:] for p in PROMPTS[:3]])  # the real rows again
        for slot in range(3):
            lm.commit(slot, 2)
        together = lm.forward([0, 1, 2], blocks)[0]
    for got, expected in zip(together, alone):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_rows_accept_different_numbers_of_drafts_in_one_step(target):
    continuations = {tuple(p): greedy(target, p, 40, stop=-1) for p in PROMPTS[:2]}
    drafter = Oracle(continuations, good={tuple(PROMPTS[0])})
    decoder = SpeculativeDecoder(target, drafter, stop_token_ids=set(), batch_size=2)
    params = SamplingParams(0.0, 13, 3)
    (good, bad), _ = run_all(decoder, PROMPTS[:2], [params, params])
    assert good[1] == [1, 4, 4, 4]  # prefill, then every draft accepted; 13 tokens exactly
    assert bad[1] == [1] * 13  # never accepted: one token per step
    assert good[0] == continuations[tuple(PROMPTS[0])][:13]
    assert bad[0] == continuations[tuple(PROMPTS[1])][:13]
    # Both rows were in the same steps: they shared the forwards.
    assert drafter.calls[0] == [0, 1] and drafter.calls[2] == [0, 1]
    # max_tokens caps the drafts: the last good step had room for exactly 3 more.
    assert good[2][-1] == 3


def test_rows_join_and_leave_without_draining_the_batch(target):
    """Batch of 2, five turns of different lengths: whenever a turn ends its slot takes the
    next one at the following step while the other row goes on; each turn's tokens equal
    plain greedy decoding and its record equals the one-row engine's."""
    from bench.config import NgramDrafterConfig
    from bench.engines.drafters import NgramDrafter

    class Counting(NgramDrafter):
        def __init__(self):
            super().__init__(NgramDrafterConfig())
            self.rows: list[list[int]] = []

        def propose_batch(self, requests):
            self.rows.append([r.slot for r in requests])
            return super().propose_batch(requests)

    lengths = [20, 6, 11, 3, 9]
    sampling = [SamplingParams(0.0, n, 3) for n in lengths]
    drafter = Counting()
    decoder = SpeculativeDecoder(target, drafter, {STOP}, 2)
    rows = [decoder.submit(p, s) for p, s in zip(PROMPTS, sampling)]
    queued = []
    while decoder.busy:
        queued.append(len(decoder.waiting))
        decoder.step()
    calls = list(drafter.rows)
    for prompt, params, row in zip(PROMPTS, sampling, rows):
        alone = SpeculativeDecoder(target, drafter, {STOP}, 1).run_alone(prompt, params)
        assert (row.out, row.steps, row.drafted) == (alone.out, alone.steps, alone.drafted)
        assert row.out == greedy(target, prompt, params.max_tokens)
    # Every step decoded two rows while turns were waiting: a leaver's slot was refilled
    # (prefilled) at the very next step, beside the row that went on.
    assert all(len(slots) == 2 for slots, waiting in zip(calls, queued) if waiting)
    assert all(len(slots) <= 2 for slots in calls)
    # The 20-token turn held slot 0 for its whole life while the others came and went.
    assert all(0 in slots for slots in calls[: len(rows[0].steps) - 1])
    assert len(calls) > len(rows[0].steps)


def test_stop_token_inside_accepted_drafts_ends_only_that_row(target):
    continuations = {tuple(p): greedy(target, p, 30, stop=-1) for p in PROMPTS[:3]}
    # Prompt 2's 6th token (new in its continuation) stops a turn; it arrives as the first
    # draft of a step, accepted, with more accepted drafts behind it.
    stop_token = continuations[tuple(PROMPTS[2])][5]
    assert stop_token not in continuations[tuple(PROMPTS[2])][:5]
    drafter = Oracle(continuations, good={tuple(p) for p in PROMPTS[:3]})
    decoder = SpeculativeDecoder(target, drafter, {stop_token}, batch_size=3)
    params = SamplingParams(0.0, 30, 3)
    results, _ = run_all(decoder, PROMPTS[:3], [params] * 3)
    for prompt, (tokens, steps, _) in zip(PROMPTS[:3], results):
        expected = continuations[tuple(prompt)]
        cut = expected.index(stop_token) + 1 if stop_token in expected else 30
        assert tokens == expected[:cut]  # each row ends on its own first stop token
        assert sum(steps) == len(tokens)
    assert results[2][1] == [1, 4, 1]  # the last step kept the stop token, not what followed
    assert 2 in drafter.released


def test_a_fault_fails_the_rows_of_its_step_and_the_decoder_goes_on(target):
    from bench.config import NgramDrafterConfig
    from bench.engines.drafters import NgramDrafter

    class Flaky(NgramDrafter):
        armed = True

        def propose_batch(self, requests):
            if self.armed:
                self.armed = False
                raise RuntimeError("draft network fell over")
            return super().propose_batch(requests)

    decoder = SpeculativeDecoder(target, Flaky(NgramDrafterConfig()), {STOP}, batch_size=2)
    params = SamplingParams(0.0, 8, 3)
    rows = [decoder.submit(p, params) for p in PROMPTS[:3]]
    while decoder.busy:
        decoder.step()
    assert [str(r.error) for r in rows[:2]] == ["draft network fell over"] * 2
    assert rows[2].error is None and rows[2].out == greedy(target, PROMPTS[2], 8)


def test_a_cancelled_row_frees_its_slot(target):
    from bench.config import NgramDrafterConfig
    from bench.engines.drafters import NgramDrafter

    decoder = SpeculativeDecoder(target, NgramDrafter(NgramDrafterConfig()), {STOP}, 1)
    params = SamplingParams(0.0, 10, 3)
    first = decoder.submit(PROMPTS[0], params)
    second = decoder.submit(PROMPTS[1], params)
    decoder.step()
    decoder.cancel(first)
    while decoder.busy:
        decoder.step()
    assert first.done and len(first.out) < 10
    assert second.out == greedy(target, PROMPTS[1], 10)


def test_a_listener_that_raises_cancels_only_its_row(target):
    from bench.config import NgramDrafterConfig
    from bench.engines.drafters import NgramDrafter

    class Gone(Exception):
        pass

    def hang_up(tokens):
        raise Gone

    decoder = SpeculativeDecoder(target, NgramDrafter(NgramDrafterConfig()), {STOP}, 2)
    params = SamplingParams(0.0, 10, 3)
    dropped = decoder.submit(PROMPTS[0], params, hang_up)
    kept = decoder.submit(PROMPTS[1], params)
    while decoder.busy:
        decoder.step()
    assert isinstance(dropped.error, Gone) and dropped.steps == [1]
    assert kept.error is None and kept.out == greedy(target, PROMPTS[1], 10)


# --- the engine on the real embedded model -----------------------------------------------


@pytest.fixture(scope="module")
def engine(default_config, smol_tokenizer):
    from bench.conversation import ChatFormat
    from bench.engines.reference import ReferenceEngine

    config = default_config.model_copy(
        update={"engine": default_config.engine.model_copy(update={"batch_size": 4})}
    )
    chat = ChatFormat(smol_tokenizer, config.conversation)
    return ReferenceEngine(config, chat), chat


@pytest.mark.slow
def test_batched_engine_equals_the_one_row_engine(engine, default_config):
    """Six turns (three questions, both turns, turn 2 joining as soon as its turn 1 ends)
    through the batch of 4 give, turn by turn, the tokens and per-step records of the same
    turns decoded one at a time."""
    from bench.config import DatasetConfig
    from bench.conversation import turn_messages
    from bench.dataset import load_questions

    reference, chat = engine
    _, questions = load_questions(DatasetConfig(question_ids=[81, 121, 131]))
    sampling = SamplingParams(0.0, 40, 3)
    decoder = reference.decoder
    occupancy: list[int] = []
    step = decoder.step

    def traced_step():
        result = step()
        occupancy.append(len(decoder.running))
        return result

    decoder.step = traced_step

    async def question(q):
        first = await reference.generate(
            chat.prompt_ids(turn_messages(q, 1, default_config.conversation)), sampling
        )
        messages = turn_messages(q, 2, default_config.conversation, first.text)
        second = await reference.generate(chat.prompt_ids(messages), sampling)
        return (q, first), (q, second)

    async def all_questions():
        return await asyncio.gather(*(question(q) for q in questions))

    try:
        batched = [pair for both in asyncio.run(all_questions()) for pair in both]
    finally:
        del decoder.step
    assert max(occupancy) == 3  # three turns in flight at once
    for turn, (q, got) in zip([1, 2] * 3, batched):
        history = None if turn == 1 else batched[batched.index((q, got)) - 1][1].text
        prompt = chat.prompt_ids(turn_messages(q, turn, default_config.conversation, history))
        alone = reference.generation(reference.decoder.run_alone(prompt, sampling))
        assert got.token_ids == alone.token_ids, (q.question_id, turn)
        assert got.steps == alone.steps and got.drafted == alone.drafted


def test_a_turn_reuses_the_rows_of_the_turn_it_continues(target):
    """Turn 2's prompt holds turn 1's prompt and answer: it joins the slot turn 1 left and
    prefills only the new tokens, with the same result as prefilling everything."""
    from bench.config import NgramDrafterConfig
    from bench.engines.drafters import NgramDrafter

    decoder = SpeculativeDecoder(target, NgramDrafter(NgramDrafterConfig()), {STOP}, 3)
    params = SamplingParams(0.0, 12, 3)
    others = [decoder.submit(p, params) for p in PROMPTS[1:3]]  # slots 0 and 1
    first = decoder.submit(PROMPTS[0], params)  # slot 2
    while not first.done:
        decoder.step()
    second_prompt = [*PROMPTS[0], *first.out, 44, 45, 46]
    second = decoder.submit(second_prompt, params)
    while decoder.busy:
        decoder.step()
    assert first.slot == 2 and second.slot == 2
    assert second.reused == len(PROMPTS[0]) + len(first.out) - 1  # all rows turn 1 fed
    assert second.out == greedy(target, second_prompt, 12)
    assert all(row.out == greedy(target, row.prompt, 12) for row in others)
