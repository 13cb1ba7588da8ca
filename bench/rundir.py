"""The run directory, the source of truth for a run (its identity comes from here, never
from the folder's name):

    manifest.json   resolved config, provenance, status
    records.jsonl   one TurnRecord per finished (question, turn), append-only
    summary.json    every metric (written only by `write_results`)
    report.md       the model-card table first
    plots/*.png
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench import METHODOLOGY_VERSION, __version__
from bench.config import REPO_ROOT, RunConfig
from bench.errors import BenchError
from bench.references import ReferenceTable, load_reference
from bench.speed import AggregateSpeed, aggregate_tokens_per_s

MANIFEST_SCHEMA_VERSION = 1
Status = Literal["running", "complete", "incomplete", "interrupted", "failed"]

_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "gguf",
    "accelerate",
    "numpy",
    "pydantic",
    "datasets",
    "tensorrt_llm",
    "tensorrt-llm",
    "vllm",
    "sglang",
    "openai",
    "httpx",
)


class DatasetInfo(BaseModel):
    source: str
    sha256: str
    question_ids: list[int]
    name: str = "mt-bench"
    """Which dataset (`DatasetConfig.name`); runs written before it existed ran MT-Bench."""
    categories: list[str] | None = None
    """The dataset's categories in report order; None: MT-Bench's eight."""
    turn_counts: list[int] | None = None
    """User turns of each question, in `question_ids` order; None: two each (MT-Bench)."""
    sample: str | None = None
    """How the questions were drawn (a seeded sample), where they were."""

    def expected_turns(self) -> dict[int, int]:
        """Question id -> how many turns it has."""
        counts = self.turn_counts or [2] * len(self.question_ids)
        return dict(zip(self.question_ids, counts))


class ChatTemplateInfo(BaseModel):
    sha256: str
    reasoning_effort: str | None
    reasoning_effort_used: bool
    """Whether the template renders differently for two efforts (i.e. uses the setting)."""
    turn2_history: str
    system_prompt: str | None


class EngineRecord(BaseModel):
    name: str
    version: str
    details: dict[str, Any] = Field(default_factory=dict)


class MachineLoad(BaseModel):
    """How busy the machine was at one moment: timing on a shared machine depends on it."""

    at: str
    loadavg: tuple[float, float, float] | None
    """Run-queue length averaged over 1, 5 and 15 minutes (`os.getloadavg`); None where the
    system has none."""
    cpu_count: int | None


def machine_load() -> MachineLoad:
    try:
        loadavg: tuple[float, float, float] | None = os.getloadavg()
    except (AttributeError, OSError):
        loadavg = None
    return MachineLoad(at=now_iso(), loadavg=loadavg, cpu_count=os.cpu_count())


class DecodeSession(BaseModel):
    """One invocation's decoding phase (`bench run`, then each `--resume`)."""

    load_start: MachineLoad
    load_end: MachineLoad | None = None
    decode_s: float | None = None
    """Wall time of the decoding phase; None when the session did not finish it
    (interrupted or failed), and then its turns are left out of the aggregate."""
    decoded_tokens: int | None = None
    """Output tokens of the turns this session finished successfully."""


