"""The EAGLE-3 training tool on tiny models: prompt filtering, the truncated ShareGPT file,
the draft vocabulary, generation (resumable, the target's greedy answers), capture, the
training-time test against the engine's own drafting, training (the loss falls, a resumed
run ends with the weights of an uninterrupted one), export, and the exported head run by
the reference engine, lossless against plain greedy decoding."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.config import RunConfig
from bench.eagle3_train import read_jsonl
from bench.eagle3_train.capture import capture, load_sample
from bench.eagle3_train.export import export_checkpoint, measured_run
from bench.eagle3_train.model import build_head, ttt_outputs
from bench.eagle3_train.prompts import PromptSettings, build_prompts
from bench.eagle3_train.train import SETTINGS, latest_checkpoint, train
from bench.eagle3_train.vocab import (
    checkpoint_bytes,
    choose_size,
    head_parameters,
    make_vocab,
    mappings,
    read_vocab,
    top_ids,
)
from bench.engines import SamplingParams
from bench.engines.drafters import Eagle3Drafter
from bench.engines.eagle3 import load_eagle3
from bench.engines.speculative import SpeculativeDecoder
from bench.sharegpt import first_human_turns, read_records
from tests.tiny_models import greedy, tiny_target

CAPTURED = (2, 4, 5)  # the default for an 8-layer target: hidden_states[2], [L//2], [L-3]
DRAFT_VOCAB = 24


def test_sharegpt_reads_a_file_cut_off_mid_record(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "hello"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "why?"}, {"from": "gpt"}]},
    ]
    text = "[\n" + ",\n".join(json.dumps(r) for r in records) + ',\n{"id": "d", "conv'
    path = tmp_path / "cut.json"
    path.write_text(text)
    assert [r["id"] for r in read_records(path)] == ["a", "b", "c"]
    assert first_human_turns(path) == [("a", "hi"), ("c", "why?")]


def test_prompts_are_deduplicated_kept_off_mtbench_bounded_and_shuffled():
    mtbench = [
        "Compose an engaging travel blog post about a recent trip to Hawaii.",
        "Rewrite your previous response. Start every sentence with the letter A.",
    ]
    conversations = [
        ("1", "What is the capital of France?"),
        ("2", "what is the capital of  FRANCE"),  # same normalised text
        ("3", "   "),
        ("4", "compose an engaging travel blog post about a recent trip to hawaii!"),  # exact
        ("5", "Please: Rewrite your previous response. Start every sentence with the letter A."),
        ("6", "Here: compose an engaging travel blog post about a recent trip to Japan"),  # 10-gram
        ("7", "word " * 40),  # too long
        ("1", "Another prompt with a reused id"),
        ("8", "Tell me a joke about cats."),
        ("9", "Explain photosynthesis simply."),
    ]

    def encode(text: str) -> list[int]:
        return list(range(len(text.split()) + 3))  # template tokens + one per word

    settings = PromptSettings(max_prompt_tokens=20, seed=1)
    rows, summary = build_prompts(conversations, mtbench, encode, settings)
    counts = summary["counts"]
    assert counts["empty"] == 1 and counts["duplicate_text"] == 1 and counts["duplicate_id"] == 1
    assert summary["mtbench_overlap_by_check"] == {"exact": 1, "contains": 1, "ngram": 1}
    assert counts["too_long"] == 1 and counts["kept"] == 3
    assert sorted(r["id"] for r in rows) == ["1", "8", "9"]
    again, _ = build_prompts(conversations, mtbench, encode, settings)
    assert again == rows  # the shuffle is seeded


def test_draft_vocabulary_and_its_size_budget():
    counts = Counter({5: 10, 3: 7, 9: 7, 1: 1})
    assert top_ids(counts, 3) == [3, 5, 9]
    assert top_ids(counts, 6) == [0, 1, 2, 3, 5, 9]  # filled with the lowest unused ids
    d2t, t2d = mappings([3, 5, 9], 12)
    assert d2t.tolist() == [3, 4, 7] and d2t.dtype == torch.long
    assert t2d.nonzero().flatten().tolist() == [3, 5, 9] and t2d.dtype == torch.bool
    # SmolLM2-135M: 5,089,536 parameters besides lm_head; 8k rows fit 20 MB, 16k do not.
    fixed, per_row = head_parameters(576, 1536, 9, 3, 64)
    assert (fixed, per_row) == (5_089_536, 576)
    assert checkpoint_bytes(fixed, per_row, 8192, 49152) < 20_000_000
    assert checkpoint_bytes(fixed, per_row, 16384, 49152) > 20_000_000
    wide = Counter({i: 1 for i in range(10_000)})
    size, table = choose_size(wide, fixed, per_row, 49152)
    assert size == 8192 and [row["within_budget"] for row in table] == [True, True, False, False]
    narrow = Counter({i: 1 for i in range(900)})  # both fitting sizes cover everything
    assert choose_size(narrow, fixed, per_row, 49152)[0] == 4096  # then the smaller


# -- the pipeline on a tiny target ----------------------------------------------------------


PROMPTS = [[0, 5, 9, 17, 33, 2], [0, 11, 50, 11, 50, 6, 19], [0, 44, 2, 9, 13, 44, 7, 8]]


@pytest.fixture(scope="module")
def target():
    model = tiny_target(vocab=64, layers=8, hidden=32, seed=0, scale=4.0)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def work(target, tmp_path_factory) -> Path:
    """A work folder with answers (plain greedy, as the generate stage writes them), a
    draft vocabulary and captured states."""
    folder = tmp_path_factory.mktemp("eagle3-work")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(12):
        prompt = [
            0,
            *torch.randint(
                2, 64, (int(torch.randint(4, 9, (1,), generator=gen)),), generator=gen
            ).tolist(),
        ]
        answer = greedy(target, prompt, 20)
        rows.append({"id": f"s{i}", "prompt_ids": prompt, "response_ids": answer})
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_vocab(folder, target.config, DRAFT_VOCAB)
    capture(target, folder, CAPTURED, None)
    return folder


def options(**overrides) -> dict:
    base = {
        "epochs": 6,
        "ttt_steps": 3,
        "step_decay": 0.8,
        "lr": 3e-3,
        "warmup": 2,
        "batch_size": 4,
        "clip": 0.5,
        "heldout_percent": 20,
        "seed": 0,
        "init": "target",
        "save_every": 5,
        "eval_every": 0,
        "limit": None,
        "max_steps": None,
    }
    return {**base, **overrides}


def test_capture_stores_what_training_needs(target, work):
    row = next(read_jsonl(work / "responses.jsonl"))
    sample = load_sample(work, row["id"])
    ids = row["prompt_ids"] + row["response_ids"]
    start = len(row["prompt_ids"]) - 1
    assert sample["input_ids"].tolist() == ids and int(sample["start"][0]) == start
    assert sample["hidden"].shape == (len(ids), 3 * 32) and sample["hidden"].dtype == torch.float32
    assert sample["final"].shape == (len(ids) - start, 32)
    # The target's argmax from the last prompt position on is its own greedy answer, and
    # `final` is the state after the final norm: the target's logits are recomputed from it.
    assert sample["argmax"][:-1].tolist() == row["response_ids"]
    with torch.no_grad():
        logits = target(input_ids=torch.tensor([ids])).logits[0, start:]
    assert torch.allclose(sample["final"] @ target.lm_head.weight.T, logits, atol=1e-4)
    assert capture(target, work, CAPTURED, None)["captured"] == 0  # a rerun resumes


def test_training_time_test_equals_the_engines_drafting(target, work):
    """Step j of the TTT forward at position t is what the engine's head computes for the
    j-th draft after context 0..t, when the earlier drafts were the sequence's tokens."""
    head, _ = build_head(target, read_vocab(work), seed=0)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the copied weights
        sample = load_sample(work, "s0")
        ids, hidden = sample["input_ids"].long(), sample["hidden"]
        embedding = target.get_input_embeddings().weight
        outputs = ttt_outputs(head, embedding, ids[None], hidden[None], steps=3)
        t = 5
        cache = head.slot_cache(1)
        mask, positions = cache.begin([0], [t + 1])
        tokens = embedding[ids[1 : t + 2]][None]  # state at position s pairs with token s + 1
        f = head.fuse(hidden[None, : t + 1])
        logits, g = head(tokens, f, positions, mask, cache, torch.tensor([t]))
        cache.commit(0, t + 1)
        for j in range(3):
            expected = head.lm_head(head.norm(outputs[j][0, t]))
            assert torch.allclose(logits[0], expected, atol=1e-4), f"step {j}"
            mask, positions = cache.begin([0], [1])
            token = embedding[ids[t + 2 + j]][None, None]
            logits, g = head(token, g[:, None], positions, mask, cache, torch.tensor([0]))
            cache.commit(0, 1)


