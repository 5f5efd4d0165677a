"""Repeated sampling on a GPU, methods side by side in one run (what bench/gpu_check.sh runs).

The model is SmolLM2-135M's shape with random weights (bench/gpu/conf/model/smollm2_random.yaml: the GPU
machine holds no weights) and SmolLM2's tokenizer; the prompts are ladder test problems in the `ladder_chat`
prompt (generated, so no data files travel). A random model never ends early, so every sample runs to
--max-new-tokens: tok/s compare the methods' decode speed, not answer lengths. Rows:

- plain `model.generate(do_sample=True, num_return_sequences=...)`: one RNG stream for the batch (no per-sample
  reproducibility), the speed the suite's samplers are measured against;
- the suite's backends through `harness.sampling.factory.make_sampler` (hf_generate, hf, vllm): a backend that
  refuses this device or is not installed gets its one-line reason instead of a rate; `hf_generate+counter` is
  hf_generate with counter-based per-sample streams (backend.rng=counter): all rows' uniforms in one op on the
  GPU instead of one host-side generator call per row per step (not yet run on a GPU).

`python bench/gpu/sampling_gpu.py --tiny --device cpu --dtype float32 --num-prompts 1 --samples 2 --max-new-tokens 4
--plain-rows 2` is a seconds-long smoke run on a CPU (bench/gpu_check.sh --dry-run runs it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from harness.data.problems import load_split  # noqa: E402
from harness.data.prompts import render  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.models.loading import load_model  # noqa: E402
from harness.sampling.base import SampleRequest, SamplingParams  # noqa: E402
from harness.sampling.factory import make_sampler  # noqa: E402
from harness.sampling.hf import eos_token_ids  # noqa: E402

MODEL_CONFIG = Path(__file__).resolve().parent / "conf" / "model" / "smollm2_random.yaml"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--plain-rows", default="256,1024", help="rows per plain generate call (comma-separated)")
    ap.add_argument("--batch-size", type=int, default=256, help="rows per batch of the suite's samplers")
    ap.add_argument("--methods", default="plain,hf_generate,hf_generate+counter,hf,vllm",
                    help="+counter: the backend with counter-based per-sample streams (backend.rng=counter)")
    ap.add_argument("--tiny", action="store_true", help="conf/model/tiny_random.yaml's shape (a CPU smoke run)")
    return ap.parse_args()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_generate(lm, texts: list[str], rows: int, params: SamplingParams, device: str) -> tuple[int, float]:
    """(new tokens, seconds) of `rows` samples split evenly over the prompts, one generate call per prompt."""
    per_prompt = max(1, rows // len(texts))
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
            out = lm.model.generate(ids, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                                    max_new_tokens=params.max_new_tokens, min_new_tokens=params.max_new_tokens,
                                    num_return_sequences=per_prompt, eos_token_id=eos_token_ids(lm),
                                    pad_token_id=lm.tokenizer.pad_token_id)
            tokens += (out.shape[1] - ids.shape[1]) * out.shape[0]
    synchronize(device)
    return tokens, time.perf_counter() - start


def backend_rate(lm, name: str, requests: list[SampleRequest], params: SamplingParams, batch_size: int, device: str):
    """(new tokens, seconds) of one backend, or the one-line reason it did not run."""
    try:
        backend, _, rng = name.partition("+")  # "hf_generate+counter": backend.rng=counter (counter_rng.py)
        sampler = make_sampler({"name": backend, "batch_size": batch_size, "rng": rng or "generator"}, lm)
    except HarnessError as err:
        return f"refused: {err}"
    start = time.perf_counter()
    try:
        tokens = sum(c.num_tokens for c in sampler.sample(requests, params))
    except Exception as err:  # noqa: BLE001 - the bench reports a backend that breaks here, it does not stop
        return f"failed: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    synchronize(device)
    return tokens, time.perf_counter() - start


def main() -> None:
    args = parse()
    cfg = OmegaConf.load(MODEL_CONFIG)
    cfg.device, cfg.dtype = args.device, args.dtype
    if args.tiny:
        tiny = OmegaConf.load(ROOT / "conf" / "model" / "tiny_random.yaml").random_init
        cfg.random_init = OmegaConf.merge(cfg.random_init, {k: v for k, v in tiny.items() if k != "tokenizer"})
    lm = load_model(cfg)
    problems = load_split("ladder", "test").problems[: args.num_prompts]
    texts = [render("ladder_chat", p, lm.tokenizer) for p in problems]
    params = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    requests = [SampleRequest(p.id, t, tuple(range(args.samples))) for p, t in zip(problems, texts)]
    methods = args.methods.split(",")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# {where}, torch {torch.__version__}, {lm.num_parameters / 1e6:.1f} M parameters, {args.dtype}, "
          f"{len(texts)} prompts x {args.samples} samples x {args.max_new_tokens} new tokens")
    print("| method | tokens | wall s | tok/s |")
    print("|---|---|---|---|")
    if "plain" in methods:
        for rows in (int(r) for r in args.plain_rows.split(",")):
            plain_generate(lm, texts[:1], min(rows, 8), params, args.device)  # warm-up: kernels, allocator
            tokens, wall = plain_generate(lm, texts, rows, params, args.device)
            print(f"| plain generate, {rows} rows | {tokens} | {wall:.1f} | {tokens / wall:.0f} |")
    for name in (m for m in methods if m != "plain"):
        result = backend_rate(lm, name, requests, params, args.batch_size, args.device)
        if isinstance(result, str):
            print(f"| {name} | | | {result} |")
        else:
            tokens, wall = result
            print(f"| {name} | {tokens} | {wall:.1f} | {tokens / wall:.0f} |")


if __name__ == "__main__":
    main()
