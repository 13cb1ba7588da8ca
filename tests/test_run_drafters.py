"""`bench run` end to end with the eagle3 and draft_model drafters on a tiny random target.

The target is a tiny Llama with the embedded default's tokenizer (SmolLM2's, so the chat
template and MT-Bench prompts are real) saved as a transformers folder; the head and the
draft model are tiny and random, so acceptance is low: what is checked is the plumbing,
losslessness against plain greedy decoding, and what the manifest records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bench.config import REPO_ROOT, load_config
from bench.conversation import ChatFormat, load_tokenizer, turn_messages
from bench.dataset import load_questions
from bench.rundir import RunDir, drafter_identity, drafter_mismatch
from tests.tiny_models import head_config, random_head_weights, save_head

VOCAB = 49152  # SmolLM2's


def tiny_chat_model(folder: Path, tokenizer, seed: int, layers: int, hidden: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaky enough that greedy ties do not occur
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tokenizer = load_tokenizer(load_config(None).target)
    target = tiny_chat_model(root / "target", tokenizer, seed=0, layers=8, hidden=32)
    tiny_chat_model(root / "draft", tokenizer, seed=5, layers=2, hidden=32)
    cfg = head_config(target, draft_vocab=512)
    save_head(root / "head", cfg, random_head_weights(cfg, seed=3), "modelopt", [1, 3, 5])
    tokenizer.add_tokens(["<not-in-the-target>"])
    tiny_chat_model(root / "other-vocab", tokenizer, seed=6, layers=2, hidden=32)
    return root, target


def run_bench(tmp_path: Path, root: Path, drafter: dict, name: str) -> subprocess.CompletedProcess:
    config = {
        "name": name,
        "target": {"name": "tiny", "path": str(root / "target")},
        "engine": {"kind": "reference", "device": "cpu", "threads": 1, "drafter": drafter},
        "draft_len": 3,
        "sampling": {"temperature": 0.0, "max_tokens": 16},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "bench", "run", "--config", str(path), "--limit", "2"]
    command += ["--max-tokens", "16", "--quiet", "--out", str(tmp_path / name)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def check_lossless(run_dir: Path, target) -> list[dict]:
    """Every turn-1 record equals plain greedy decoding of its prompt."""
    manifest = RunDir.open(run_dir).read_manifest()
    chat = ChatFormat(load_tokenizer(manifest.config.target), manifest.config.conversation)
    _, questions = load_questions(manifest.config.dataset)
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["error"] is None for r in records)
    for r in records:
        if r["turn"] != 1:
            continue
        question = next(q for q in questions if q.question_id == r["question_id"])
        prompt = chat.prompt_ids(turn_messages(question, 1, manifest.config.conversation))
        with torch.no_grad():
            out = target.generate(
                torch.tensor([prompt]),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=chat.tokenizer.eos_token_id,
                pad_token_id=chat.tokenizer.eos_token_id,
            )
        assert r["token_ids"] == out[0, len(prompt) :].tolist()
    return records


@pytest.mark.parametrize("kind", ["eagle3", "draft_model"])
def test_bench_run_with_a_model_drafter(kind, models, tmp_path):
    root, target = models
    drafter = (
        {"kind": "eagle3", "checkpoint": str(root / "head")}
        if kind == "eagle3"
        else {"kind": "draft_model", "path": str(root / "draft")}
    )
    result = run_bench(tmp_path, root, drafter, kind)
    assert result.returncode == 0, result.stderr[-2000:]
    records = check_lossless(tmp_path / kind, target)
    assert any(d > 0 for r in records for d in r["drafted"][1:])

    manifest = RunDir.open(tmp_path / kind).read_manifest()
    recorded = manifest.engine.details["drafter"]
    assert recorded["kind"] == kind and len(recorded["checkpoint_sha256"]) == 64
    if kind == "eagle3":
        assert recorded["captured_layers"] == [2, 4, 6] and recorded["draft_vocab_size"] == 512
    identity = drafter_identity(manifest)
    assert identity["checkpoint_sha256"] == recorded["checkpoint_sha256"]


def test_draft_model_with_another_tokenizer_fails_before_the_run(models, tmp_path):
    root, _ = models
    drafter = {"kind": "draft_model", "path": str(root / "other-vocab")}
    result = run_bench(tmp_path, root, drafter, "mismatch")
    assert result.returncode != 0
    assert "does not share the target's tokenizer: 1 tokens differ" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mismatch").exists()


def test_compare_refuses_to_mix_drafters_unless_told(tmp_path):
    from bench.rundir import EngineRecord, Manifest

    def manifest(config_path: str, drafter: dict | None) -> Manifest:
        config = load_config(REPO_ROOT / "configs" / config_path)
        details = {"drafter": drafter} if drafter else {}
        return Manifest(
            run_id="x",
            config=config,
            started_at="now",
            dataset={"source": "s", "sha256": "0", "question_ids": [81]},
            engine=EngineRecord(name=config.engine.kind, version="v", details=details),
        )

    head = "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"
    reference = manifest(
        "llama3.1-8b-eagle3.yaml",
        {"kind": "eagle3", "checkpoint": head, "checkpoint_sha256": "a" * 64},
    )
    trtllm = manifest("llama3.1-8b-eagle3-trtllm.yaml", None)
    ngram = manifest("smollm2-135m-cpu-ngram.yaml", None)
    other_head = manifest(
        "llama3.1-8b-eagle3.yaml",
        {"kind": "eagle3", "checkpoint": head, "checkpoint_sha256": "b" * 64},
    )
    # One head on both engines compares; a different drafter or other files do not.
    assert drafter_mismatch(reference, trtllm) is None
    assert drafter_mismatch(reference, ngram).startswith("eagle3 yuhuili")
    assert "sha256 aaaaaaaaaaaa vs eagle3" in drafter_mismatch(reference, other_head)