def test_training_lowers_the_loss_and_resumes_exactly(target, work, tmp_path):
    whole = train(target, work, tmp_path / "whole", options())
    log = list(read_jsonl(tmp_path / "whole" / "log.jsonl"))
    assert len(log) == 6 and log[-1]["step"] == whole["step"]
    # Cross-entropy against a random tiny target's flat distributions cannot fall far (its
    # entropy is the floor); it falls at every step, and top-1 agreement climbs.
    first, last = log[0]["train"], log[-1]["train"]
    assert all(b < a for a, b in zip(first["loss_per_step"], last["loss_per_step"]))
    assert last["top1_per_step"][0] > first["top1_per_step"][0] + 0.2
    assert last["acceptance_proxy"] > first["acceptance_proxy"]
    assert log[-1]["heldout"]["positions"] > 0

    train(target, work, tmp_path / "split", options(max_steps=7))  # interrupted at step 7
    assert latest_checkpoint(tmp_path / "split").name == "ckpt-7.pt"
    train(target, work, tmp_path / "split", options())  # the same command resumes
    a = torch.load(latest_checkpoint(tmp_path / "whole"), weights_only=False)
    b = torch.load(latest_checkpoint(tmp_path / "split"), weights_only=False)
    assert a["step"] == b["step"] and a["train_ids"] == b["train_ids"]
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
    assert {k: a["settings"][k] for k in SETTINGS} == b["settings"]


