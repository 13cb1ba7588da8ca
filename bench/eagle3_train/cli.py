"""`python -m bench eagle3 STAGE`: the training stages on the command line.

Every stage takes `--config` (the run config whose target and chat settings the head is
for; default: the embedded CPU default) and `--dir` (the work folder; default
`<bench cache>/eagle3/<config name>`). Rerunning a stage with the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _common(p: Any) -> None:
    p.add_argument("--config", help="run config of the target (default: the embedded default)")
    p.add_argument("--dir", type=Path, help="work folder (default <bench cache>/eagle3/<name>)")


def add_eagle3_parser(sub: Any) -> None:
    p = sub.add_parser("eagle3", help="train an EAGLE-3 head for a config's target, by stages")
    stages = p.add_subparsers(dest="stage", required=True)

    s = stages.add_parser("prompts", help="ShareGPT first turns, MT-Bench kept out")
    _common(s)
    s.add_argument("--max-prompt-tokens", type=int, default=512, help="default 512")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    s.set_defaults(func=cmd_prompts)

    s = stages.add_parser("generate", help="the target's greedy answers (resumable)")
    _common(s)
    s.add_argument("--limit", type=int, help="answer the first N prompts (default all)")
    s.add_argument("--max-tokens", type=int, default=384, help="per answer (default 384)")
    s.add_argument("--batch-size", type=int, default=16, help="answers decoded together")
    s.add_argument("--draft-len", type=int, default=3, help="drafts per step (lossless)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default all cores)")
    s.set_defaults(func=cmd_generate)

    s = stages.add_parser("vocab", help="draft vocabulary from the answers' token counts")
    _common(s)
    s.add_argument("--size", type=int, help="draft vocabulary size (default: by coverage)")
    s.set_defaults(func=cmd_vocab)

    s = stages.add_parser("capture", help="the target's hidden states per sample, on disk")
    _common(s)
    s.add_argument("--limit", type=int, help="capture the first N answers only")
    s.add_argument("--threads", type=int, help="torch CPU threads (default all cores)")
    s.set_defaults(func=cmd_capture)

    from bench.eagle3_train.train import add_train_arguments

    s = stages.add_parser("train", help="train the head with the training-time test")
    _common(s)
    add_train_arguments(s)
    s.set_defaults(func=cmd_train)

    s = stages.add_parser("export", help="write a training checkpoint as a loadable head")
    _common(s)
    s.add_argument("--checkpoint", type=Path, help="training checkpoint (default: the latest)")
    s.add_argument("--out", type=Path, required=True, help="head folder to write")
    s.add_argument(
        "--measured",
        type=Path,
        action="append",
        help="a `bench run` directory with this head: its table goes in training.json (repeatable)",
    )
    s.set_defaults(func=cmd_export)

    s = stages.add_parser("curve", help="measure a run's checkpoints with `bench run`")
    _common(s)
    s.add_argument("--run", default="run", help="run name under <dir>/runs/ (default run)")
    s.add_argument("--steps", help="checkpoint steps, comma-separated (default: all)")
    s.add_argument("--limit", type=int, default=8, help="questions (default 8, one per category)")
    s.add_argument("--max-tokens", type=int, default=128, help="per turn (default 128)")
    s.add_argument("--draft-len", type=int, default=3, help="drafts per step (default 3)")
    s.add_argument("--batch-size", type=int, default=8, help="turns decoded together (8)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default all cores)")
    s.set_defaults(func=cmd_curve)


def _setup(args: argparse.Namespace) -> tuple[Any, Path]:
    from bench.config import load_config
    from bench.eagle3_train import work_dir

    config = load_config(args.config, {})
    folder = args.dir or work_dir(config.name)
    folder.mkdir(parents=True, exist_ok=True)
    return config, folder


def cmd_prompts(args: argparse.Namespace) -> int:
    from bench.eagle3_train.prompts import PromptSettings, make_prompts

    config, folder = _setup(args)
    summary = make_prompts(config, folder, PromptSettings(args.max_prompt_tokens, args.seed))
    print(json.dumps(summary["counts"]))
    print(f"wrote {folder / 'prompts.jsonl'} and prompts.json")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from bench.config import load_config
    from bench.eagle3_train.generate import generate

    _, folder = _setup(args)
    config = load_config(args.config, {"draft_len": args.draft_len})
    result = generate(config, folder, args.limit, args.max_tokens, args.batch_size, args.threads)
    rate = result["tokens"] / result["seconds"] if result["seconds"] else 0.0
    print(f"{result['answered']} answers, {result['tokens']} tokens, {rate:.1f} tokens/s")
    return 0


def cmd_vocab(args: argparse.Namespace) -> int:
    from bench.eagle3_train.vocab import make_vocab
    from bench.target import load_target_model

    config, folder = _setup(args)
    target = load_target_model(config, "cpu")
    vocab = make_vocab(folder, target.config, args.size)
    for row in vocab["candidates"]:
        print(
            f"N={row['size']:>6}: coverage {row['coverage']:.4f}, checkpoint "
            f"{row['checkpoint_bytes'] / 1e6:.2f} MB{'' if row['within_budget'] else ' (over)'}"
        )
    print(f"chose N={vocab['size']} ({vocab['chosen_by']}) over {vocab['answer_tokens']} tokens")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    import torch

    from bench.eagle3_train.capture import capture
    from bench.engines.eagle3 import default_captured_layers
    from bench.target import load_target_model

    config, folder = _setup(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target_model(config, "cpu")
    layers = default_captured_layers(target.config.num_hidden_layers)
    result = capture(target, folder, layers, args.limit)
    rate = result["tokens"] / result["seconds"] if result["seconds"] else 0.0
    print(f"{result['captured']} samples, {result['tokens']} tokens, {rate:.0f} tokens/s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.eagle3_train.train import run_training

    config, folder = _setup(args)
    run_training(config, folder, args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.eagle3_train.export import export_checkpoint

    config, folder = _setup(args)
    out = export_checkpoint(config, folder, args.checkpoint, args.out, args.measured)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from bench.eagle3_train.curve import measure_curve

    _, folder = _setup(args)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    overrides = {
        "dataset.limit": args.limit,
        "sampling.max_tokens": args.max_tokens,
        "draft_len": args.draft_len,
        "engine.batch_size": args.batch_size,
        "concurrency": args.batch_size,
        "engine.threads": args.threads,
    }
    rows = measure_curve(args.config, folder, args.run, steps, overrides)
    print(f"{'step':>6} {'answer tokens':>14} {'held-out top-1':>15} {'proxy AL':>9} {'AL':>7}")
    for row in rows:
        heldout = row["heldout"] or {}
        top1 = (heldout.get("top1_per_step") or [None])[0]
        proxy = heldout.get("acceptance_proxy")
        print(
            f"{row['step']:>6} {row['answer_tokens_seen'] or '-':>14} "
            f"{f'{top1:.3f}' if top1 is not None else '-':>15} "
            f"{f'{proxy:.3f}' if proxy is not None else '-':>9} {row['acceptance_length']:>7.3f}"
        )
    return 0
