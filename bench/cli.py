"""`python -m bench` / `bench`: the command line.

Each subcommand is a function taking parsed arguments and returning an exit code. User
errors (`BenchError`) end as one line on stderr and their exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import BenchError, IncompleteRunError


def _number_list(kind: type, name: str):
    """An argparse type for comma-separated `kind` values (e.g. 81,82 or 0.6,0.35)."""

    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {name}, got {text!r}"
            ) from None

    return parse


_int_list = _number_list(int, "integers")
_float_list = _number_list(float, "numbers")


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# CLI flag -> dotted config field it overrides.
RUN_OVERRIDES: dict[str, str] = {
    "engine": "engine.kind",  # first: another engine replaces the config's engine section
    "base_url": "engine.base_url",
    "api": "engine.api",
    "draft_len": "draft_len",
    "temperature": "sampling.temperature",
    "max_tokens": "sampling.max_tokens",
    "seed": "sampling.seed",
    "reasoning_effort": "conversation.reasoning_effort",
    "turn2_history": "conversation.turn2_history",
    "dataset": "dataset.name",
    "questions": "dataset.questions",
    "hf_dataset": "dataset.hf_dataset",
    "sample": "dataset.sample",
    "sample_seed": "dataset.seed",
    "max_turns": "dataset.max_turns",
    "question_ids": "dataset.question_ids",
    "categories": "dataset.categories",
    "limit": "dataset.limit",
    "reference": "reference",
    "concurrency": "concurrency",
    "batch_size": "engine.batch_size",
    "quantize": "target.quantization",
}


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run MT-Bench through an engine into a run directory")
    p.add_argument("--draft-len", type=int, help="draft tokens per step (k); 0: speculation off")
    p.add_argument("--concurrency", type=int, help="questions in flight")
    _add_run_settings(p)
    p.add_argument("--out", type=Path, help="run directory (default results/runs/<run-id>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def _add_run_settings(p: Any) -> None:
    """The flags that choose what runs, shared by `run` and `sweep`."""
    p.add_argument("--config", help="YAML config (default: configs/smollm2-135m-cpu.yaml)")
    p.add_argument(
        "--engine",
        choices=["reference", "openai", "trtllm"],
        help="engine kind; another kind than the config's replaces its engine section",
    )
    p.add_argument(
        "--base-url", help="openai engine: the server's URL (e.g. http://127.0.0.1:8000)"
    )
    p.add_argument(
        "--api",
        choices=["completions", "chat", "generate"],
        help="openai engine: token-id prompts (default), chat messages, or SGLang's /generate",
    )
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--max-tokens", type=int, help="output tokens per turn")
    p.add_argument("--seed", type=int, help="sampling seed (temperature > 0)")
    p.add_argument(
        "--reasoning-effort", help="passed to the chat template: low, medium (default) or high"
    )
    p.add_argument(
        "--turn2-history",
        choices=["final", "raw"],
        help="turn-1 answer given back in turn 2: reasoning removed (final) or as generated",
    )
    p.add_argument(
        "--dataset",
        choices=["mt-bench", "speed-bench", "humaneval", "sharegpt", "jsonl"],
        help="what runs (default mt-bench); jsonl: your conversations, given with --questions",
    )
    p.add_argument(
        "--questions",
        help="a file: MT-Bench's FastChat question.jsonl, SPEED-Bench's rebuilt prompts, "
        "or your JSONL of conversations (FastChat or OpenAI messages)",
    )
    p.add_argument("--hf-dataset", help="MT-Bench from a Hugging Face dataset id")
    p.add_argument("--sample", type=int, help="sharegpt: conversations drawn (default 80)")
    p.add_argument("--sample-seed", type=int, help="sharegpt: seed of the sample (default 0)")
    p.add_argument("--max-turns", type=int, help="send at most N user turns per conversation")
    p.add_argument("--question-ids", type=_int_list, help="e.g. 81,82,101")
    p.add_argument("--categories", type=_str_list, help="e.g. writing,math")
    p.add_argument("--limit", type=int, help="N questions spread over the categories")
    p.add_argument(
        "--reference", help="published table to compare with (configs/references/*.yaml)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="reference engine: turns decoded together (default 16 on CPU)",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8-dynamic"],
        help="reference engine on the CPU: int8 dynamic quantisation of the target's Linear layers",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.report import card_table
    from bench.runner import execute

    overrides = {field: getattr(args, flag) for flag, field in RUN_OVERRIDES.items()}
    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
        if given or args.config or args.out:
            raise BenchError(
                "--resume takes the settings of the run being resumed; drop "
                + ", ".join(
                    given + (["--config"] if args.config else []) + (["--out"] if args.out else [])
                )
            )
        config = None
    else:
        config = load_config(args.config, overrides)
    outcome = execute(
        config,
        out=args.out,
        resume=args.resume,
        quiet=args.quiet,
        config_path=args.config,
        command=sys.argv,
    )
    summary = outcome.summary
    print(card_table(summary))
    rate = outcome.decoded_tokens / outcome.decode_s if outcome.decode_s else 0.0
    print(
        f"\n{summary.counted_questions} questions, {outcome.output_tokens} output tokens, "
        f"{rate:.1f} tokens/s while decoding, {outcome.wall_s:.0f} s wall"
    )
    print(f"run directory: {outcome.run.path}")
    for signal in summary.signals:
        if signal.severity != "info":
            print(f"{signal.severity}: {signal.message}", file=sys.stderr)
    if not summary.complete:
        raise IncompleteRunError(
            f"{len(summary.failed)} turns failed and {len(summary.missing)} are missing; "
            f"finish them with: python -m bench run --resume {outcome.run.path}"
        )
    return 0


def add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="runs over draft lengths x concurrency; which draft length is fastest at each load",
    )
    p.add_argument(
        "--draft-len",
        type=_int_list,
        required=True,
        help="draft lengths, e.g. 0,1,2,3,4 (0: speculation off, the speedups' baseline)",
    )
    p.add_argument("--concurrency", type=_int_list, default=[1], help="e.g. 1,16 (default 1)")
    _add_run_settings(p)
    p.add_argument("--out", type=Path, required=True, help="sweep folder (rerun to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.sweep import run_sweep

    overrides = {
        field: getattr(args, flag)
        for flag, field in RUN_OVERRIDES.items()
        if flag not in ("draft_len", "concurrency", "batch_size")
    }
    if args.batch_size is not None:
        raise BenchError("bench sweep sets the batch size from --concurrency; drop --batch-size")
    base = load_config(args.config, overrides)

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[sweep] {message}", file=sys.stderr, flush=True)

    result = run_sweep(base, args.draft_len, args.concurrency, args.out, args.quiet, progress)
    for recommendation in result.recommendations:
        print(recommendation.message)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"sweep folder: {args.out} (sweep.json, report.md, plots/)")
    return 0


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="rebuild summary, report and plots from records.jsonl")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import card_table
    from bench.runner import rebuild_report

    summary = rebuild_report(args.run_dir)
    print(card_table(summary))
    print(f"\nwrote {args.run_dir / 'summary.json'}, report.md and plots/")
    return 0


def add_compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="regression gate: compare a candidate run against a baseline (exit 1 on regression)",
        description="Each side is a run directory, a summary.json or a reference table "
        "(configs/references/*.yaml). Exit 0: no regression; 1: regression, sanity signal, "
        "joint acceptance under its bound, or incomparable runs; 2: unusable input.",
    )
    p.add_argument("baseline", type=Path, help="run directory, summary.json or reference .yaml")
    p.add_argument("candidate", type=Path, help="run directory, summary.json or reference .yaml")
    p.add_argument(
        "--gate",
        type=Path,
        help="YAML: tolerance, categories (per-category tolerance), joint_acceptance_min, allow, "
        "min_speedup (overall latency speedup; speed is otherwise reported, not gated)",
    )
    p.add_argument(
        "--tolerance", type=float, help="largest allowed relative AL drop (default 0.02 = 2 %%)"
    )
    p.add_argument(
        "--min-joint",
        type=_float_list,
        metavar="B1,B2,...",
        help="lower bounds of the candidate's joint acceptance at positions 1, 2, ...",
    )
    p.add_argument(
        "--allow",
        type=_str_list,
        default=[],
        action="extend",
        help="accept these differences: draft_len, temperature, max_tokens, "
        "questions, turn2_history, methodology, drafter, precision",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/compare"),
        help="folder for compare.md and compare.json (default results/compare)",
    )
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import compare, load_gate, load_side
    from bench.compare_render import render_terminal, write_outputs

    gate = load_gate(args.gate)
    update: dict[str, Any] = {"allow": sorted({*gate.allow, *args.allow})}
    if args.tolerance is not None:
        if args.tolerance < 0:
            raise BenchError("--tolerance must not be negative")
        update["tolerance"] = args.tolerance
    if args.min_joint is not None:
        update["joint_acceptance_min"] = args.min_joint
    gate = gate.model_copy(update=update)
    result = compare(load_side(args.baseline), load_side(args.candidate), gate)
    write_outputs(result, args.out / "compare.md", args.out / "compare.json")
    print(render_terminal(result))
    print(f"wrote {args.out / 'compare.md'} and {args.out / 'compare.json'}")
    return 0 if result.passed else 1


def add_dashboard_parser(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard", help="static HTML dashboard (and dashboard.md) of every run under a folder"
    )
    p.add_argument("results_dir", type=Path, help="folder holding run directories (any depth)")
    p.add_argument("--out", type=Path, help="output folder (default RESULTS_DIR/dashboard)")
    p.add_argument(
        "--baseline",
        type=Path,
        help="baseline run directory (default: the latest run under a baselines/ folder)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="reference table .yaml (default: the latest run's own reference)",
    )
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from bench.dashboard import build_dashboard

    out = args.out or args.results_dir / "dashboard"
    site = build_dashboard(args.results_dir, out, baseline=args.baseline, reference=args.reference)
    print(f"{len(site.runs)} runs; wrote {out / 'index.html'} and {out / 'dashboard.md'}")
    return 0


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server over the reference engine")
    p.add_argument("--config", help="YAML config with a reference engine (default: embedded CPU)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--draft-len", type=int, help="served draft length (default: the config's)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from bench.serve_app import serve

    if not 0 < args.port < 65536:
        raise BenchError(f"--port must be between 1 and 65535, got {args.port}")
    serve(args.config, args.host, args.port, args.draft_len)
    return 0


def add_eagle3_parser(sub: Any) -> None:
    from bench.eagle3_train.cli import add_eagle3_parser as add

    add(sub)


# Subcommands: name -> function adding its parser. New commands add one line here.
COMMANDS: dict[str, Callable[[Any], None]] = {
    "run": add_run_parser,
    "sweep": add_sweep_parser,
    "report": add_report_parser,
    "compare": add_compare_parser,
    "dashboard": add_dashboard_parser,
    "serve": add_serve_parser,
    "eagle3": add_eagle3_parser,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="MT-Bench acceptance of speculative decoding, per category."
    )
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        # Libraries' own bars (transformers' GGUF loader uses a bare tqdm) only where a user
        # watches. tqdm reads TQDM_* when it is first imported, which is after this point.
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return args.func(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
