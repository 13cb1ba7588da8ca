"""Stage 5: training the head on the captured samples, resumable step for step.

A run lives in `<work dir>/runs/<name>/`: `ckpt-<step>.pt` every `--save-every` steps and at
each epoch's end (head, optimiser, step, the sample list and the run's settings),
`log.jsonl` (one row per epoch and per evaluation: answer tokens trained on so far, train
loss, held-out loss, top-1 agreement per TTT step, the acceptance proxy: the learning
curve). The sample list is fixed when a run starts (the samples captured then, minus the
held-out ones); epoch e visits it in the order of a permutation seeded by (seed, e), so a
resumed run sees exactly the batches an uninterrupted one would, and ends with the same
weights (the training figures logged for an epoch that a resume cut cover only the steps
after the resume; the held-out ones are whole).

Held out: the samples whose id hashes into the lowest `--heldout-percent` buckets, fixed
whatever else is added later.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench.eagle3_train import is_heldout, training_answers
from bench.errors import BenchError
from bench.records import RecordWriter
from bench.rundir import git_state, now_iso


def add_train_arguments(p: Any) -> None:
    p.add_argument("--run", default="run", help="run name under <dir>/runs/ (default run)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the samples (default 1)")
    p.add_argument("--ttt-steps", type=int, default=3, help="training-time test steps T (3)")
    p.add_argument("--step-decay", type=float, default=0.8, help="loss weight decay^j (0.8)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (1e-4)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps (50)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step (4)")
    p.add_argument("--clip", type=float, default=0.5, help="gradient norm clip (0.5)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps")
    p.add_argument("--heldout-percent", type=int, default=5, help="held-out share (5 %%)")
    p.add_argument("--limit", type=int, help="train on the first N captured samples only")
    p.add_argument("--max-steps", type=int, help="stop after this step (for a timed slice)")
    p.add_argument("--seed", type=int, default=0, help="init and data order (0)")
    p.add_argument(
        "--init",
        choices=["target", "random"],
        default="target",
        help="start from the target's weights (default) or PyTorch's random init",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default all cores)")


SETTINGS = (
    "epochs",
    "ttt_steps",
    "step_decay",
    "lr",
    "warmup",
    "batch_size",
    "clip",
    "heldout_percent",
    "seed",
    "init",
)


def lr_at(step: int, settings: dict[str, Any], total: int) -> float:
    """Linear warm-up to lr, then cosine decay to a tenth of it at the last step."""
    peak, warmup = settings["lr"], settings["warmup"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def epoch_order(ids: list[str], seed: int, epoch: int) -> list[str]:
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [ids[i] for i in torch.randperm(len(ids), generator=generator).tolist()]


class Trainer:
    """The head, its optimiser and the target tensors it needs (embedding, lm_head rows)."""

    def __init__(self, target: Any, used: list[int], settings: dict[str, Any]) -> None:
        import torch

        from bench.eagle3_train.model import build_head
        from bench.eagle3_train.vocab import mappings

        self.settings = settings
        self.used = used
        self.head, self.config = build_head(target, used, settings["seed"], settings["init"])
        self.embedding = target.get_input_embeddings().weight.detach().float()
        self.lm_rows = target.lm_head.weight.detach().float()[torch.tensor(used)]
        _, self.t2d = mappings(used, target.config.vocab_size)
        params = [p for p in self.head.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=settings["lr"], betas=(0.9, 0.95), weight_decay=0.0
        )

    def batch(self, folder: Path, ids: list[str]) -> Any:
        from bench.eagle3_train.capture import load_sample
        from bench.eagle3_train.model import make_batch

        return make_batch([load_sample(folder, i) for i in ids], self.lm_rows)

    def step(self, batch: Any, lr: float) -> dict[str, Any]:
        import torch

        from bench.eagle3_train.model import ttt_forward

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, stats = ttt_forward(
            self.head,
            self.embedding,
            self.t2d,
            batch,
            self.settings["ttt_steps"],
            self.settings["step_decay"],
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), self.settings["clip"])
        self.optimizer.step()
        stats["loss"] = float(loss.detach())
        return stats

    def evaluate(self, folder: Path, ids: list[str]) -> dict[str, Any]:
        import torch

        from bench.eagle3_train.model import ttt_forward

        totals: dict[str, Any] = {}
        with torch.no_grad():
            for start in range(0, len(ids), self.settings["batch_size"]):
                chunk = ids[start : start + self.settings["batch_size"]]
                _, stats = ttt_forward(
                    self.head,
                    self.embedding,
                    self.t2d,
                    self.batch(folder, chunk),
                    self.settings["ttt_steps"],
                    self.settings["step_decay"],
                )
                accumulate(totals, stats)
        return summarize(totals)


def accumulate(totals: dict[str, Any], stats: dict[str, Any]) -> None:
    for key, value in stats.items():
        if key == "loss":
            continue
        if isinstance(value, list):
            totals[key] = [a + b for a, b in zip(totals.get(key, [0] * len(value)), value)]
        else:
            totals[key] = totals.get(key, 0) + value


def summarize(totals: dict[str, Any]) -> dict[str, Any]:
    """Per TTT step: mean loss over in-vocabulary answer positions, top-1 agreement with the
    target's argmax over all answer positions; and the acceptance proxy at k = T."""
    if not totals:
        return {}
    return {
        "loss_per_step": [
            s / n if n else None for s, n in zip(totals["loss_sum"], totals["loss_n"])
        ],
        "top1_per_step": [
            a / n if n else None for a, n in zip(totals["agree"], totals["answer_n"])
        ],
        "acceptance_proxy": totals["al_sum"] / totals["al_positions"]
        if totals["al_positions"]
        else None,
        "positions": totals["answer_n"][0],
    }


