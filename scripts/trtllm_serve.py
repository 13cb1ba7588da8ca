"""Print the trtllm-serve command for a bench config with a `trtllm` engine section, and
write the extra-llm-api YAML it needs (EAGLE-3 at the run's draft length).

The flags follow the Kimi-K2-Thinking-Eagle3 model card's serving recipe; the draft length
comes from --draft-len (default: the config's), so the server and the harness agree.

    python scripts/trtllm_serve.py configs/kimi-k2-thinking-eagle3.yaml --draft-len 3 \
        --out /tmp/serve  # prints the command; writes /tmp/serve/extra-llm-api-config.yml
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import TrtllmEngineConfig, load_config  # noqa: E402
from bench.errors import BenchError  # noqa: E402


def serve_command(config_path: str, draft_len: int | None, port: int, out: Path) -> list[str]:
    config = load_config(config_path, {"draft_len": draft_len})
    engine = config.engine
    if not isinstance(engine, TrtllmEngineConfig):
        raise BenchError(f"{config_path}: engine.kind is {engine.kind!r}, not 'trtllm'")
    model = config.target.hf_id or config.target.path
    extra = {
        "speculative_config": {
            "decoding_type": "Eagle",
            "max_draft_len": config.draft_len,
            "speculative_model_dir": engine.speculative_model_dir,
            "eagle3_one_model": engine.eagle3_one_model,
        },
        # Per-iteration stats at /metrics, to cross-check the streamed step counts.
        "enable_iter_perf_stats": True,
    }
    out.mkdir(parents=True, exist_ok=True)
    extra_path = out / "extra-llm-api-config.yml"
    extra_path.write_text(yaml.safe_dump(extra, sort_keys=False), encoding="utf-8")
    command = ["trtllm-serve", str(model), "--host", "0.0.0.0", "--port", str(port),
               "--backend", "pytorch", "--tp_size", str(engine.tensor_parallel_size)]  # fmt: skip
    for flag, value in (("--max_batch_size", engine.max_batch_size),
                        ("--max_num_tokens", engine.max_num_tokens),
                        ("--max_seq_len", engine.max_seq_len),
                        ("--ep_size", engine.moe_expert_parallel_size),
                        ("--kv_cache_free_gpu_memory_fraction",
                         engine.kv_cache_free_gpu_memory_fraction)):  # fmt: skip
        if value is not None:
            command += [flag, str(value)]
    if config.target.trust_remote_code:
        command.append("--trust_remote_code")
    return [*command, "--extra_llm_api_options", str(extra_path)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--draft-len", type=int)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    try:
        print(shlex.join(serve_command(args.config, args.draft_len, args.port, args.out)))
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