def test_exported_head_loads_and_decodes_losslessly(target, work, tmp_path):
    run_dir = work / "runs" / "run"
    train(target, work, run_dir, options())
    config = RunConfig.model_validate(
        {"name": "tiny", "target": {"name": "tiny", "path": str(work)}}
    )
    out = export_checkpoint(config, work, None, tmp_path / "head")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert cfg["draft_vocab_size"] == DRAFT_VOCAB and cfg["num_hidden_layers"] == 1
    weights = load_file(str(out / "model.safetensors"))
    assert weights["midlayer.self_attn.q_proj.weight"].shape == (32, 64)
    assert weights["fc.weight"].dtype == torch.float16 and weights["d2t"].dtype == torch.long
    assert weights["t2d"].dtype == torch.bool and int(weights["t2d"].sum()) == DRAFT_VOCAB
    provenance = json.loads((out / "training.json").read_text())
    assert provenance["step"] > 0 and provenance["training_wall_s"] > 0

    head, sha256 = load_eagle3(str(out), None, target)
    assert sha256 == provenance["head_sha256"]
    assert head.spec.captured_layers == CAPTURED
    accepted = 0
    rows = list(read_jsonl(work / "responses.jsonl"))
    for prompt in [*PROMPTS, rows[0]["prompt_ids"]]:
        drafter = Eagle3Drafter(head, target.get_input_embeddings(), 1)
        decoder = SpeculativeDecoder(target, drafter, {1}, 1)
        row = decoder.run_alone(prompt, SamplingParams(0.0, 20, 3))
        assert row.out == greedy(target, prompt, 20)
        accepted += sum(e - 1 for e in row.steps[1:])
    assert accepted > 0  # the trained head drafts some of the target's own tokens