def save_checkpoint(path: Path, trainer: Trainer, state: dict[str, Any]) -> None:
    import torch

    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "head": trainer.head.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "config": trainer.config,
            "used": trainer.used,
            **state,
        },
        partial,
    )
    partial.replace(path)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(run_dir.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return found[-1] if found else None


def train(target: Any, folder: Path, run_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir`; returns its final state."""
    import torch
    from tqdm import tqdm

    from bench.eagle3_train.capture import sample_path
    from bench.eagle3_train.vocab import read_vocab

    settings = {k: options[k] for k in SETTINGS}
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        saved = torch.load(resume, map_location="cpu", weights_only=False)
        if saved["settings"] != settings:
            changed = sorted(k for k in settings if saved["settings"][k] != settings[k])
            raise BenchError(
                f"{run_dir} was started with other settings ({', '.join(changed)} differ); "
                "resume with the same flags or pass another --run"
            )
        used, train_ids, heldout = saved["used"], saved["train_ids"], saved["heldout_ids"]
    else:
        used = read_vocab(folder)
        rows = training_answers(folder)[: options.get("limit")]
        ids = [r["id"] for r in rows if sample_path(folder, r["id"]).is_file()]
        if not ids:
            raise BenchError(f"no captured samples under {folder / 'capture'}: run capture")
        heldout = [i for i in ids if is_heldout(i, settings["heldout_percent"])]
        train_ids = [i for i in ids if i not in set(heldout)]
    trainer = Trainer(target, used, settings)
    batch_size = settings["batch_size"]
    per_epoch = math.ceil(len(train_ids) / batch_size)
    total = per_epoch * settings["epochs"]
    step, earlier_s, commands, seen = 0, 0.0, [], 0
    if resume is not None:
        earlier_s, commands = saved.get("wall_s", 0.0), saved.get("commands", [])
        seen = saved.get("answer_tokens_seen", 0)
        trainer.head.load_state_dict(saved["head"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]
        print(f"train: resuming {resume} at step {step}/{total}", file=sys.stderr)
    else:
        print(
            f"train: {len(train_ids)} samples, {len(heldout)} held out, {per_epoch} steps/epoch",
            file=sys.stderr,
        )

    def state() -> dict[str, Any]:
        return {
            "step": step,
            "answer_tokens_seen": seen,
            "settings": settings,
            "train_ids": train_ids,
            "heldout_ids": heldout,
            "saved": now_iso(),
            "git": git_state(),
            "wall_s": round(earlier_s + time.perf_counter() - started, 1),
            "commands": [*commands, " ".join(sys.argv)],
        }

    started = time.perf_counter()
    log = RecordWriter(run_dir / "log.jsonl")
    epoch_totals: dict[str, Any] = {}
    epoch_losses: list[float] = []
    stop = min(total, options.get("max_steps") or total)
    bar = tqdm(total=total, initial=step, unit="step", desc="train")
    while step < stop:
        epoch, index = divmod(step, per_epoch)
        order = epoch_order(train_ids, settings["seed"], epoch)
        ids = order[index * batch_size : (index + 1) * batch_size]
        stats = trainer.step(trainer.batch(folder, ids), lr_at(step, settings, total))
        accumulate(epoch_totals, stats)
        epoch_losses.append(stats["loss"])
        seen += stats["answer_n"][0]
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}")
        epoch_end = step % per_epoch == 0
        evaluate = epoch_end or (options["eval_every"] and step % options["eval_every"] == 0)
        if evaluate:
            row = {
                "step": step,
                "epoch": step / per_epoch,
                "answer_tokens_seen": seen,
                "train_loss_mean": sum(epoch_losses) / len(epoch_losses),
                "train": summarize(epoch_totals),
                "heldout": trainer.evaluate(folder, heldout),
                "seconds": round(time.perf_counter() - started, 1),
                "time": now_iso(),
            }
            log.append(row)
            print(f"train: {json.dumps(row)}", file=sys.stderr, flush=True)
            if epoch_end:
                epoch_totals, epoch_losses = {}, []
        if epoch_end or step % options["save_every"] == 0 or step == stop:
            save_checkpoint(run_dir / f"ckpt-{step}.pt", trainer, state())
    bar.close()
    log.close()
    return state()


def run_training(config: Any, folder: Path, args: Any) -> None:
    import torch

    from bench.target import load_target_model

    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_target_model(config, "cpu")
    for param in target.parameters():
        param.requires_grad_(False)
    train(target, folder, folder / "runs" / args.run, vars(args))