class RunTiming(BaseModel):
    """What affects the run's timing, and its decoding time."""

    concurrency: int
    """Questions in flight the config asked for."""
    batch_size: int
    """Turns the engine decodes together (`EngineInfo.batch_size`)."""
    in_flight: int
    """Turns in flight at once: the larger of the two (the runner's semaphore)."""
    threads: int | None = None
    """CPU threads of the engine, where it says (the reference engine on the CPU)."""
    device: str | None = None
    """Where the engine decodes, where it says (the reference engine: `cpu`, `cuda`)."""
    sessions: list[DecodeSession] = Field(default_factory=list)

    def aggregate(self) -> AggregateSpeed | None:
        """Aggregate output tokens/s over the sessions that finished decoding: Σ decoded
        tokens / Σ decode_s; None when none did."""
        done = [s for s in self.sessions if s.decode_s is not None and s.decoded_tokens is not None]
        if not done:
            return None
        tokens = sum(s.decoded_tokens or 0 for s in done)
        decode_s = sum(s.decode_s or 0.0 for s in done)
        return AggregateSpeed(
            output_tokens=tokens,
            decode_s=decode_s,
            tokens_per_s=aggregate_tokens_per_s(tokens, decode_s),
            concurrency=self.in_flight,
            sessions=len(done),
        )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    run_id: str
    methodology_version: str = METHODOLOGY_VERSION
    bench_version: str = __version__
    status: Status = "running"
    config: RunConfig
    config_path: str | None = None
    reference_table: ReferenceTable | None = None
    """The published table named by `config.reference`, as read when the run started, so
    the run directory reports against it even after the file moves."""
    command: list[str] = Field(default_factory=list)
    dataset: DatasetInfo
    chat_template: ChatTemplateInfo | None = None
    engine: EngineRecord | None = None
    packages: dict[str, str] = Field(default_factory=dict)
    git: dict[str, Any] = Field(default_factory=dict)
    host: dict[str, Any] = Field(default_factory=dict)
    started_at: str
    finished_at: str | None = None
    wall_s: float | None = None
    """Seconds of this run's sessions (a resumed run adds its sessions)."""
    peak_rss_mb: float | None = None
    timing: RunTiming | None = None
    """Concurrency, threads, device, machine load and decoding time per session; None in
    manifests written before it existed (their runs have no aggregate tokens/s)."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def host_info(device: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "accelerator": None,
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["accelerator"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_text_atomic(path: Path, data: str) -> None:
    """Write to a temporary file and rename: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(data, encoding="utf-8")
    partial.replace(path)


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    manifest_path = property(lambda self: self.path / "manifest.json")
    records_path = property(lambda self: self.path / "records.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    report_path = property(lambda self: self.path / "report.md")
    plots_dir = property(lambda self: self.path / "plots")

    @staticmethod
    def check_can_create(path: Path) -> None:
        """Fail before any heavy work if a new run directory cannot be made at `path`: it
        must be absent or an empty folder, under a folder we can write in."""
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise BenchError(
                f"{path} already exists and is not empty; choose another --out "
                "or use --resume to finish that run"
            )
        parent = path if path.exists() else path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise BenchError(f"cannot create the run directory {path}: {parent} is not a folder")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".bench-probe-", dir=parent))
        except OSError as err:
            raise BenchError(
                f"cannot create the run directory {path}: {parent} is not writable ({err.strerror})"
            ) from None

    @classmethod
    def create(cls, path: Path) -> RunDir:
        """A new, empty, writable run directory."""
        cls.check_can_create(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BenchError(f"cannot create the run directory {path}: {err.strerror}") from None
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunDir:
        run = cls(path)
        if not run.manifest_path.is_file():
            raise BenchError(f"{path} is not a run directory (no manifest.json)")
        return run

    def read_manifest(self) -> Manifest:
        try:
            return Manifest.model_validate(json.loads(self.manifest_path.read_text("utf-8")))
        except (json.JSONDecodeError, ValidationError) as err:
            raise BenchError(f"{self.manifest_path} is damaged: {err}") from None

    def write_manifest(self, manifest: Manifest) -> None:
        write_text_atomic(self.manifest_path, manifest.model_dump_json(indent=2))


def manifest_reference(manifest: Manifest) -> ReferenceTable | None:
    """The run's reference table: the copy in the manifest, else the recorded path, else the
    file of the same name under this checkout's configs/references/."""
    if manifest.reference_table is not None:
        return manifest.reference_table
    recorded = manifest.config.reference
    if not recorded:
        return None
    for candidate in (Path(recorded), REPO_ROOT / "configs" / "references" / Path(recorded).name):
        if candidate.is_file():
            return load_reference(candidate)
    raise BenchError(f"the run's reference table {recorded} no longer exists")


def default_run_id(config: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.name}-k{config.draft_len}"


def drafter_identity(manifest: Manifest) -> dict[str, Any]:
    """Which drafter a run measured: `kind`, `checkpoint` (folder, hub id, or the n-gram
    settings) and `checkpoint_sha256` (None where the engine could not hash the files).

    The reference engine records it in `engine.details.drafter`; an engine that records
    none (TensorRT-LLM drafts with the EAGLE-3 head of `speculative_model_dir`) is read
    from its config."""
    details = manifest.engine.details.get("drafter") if manifest.engine else None
    engine = manifest.config.engine
    if not isinstance(details, dict):
        if engine.kind == "reference":
            details = engine.drafter.model_dump()
        else:
            model_dir = getattr(engine, "speculative_model_dir", None)
            details = {"kind": "eagle3" if model_dir else "unknown", "checkpoint": model_dir}
    kind = details.get("kind", "unknown")
    if kind == "ngram":
        checkpoint = f"max_ngram={details.get('max_ngram')}, min_ngram={details.get('min_ngram')}"
    else:
        checkpoint = details.get("checkpoint") or details.get("path") or details.get("hf_id")
    return {
        "kind": kind,
        "checkpoint": checkpoint,
        "checkpoint_sha256": details.get("checkpoint_sha256"),
    }


def drafter_mismatch(a: Manifest, b: Manifest) -> str | None:
    """How the drafters of two runs differ, or None when they measured the same drafter:
    the same kind, and the same checkpoint files where both runs hashed them (one head
    measured on two engines compares), else the same checkpoint name."""
    first, other = drafter_identity(a), drafter_identity(b)
    same = first["kind"] == other["kind"]
    if first["checkpoint_sha256"] and other["checkpoint_sha256"]:
        same = same and first["checkpoint_sha256"] == other["checkpoint_sha256"]
    else:
        same = same and first["checkpoint"] == other["checkpoint"]
    return None if same else f"{_describe(first)} vs {_describe(other)}"


def _describe(identity: dict[str, Any]) -> str:
    sha = identity["checkpoint_sha256"]
    return f"{identity['kind']} {identity['checkpoint']}" + (f" sha256 {sha[:12]}" if sha else "")