def test_generation_is_the_targets_greedy_answer_and_resumes(tmp_path):
    from bench.config import load_config
    from bench.conversation import ChatFormat, load_tokenizer, opening_messages
    from bench.eagle3_train.generate import generate
    from bench.errors import BenchError
    from tests.test_run_drafters import tiny_chat_model

    default = load_config(None)
    tokenizer = load_tokenizer(default.target)
    model = tiny_chat_model(tmp_path / "target", tokenizer, seed=0, layers=2, hidden=32)
    config = RunConfig.model_validate(
        {
            "name": "tiny",
            "target": {"name": "tiny", "path": str(tmp_path / "target")},
            "engine": {"kind": "reference", "device": "cpu", "threads": 1},
            "draft_len": 3,
        }
    )
    chat = ChatFormat(tokenizer, config.conversation)
    texts = ["Name a colour.", "Count to three.", "Say hello."]
    prompts = [
        {"id": f"p{i}", "prompt_ids": chat.prompt_ids(opening_messages(t, config.conversation))}
        for i, t in enumerate(texts)
    ]
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    assert generate(config, folder, 2, 12, 2)["answered"] == 2
    assert generate(config, folder, None, 12, 2)["answered"] == 1  # resumes: the third only
    rows = {r["id"]: r for r in read_jsonl(folder / "responses.jsonl")}
    assert sorted(rows) == ["p0", "p1", "p2"]
    eos = tokenizer.eos_token_id
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt["prompt_ids"]]),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        row = rows[prompt["id"]]
        assert row["prompt_ids"] == prompt["prompt_ids"]
        assert row["response_ids"] == out[0, len(prompt["prompt_ids"]) :].tolist()
        assert row["finish_reason"] == ("stop" if row["response_ids"][-1] == eos else "length")
    with pytest.raises(BenchError, match="max_tokens differ"):
        generate(config, folder, None, 16, 2)


def test_export_records_only_runs_of_this_head_that_finished(make_run, tmp_path):
    from bench.errors import BenchError
    from bench.rundir import EngineRecord, RunDir

    run = make_run("measured")
    row = measured_run(run, "f" * 64)
    summary = json.loads((run / "summary.json").read_text())
    assert row["acceptance_length"]["overall"] == summary["overall"]["acceptance_length"]
    assert row["questions"] == len(summary["questions"]) and row["draft_len"] == 3
    manifest = RunDir(run).read_manifest()
    other_head = {"drafter": {"kind": "eagle3", "checkpoint": "h", "checkpoint_sha256": "a" * 64}}
    engine = EngineRecord(name="reference", version="v", details=other_head)
    RunDir(run).write_manifest(manifest.model_copy(update={"engine": engine}))
    with pytest.raises(BenchError, match="ran another head"):
        measured_run(run, "f" * 64)
    RunDir(run).write_manifest(manifest.model_copy(update={"status": "incomplete"}))
    with pytest.raises(BenchError, match="not complete"):
        measured_run(run, "f" * 64)
    with pytest.raises(BenchError, match="not a run directory"):
        measured_run(tmp_path, "f" * 64)


def test_the_curve_names_the_checkpoints_it_lacks(tmp_path):
    from bench.eagle3_train.curve import checkpoints
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="no checkpoints"):
        checkpoints(tmp_path, None)
    for step in (5, 10, 50):
        (tmp_path / f"ckpt-{step}.pt").write_bytes(b"")
    assert [p.name for p in checkpoints(tmp_path, None)] == [
        "ckpt-5.pt",
        "ckpt-10.pt",
        "ckpt-50.pt",
    ]
    assert [p.name for p in checkpoints(tmp_path, [50, 5])] == ["ckpt-5.pt", "ckpt-50.pt"]
    with pytest.raises(BenchError, match="no checkpoint at step 7; it has 5, 10, 50"):
        checkpoints(tmp_path, [7])
