"""A GGUF checkpoint converted once into an ordinary transformers folder, then read from there.

transformers reads a .gguf file through its own GGUF parser on every `from_pretrained`, and
for SmolLM2-135M (the embedded default) that takes about 10 s, mostly the 49,152-entry
vocabulary read field by field; the tokenizer, the config and the weights each parse it
again. So the first load converts the file into a folder under the bench cache
(`cache_dir()/gguf/<sha256 of the .gguf file>/`), made by transformers' own
`save_pretrained` from what its GGUF reader produced:

- `model.safetensors`: the weights in float32, what transformers dequantises GGUF tensors to
  (float32 also holds F16 and BF16 tensors exactly, so any requested dtype casts from it as
  it would from the file);
- `config.json` (without the GGUF quantisation entry) and `generation_config.json`;
- the tokenizer in its native files (`tokenizer.json`, `tokenizer_config.json`, the chat
  template).

Every later load reads that folder in well under a second; tests/test_gguf_cache.py proves
the model and the tokenizer are those of the GGUF file, bit for bit and id for id.

The folder is written under a temporary name and renamed into place, and its last file,
`bench-gguf-cache.json`, lists every file with its size: a conversion killed halfway leaves
no folder that looks complete, and a folder missing a file or the list, holding a file of
another size, or written by another transformers version is converted again.

A model that transformers keeps in its packed GGUF blocks (architectures its newer GGUF path
computes on directly) is not converted: it has no plain-weights equivalent, and is loaded
from the .gguf file as before (`converted_checkpoint` returns None).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.artifacts import cache_dir, sha256_file

MARKER = "bench-gguf-cache.json"
FORMAT = 1
"""Bump when the folder's layout or the conversion changes, so old folders are rebuilt."""

STALE_S = 3600
"""Age after which another conversion's temporary folder counts as abandoned."""

_hashes: dict[tuple[str, int, int], str] = {}


def gguf_sha256(path: Path) -> str:
    """sha256 of a .gguf file, hashed once per process (keyed by path, size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_file(path)
    return _hashes[key]


def cache_folder(sha256: str) -> Path:
    return cache_dir() / "gguf" / sha256


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def is_complete(folder: Path, sha256: str) -> bool:
    """Whether `folder` is a finished conversion of the file with this sha256, by this
    transformers: the marker names it, and every file it lists is there with its size."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        ok = (
            marker["format"] == FORMAT
            and marker["gguf_sha256"] == sha256
            and marker["transformers"] == _transformers_version()
            and {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(files)
        )
        return ok and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


class NotConvertible(Exception):
    """transformers keeps this GGUF model's weights packed; there is nothing to convert."""


def _convert(gguf: Path, folder: Path) -> None:
    """Parse `gguf` once with transformers and save what it made into `folder` (empty)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if getattr(quantizer, "supported", False) and not getattr(
        quantizer.quantization_config, "dequantize", True
    ):
        raise NotConvertible(gguf.name)
    # The weights are plain tensors now; the GGUF entry would send the folder back through
    # the GGUF quantiser on load.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def _write_marker(folder: Path, gguf: Path, sha256: str) -> None:
    """Written last: lists every file the conversion made, with its size."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    marker = {
        "format": FORMAT,
        "gguf_sha256": sha256,
        "gguf_file": gguf.name,
        "transformers": _transformers_version(),
        "files": files,
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _remove_stale(root: Path, sha256: str) -> None:
    """Temporary folders a killed conversion of this file left (a kill -9 skips the clean-up);
    an hour old, so that a conversion still running in another process keeps its own."""
    for path in root.glob(f".{sha256[:16]}-*"):
        try:
            if time.time() - path.stat().st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def converted_checkpoint(gguf: Path, sha256: str | None = None) -> Path | None:
    """The converted folder of the .gguf file `gguf`, converting it first when the cache has
    no complete one; None when the model cannot be converted (load the .gguf file itself).
    `sha256` is the file's hash when already verified (a pinned wheel's member)."""
    sha256 = sha256 or gguf_sha256(gguf)
    folder = cache_folder(sha256)
    if is_complete(folder, sha256):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(folder.parent, sha256)
    print(
        f"note: converting {gguf.name} once into {folder} (later runs load from there)",
        file=sys.stderr,
    )
    building = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}-", dir=folder.parent))
    try:
        _convert(gguf, building)
        _write_marker(building, gguf, sha256)
        if folder.exists():
            if is_complete(folder, sha256):  # another process finished first
                return folder
            shutil.rmtree(folder)
        try:
            building.rename(folder)
        except OSError:
            if not is_complete(folder, sha256):  # not a concurrent conversion's result
                raise
    except NotConvertible:
        return None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder
