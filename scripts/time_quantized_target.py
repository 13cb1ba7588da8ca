"""What `target.quantization: int8-dynamic` buys and costs on the embedded SmolLM2-135M.

    OMP_NUM_THREADS=1 python scripts/time_quantized_target.py [--threads 1,2] [--tokens 64]

Three targets, loaded the way the reference engine loads them (`load_causal_lm`):
float32; int8-dynamic as shipped (lm_head kept float32); and, to show why it is kept,
int8-dynamic with lm_head quantised too. Timed, in rounds that alternate the targets so
that a machine shared with other jobs slows all of them alike (median of the rounds):

- one-token step: a forward of 1 token on a cached context of --context tokens (plain
  decoding's step);
- verify step: a forward of 1 + k tokens on the same context (the speculative step).

Agreement with float32, on turn 1 of the first --prompts MT-Bench questions (chat
template applied): tokens of greedy decoding (--tokens each) until the first difference,
and the share of positions where the target's argmax equals float32's when both read the
float32 continuation (teacher forcing, so one early flip does not hide the rest).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import load_config  # noqa: E402
from bench.conversation import load_tokenizer  # noqa: E402
from bench.dataset import load_questions  # noqa: E402
from bench.engines.drafters import cache_argument  # noqa: E402
from bench.target import load_causal_lm  # noqa: E402


def quantize_lm_head_too(model):
    """The shipped int8-dynamic model with its lm_head quantised as well (for comparison)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {"lm_head": per_channel_dynamic_qconfig}, inplace=True)


def step_ms(model, context: torch.Tensor, n_new: int) -> float:
    from transformers import DynamicCache

    cache = DynamicCache()
    kwargs = {cache_argument(model): cache, "use_cache": True}
    model(input_ids=context, **kwargs)
    new = context[:, -n_new:]
    for _ in range(2):  # warm-up
        model(input_ids=new, **kwargs)
        cache.crop(-n_new)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model(input_ids=new, **kwargs)
        times.append((time.perf_counter() - start) * 1000)
        cache.crop(-n_new)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="thread counts to time, e.g. 1,2")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    config = load_config(None)
    quantized = config.target.model_copy(update={"quantization": "int8-dynamic"})
    models = {
        "float32": load_causal_lm(config.target, "cpu")[0],
        "int8-dynamic": load_causal_lm(quantized, "cpu")[0],
        "int8-dynamic + lm_head": quantize_lm_head_too(load_causal_lm(quantized, "cpu")[0]),
    }
    tokenizer = load_tokenizer(config.target)
    torch.manual_seed(0)
    context = torch.randint(0, tokenizer.vocab_size, (1, args.context))

    print(f"SmolLM2-135M-Instruct, torch {torch.__version__}, context {args.context} tokens")
    print(f"median ms per forward (one-token step | 1+k verify step, k = {args.k})")
    with torch.inference_mode():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            times = {name: ([], []) for name in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    times[name][0].append(step_ms(model, context, 1))
                    times[name][1].append(step_ms(model, context, 1 + args.k))
            base = statistics.median(times["float32"][0])
            for name, (one, verify) in times.items():
                one_ms, verify_ms = statistics.median(one), statistics.median(verify)
                print(
                    f"  {threads} thread(s)  {name:24s} {one_ms:7.2f} | {verify_ms:7.2f}"
                    f"   (one-token speed-up {base / one_ms:.2f}x)"
                )

        torch.set_num_threads(1)
        _, questions = load_questions(config.dataset)
        print(f"greedy agreement with float32 over {args.tokens} tokens:")
        for question in questions[: args.prompts]:
            messages = [{"role": "user", "content": question.turns[0]}]
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            outputs = {
                name: model.generate(
                    prompt,
                    max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens,
                    do_sample=False,
                )[0, prompt.shape[1] :]
                for name, model in models.items()
            }
            reference = outputs["float32"]
            forced = torch.cat([prompt[0], reference])[None]
            want = models["float32"](forced).logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
            for name, out in outputs.items():
                if name == "float32":
                    continue
                same = (out == reference).int()
                prefix = int(same.cumprod(0).sum())
                got = models[name](forced).logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
                share = float((got == want).float().mean())
                print(
                    f"  question {question.question_id} ({question.category}) {name:24s} "
                    f"identical for the first {prefix}/{args.tokens} tokens; "
                    f"teacher-forced argmax agreement {share:.1%}"
                )


if __name__ == "__main__":
    main()
