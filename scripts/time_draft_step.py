"""Cost of one EAGLE-3 draft step against one target step, on this machine.

    python scripts/time_draft_step.py               # tiny random target and head
    python scripts/time_draft_step.py --smollm2     # the embedded SmolLM2-135M target

The head is random (no trained head is downloadable here) but has the real shape of a
head for that target: one layer of the target's width, draft vocabulary 32000. Timed
(median of --repeats, after warm-up, one thread unless --threads):

- target step: the verifying forward over 1 + k tokens on a cached context of --context
  tokens, with the captured hidden states (what the reference engine runs per step);
- draft step: one head forward over one token on its own KV cache (a feed-back step);
- context step: the head's forward over 1 + k newly accepted rows (once per step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engines.eagle3 import load_eagle3  # noqa: E402
from tests.tiny_models import head_config, random_head_weights, save_head, tiny_target  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="the embedded SmolLM2-135M target")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.smollm2:
        from bench.config import load_config
        from bench.target import load_target_model

        target = load_target_model(load_config(None), "cpu")
    else:
        target = tiny_target(vocab=49152, layers=8, hidden=64, seed=0)
    t = target.config
    heads = t.num_attention_heads
    cfg = head_config(target, draft_vocab=32000, heads=heads, kv_heads=t.num_key_value_heads)
    cfg["intermediate_size"] = t.intermediate_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_head(Path(tmp), cfg, random_head_weights(cfg), "eagle_authors")
        head, _ = load_eagle3(str(folder), None, target)
    from transformers import DynamicCache

    captured = head.spec.captured_layers
    context = torch.randint(0, t.vocab_size, (1, args.context))
    with torch.inference_mode():
        cache = DynamicCache()
        target(input_ids=context, cache=cache, use_cache=True)
        drafts = torch.randint(0, t.vocab_size, (1, 1 + args.k))

        def target_step():
            out = target(input_ids=drafts, cache=cache, use_cache=True, output_hidden_states=True)
            torch.cat([out.hidden_states[i][0] for i in captured], -1)
            cache.crop(-(1 + args.k))

        h, n = t.hidden_size, args.context
        head_kv = head.slot_cache(1)  # the head's KV: one slot holding n random context rows
        head_kv.begin([0], [n])
        head_kv.update(*(torch.randn(1, head_kv.shape[1], n, head_kv.shape[2]) for _ in "kv"), 0)
        head_kv.commit(0, n)
        embed = target.get_input_embeddings()
        token = torch.randint(0, t.vocab_size, (1, 1))
        g = torch.randn(1, 1, h)
        rows = torch.randint(0, t.vocab_size, (1, 1 + args.k))
        states = torch.randn(1, 1 + args.k, len(captured) * h)

        def draft_step():  # nothing is committed: the cache stays at n rows
            mask, positions = head_kv.begin([0], [1])
            logits, _ = head(embed(token), g, positions, mask, head_kv, torch.tensor([0]))
            logits.argmax(-1)

        def context_step():
            f = head.fuse(states)
            mask, positions = head_kv.begin([0], [1 + args.k])
            head(embed(rows), f, positions, mask, head_kv, torch.tensor([args.k]))

        target_ms = median_ms(target_step, args.repeats)
        draft_ms = median_ms(draft_step, args.repeats)
        context_ms = median_ms(context_step, args.repeats)
    name = "SmolLM2-135M" if args.smollm2 else "tiny"
    print(
        f"target {name}: {t.num_hidden_layers} layers, hidden {h}, vocab {t.vocab_size}; "
        f"head: 1 layer, hidden {h}, draft vocab 32000; context {n}, k {args.k}, "
        f"{args.threads} thread(s)"
    )
    print(f"target step (verify 1+k tokens): {target_ms:.2f} ms")
    print(
        f"draft step (1 token):            {draft_ms:.2f} ms  ({draft_ms / target_ms:.2f} of a target step)"
    )
    print(f"draft context step (1+k rows):   {context_ms:.2f} ms  ({context_ms / target_ms:.2f})")
    total = context_ms + (args.k - 1) * draft_ms
    print(
        f"drafting per step (context + {args.k - 1} draft steps): {total:.2f} ms ({total / target_ms:.2f})"
    )


if __name__ == "__main__":
    main()
