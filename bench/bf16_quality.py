"""What bf16 matrix products cost in quality: greedy continuations of the fast sampler with
`matmul_dtype` float32 and bfloat16 on the same ladder prompts, and the per-token log-prob differences
along the float32 greedy path.

    OMP_NUM_THREADS=1 python bench/bf16_quality.py --per-level 2 --max-new-tokens 96

The model is the SFT warm start (conf/model/smollm2_135m_sft.yaml) when its checkpoint is already in
results/checkpoints/warm_start/ (this script never trains one), else the base SmolLM2-135M-Instruct.

Continuations: the fast sampler itself, greedy, run once per dtype (its prefill is transformers' float32
forward in both; only the decode step's products change). Divergence positions are in tokens of the two
texts re-tokenised. Log-probs: the float32 greedy continuation is teacher-forced after one float32 prefill,
once with every linear layer in float32 and once with bf16 inputs and weights (float32 accumulation and
output, as the decode step does); the first generated token comes from the prefill in both, so the
differences are over the tokens after it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness.data.problems import dataset_config, load_problems  # noqa: E402
from harness.data.prompts import load_prompt, render  # noqa: E402
from harness.models.loading import load_model  # noqa: E402
from harness.sampling.base import SampleRequest, SamplingParams  # noqa: E402
from harness.sampling.fast import _CACHE_ARG, FastHFSampler  # noqa: E402
from transformers import DynamicCache  # noqa: E402
from harness.training.checkpoints import is_checkpoint  # noqa: E402
from harness.training.warm_start import base_model_config, model_config, plan  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from sampling import machine  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m_sft", help="a conf/model name; a warm-start model only if already trained")
    ap.add_argument("--per-level", type=int, default=2, help="ladder test problems per level")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


def load_without_training(name: str):
    """The named model; a warm-start config whose checkpoint is not built yet falls back to its base model."""
    cfg = model_config(name)
    if cfg.get("warm_start") and not cfg.get("path") and not is_checkpoint(plan(cfg).dir):
        print(f"no warm-start checkpoint for {name} yet (not trained here): the base model instead")
        return load_model(base_model_config(cfg)), "base"
    return load_model(cfg), "warm start" if cfg.get("warm_start") else "as configured"


@contextmanager
def bf16_linears(model):
    """Every nn.Linear multiplies bf16 inputs by bf16 weights (float32 accumulation and output), like the
    decode step's `_Product` with matmul_dtype=bfloat16."""
    patched = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weight = module.weight.detach().to(torch.bfloat16)
            bias = None if module.bias is None else module.bias.detach().float()
            module.forward = lambda x, w=weight, b=bias: F.linear(x.to(torch.bfloat16), w).float() + (0 if b is None else b)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again


def path_logprobs(lm, prompt_ids: list[int], continuation: list[int]) -> dict[str, torch.Tensor]:
    """Log-probs of continuation[1:] given the prompt and the continuation before each token, per dtype."""
    model = lm.model
    out = {}
    with torch.inference_mode():
        for dtype in ("float32", "bfloat16"):
            cache = DynamicCache(config=model.config)
            model(torch.tensor([prompt_ids]), **{_CACHE_ARG: cache}, use_cache=True)
            with bf16_linears(model) if dtype == "bfloat16" else _nothing():
                logits = model(torch.tensor([continuation[:-1]]), **{_CACHE_ARG: cache}, use_cache=True).logits[0]
            out[dtype] = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(continuation[1:])[:, None])[:, 0]
            out[dtype + "_argmax"] = logits.argmax(-1)
    return out


@contextmanager
def _nothing():
    yield


def greedy(lm, requests, params, dtype: str, threads: int) -> dict[str, str]:
    sampler = FastHFSampler(lm, batch_size=len(requests), num_threads=threads, matmul_dtype=dtype)
    return {c.key: c.text for c in sampler.sample(requests, params)}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    print(f"# bf16 quality check {time.strftime('%Y-%m-%d %H:%M')}\nmachine: {machine()}\nload average at start: {os.getloadavg()[0]:.2f}")
    lm, which = load_without_training(args.model)
    spec = load_prompt("ladder")
    problems = load_problems(dataset_config("ladder")).problems
    chosen = []
    for level in sorted({p.metadata["level"] for p in problems}):
        chosen += [p for p in problems if p.metadata["level"] == level][: args.per_level]
    texts = {p.id: render(spec, p, lm.tokenizer) for p in chosen}
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens, stop=tuple(spec.stop))
    requests = [SampleRequest(k, v, (0,)) for k, v in texts.items()]
    print(f"model: {lm.identity} ({which}); {len(texts)} ladder test prompts ({args.per_level} per level), greedy, "
          f"max_new_tokens {params.max_new_tokens}, stop {list(params.stop)}, {args.threads} thread(s)")

    start = time.perf_counter()
    out = {dtype: greedy(lm, requests, params, dtype, args.threads) for dtype in ("float32", "bfloat16")}
    tok = lambda text: lm.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    level = {p.id: p.metadata["level"] for p in chosen}
    print("\n| prompt | level | fp32 tokens | bf16 tokens | identical | first divergence | mean abs dlogp | max abs dlogp | argmax flips |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_deltas, flips, positions, same = [], 0, 0, 0
    for key, text in texts.items():
        a, b = tok(out["float32"][key]), tok(out["bfloat16"][key])
        div = first_divergence(a, b)
        same += div is None
        if len(a) >= 2:
            lp = path_logprobs(lm, tok(text), a)
            delta = (lp["bfloat16"] - lp["float32"]).abs()
            flip = int((lp["bfloat16_argmax"] != lp["float32_argmax"]).sum())
            all_deltas.append(delta)
            flips, positions = flips + flip, positions + len(delta)
            stats = f"{delta.mean():.2e} | {delta.max():.2e} | {flip}/{len(delta)}"
        else:
            stats = "- | - | -"
        print(f"| {key} | {level[key]} | {len(a)} | {len(b)} | {'yes' if div is None else 'no'} | "
              f"{'-' if div is None else div} | {stats} |")
    deltas = torch.cat(all_deltas) if all_deltas else torch.zeros(0)
    print(f"\nidentical greedy continuations: {same}/{len(texts)}")
    if len(deltas):
        print(f"log-prob of the fp32 greedy token, |bf16 - fp32| over {len(deltas)} positions: mean {deltas.mean():.2e}, "
              f"median {deltas.median():.2e}, max {deltas.max():.2e}; teacher-forced positions where bf16's argmax differs from fp32's "
              f"argmax: {flips}/{positions}")
    print(f"wall {time.perf_counter() - start:.1f} s; load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
