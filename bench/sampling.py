"""Repeated-sampling throughput, side by side in one run: plain `generate(num_return_sequences)`,
the fast `hf` backend, llama.cpp (llama-cpp-python, when installed: one sequence at a time, and many
sequences in one batch sharing the prompt's KV cache) and the fp32 matmul ceiling.

    python bench/sampling.py                      # SmolLM2-135M, 8 GSM8K 8-shot prompts x 64 samples
    python bench/sampling.py --threads 1,2 --samples 64 --num-prompts 3

The machine is shared: absolute tokens/s move with other people's jobs, so every method runs in
this one process on the same prompts and the ratios are what to compare; the CPU-time rates
(tokens per second of this process's CPU time) show what an idle machine would give.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from harness.data.problems import load_split  # noqa: E402
from harness.models.loading import load_model  # noqa: E402
from harness.data.prompts import fill, load_prompt, render  # noqa: E402
from harness.sampling.base import SampleRequest, SamplingParams, dtype_name, sample_seed  # noqa: E402
from harness.sampling.fast import (  # noqa: E402
    FULL_SORTS, FastHFSampler, _Run, _Weights, cpu_flags, onednn_available, resolve_matmul_kernel,
)
from harness.sampling import fast  # noqa: E402
from harness.sampling.hf import eos_token_ids, finish_completion  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64, help="samples per prompt for the fast sampler")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--shots", type=int, default=8, help="GSM8K train exemplars in each prompt")
    ap.add_argument("--prompt", choices=["fewshot", "chat_boxed"], default="fewshot",
                    help="fewshot: the Monkeys paper's 8-shot prompt; chat_boxed: the default Monkeys run's prompt")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=128, help="fast sampler rows")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to try")
    ap.add_argument("--plain-samples", type=int, default=16, help="samples per prompt for plain generate")
    ap.add_argument("--plain-batch", type=int, default=16, help="num_return_sequences per generate call")
    ap.add_argument("--plain-prompts", type=int, default=2, help="prompts for plain generate and llama.cpp (the slow ones)")
    ap.add_argument("--llamacpp-samples", type=int, default=8, help="samples per prompt for sequential llama.cpp")
    ap.add_argument("--llamacpp-parallel", default="16,32,64",
                    help="comma-separated parallel sequences to try for batched llama.cpp (the fastest one runs the workload)")
    ap.add_argument("--llamacpp-kv", default="unified,split",
                    help="comma-separated KV layouts to try for batched llama.cpp: unified (shared prompt cells), split")
    ap.add_argument("--llamacpp-probe-tokens", type=int, default=48, help="new tokens per sample in the parallel sweep")
    ap.add_argument("--kernels", default="blas,onednn",
                    help="comma-separated backend.matmul_kernel values for the fast sampler's rows, matmul rates and profiles "
                         "(the first is 'before', the others 'after'; onednn is dropped where this torch lacks it)")
    ap.add_argument("--attention-blocks", default="",
                    help="comma-separated rows per attention block (harness.sampling.fast.ATTENTION_BLOCK) for the fast "
                         "sampler's fp32 rows and step splits, e.g. 128,16: one call over all rows (before) against blocks "
                         "(after); empty: the sampler's default only")
    ap.add_argument("--paired-blocks", default="",
                    help="comma-separated rows per attention block to compare paired: one fp32 run of the fast sampler that "
                         "switches the block size every decode step, so that every setting meets the same batch and the same "
                         "host load (two separate runs differ by more than the blocks do); empty: not run")
    ap.add_argument("--skip", default="", help="comma-separated: plain,fast,bf16,llamacpp,llamacpp_batched,profile,split,contention")
    ap.add_argument("--contention-samples", type=int, default=8, help="samples per prompt for the contention rows")
    ap.add_argument("--contention-seconds", type=float, default=180,
                    help="stop a contention row after this long and rate the samples finished so far")
    return ap.parse_args()


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    flags = cpu_flags()
    avx = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{cpu}, {os.cpu_count()} cpus ({', '.join(avx) or 'no avx512'}), torch {torch.__version__}"


def rate_of(r: dict) -> float:
    return r["tokens"] / r["wall"]


def load() -> float:
    return os.getloadavg()[0]


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def ceiling_gflops(threads: int, size: int = 2048, reps: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):  # best of: the machine's capability, not its current load
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def step_products(w: _Weights, x: torch.Tensor, down_in: torch.Tensor) -> None:
    """A decode step's products alone: q/k/v, o, gate/up and down of every layer, then the lm_head."""
    for _, wqkv, wo, _, wgu, wd in w.layers:
        wqkv(x), wo(x), wgu(x), wd(down_in)
    w.lm_head(x)


def step_matmul_rate(lm, rows: int, threads: int, reps: int = 3, dtype: torch.dtype = torch.float32,
                     kernel: str = "blas") -> float:
    """Tokens/s of a decode step's linear layers alone (q/k/v, o, gate/up, down per layer, and lm_head) at
    `rows` rows, through the decode step's own products (`kernel`; bf16: casts included): the small shapes of this model
    run well below the 2048^2 ceiling, and this is the rate the issue's steady-state target is measured against."""
    torch.set_num_threads(threads)
    w = _Weights(lm.model, dtype, kernel, rows)
    hidden = w.embed.shape[1]
    x = torch.randn(rows, hidden)
    down_in = torch.randn(rows, w.layers[0][5].shape[1])
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps + 1):  # the first round warms the kernels up
            t = time.perf_counter()
            step_products(w, x, down_in)
            best = min(best, time.perf_counter() - t)
    return rows / best


def prompts(n: int, shots: int, kind: str = "fewshot", tokenizer=None) -> tuple[dict[str, str], tuple[str, ...]]:
    """fewshot: the first `shots` GSM8K train rows as "Question: ...\nAnswer: <raw answer>" exemplars (the Monkeys
    paper's prompt format, conf/prompt/gsm8k_fewshot.yaml), then each of the first n test questions.
    chat_boxed: the first n test questions in the prompt of the default `python -m replications.monkeys` run."""
    if kind == "chat_boxed":
        spec = load_prompt("chat_boxed")
        test = load_split("gsm8k", "test").problems[:n]
        return {p.id: render(spec, p, tokenizer) for p in test}, tuple(spec.stop)
    spec = load_prompt("gsm8k_fewshot")
    train = load_split("gsm8k", "train").problems[:shots]
    head = "".join(fill(spec.full_exemplar_template, p.metadata | {"question": p.question}) + spec.separator for p in train)
    test = load_split("gsm8k", "test").problems[:n]
    return {p.id: head + fill(spec.template, {"question": p.question}) for p in test}, tuple(spec.stop)


# ---- methods ---------------------------------------------------------------------------------------


def run_plain(lm, texts, params, samples, batch, threads):
    """transformers generate(do_sample=True, num_return_sequences): every sample re-runs the prefill."""
    torch.set_num_threads(threads)
    eos = eos_token_ids(lm)
    tokens = count = 0
    with Timer() as t, torch.inference_mode():
        for key, text in texts.items():
            ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            done = 0
            while done < samples:
                k = min(batch, samples - done)
                out = lm.model.generate(
                    ids, do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0,
                    max_new_tokens=params.max_new_tokens, num_return_sequences=k, pad_token_id=lm.tokenizer.pad_token_id,
                    **({"stop_strings": list(params.stop), "tokenizer": lm.tokenizer} if params.stop else {}),
                )
                for row in out[:, ids.shape[1] :].tolist():
                    tokens += finish_completion(lm.tokenizer, key, 0, row, 0, eos, params).num_tokens
                count += k
                done += k
    return {"tokens": tokens, "samples": count, "wall": t.wall, "cpu": t.cpu}


def run_fast(lm, texts, params, samples, batch, threads, matmul_dtype="float32", kernel="auto"):
    FULL_SORTS[0] = 0
    sampler = FastHFSampler(lm, batch_size=batch, num_threads=threads, matmul_dtype=matmul_dtype, matmul_kernel=kernel)
    reqs = [SampleRequest(k, v, tuple(range(samples))) for k, v in texts.items()]
    with Timer() as t:
        out = list(sampler.sample(reqs, params))
    res = {"tokens": sum(c.num_tokens for c in out), "samples": len(out), "wall": t.wall, "cpu": t.cpu}
    res["stats"] = sampler.stats.as_dict()
    res["mean_len"] = res["tokens"] / max(1, len(out))
    res["reasons"] = {r: sum(c.finish_reason == r for c in out) for r in ("stop", "eos", "length")}
    res["full_sorts"] = FULL_SORTS[0]
    return res


def run_paired_blocks(lm, texts, params, samples, batch, threads, blocks: list[int]) -> dict[int, dict]:
    """One run of the fast sampler whose attention block (fast.ATTENTION_BLOCK) changes every decode step,
    cycling through `blocks`: each setting is timed on steps that interleave with the others', so a slow spell of
    the host or a part-empty tail falls on all of them alike. Rate = live rows decoded per second of steps."""
    default = fast.ATTENTION_BLOCK
    step = _Run._step
    spent = {b: {"rows": 0, "seconds": 0.0, "steps": 0} for b in blocks}
    order = itertools.cycle(blocks)

    def paired_step(run, live):
        block = fast.ATTENTION_BLOCK = next(order)
        start = time.perf_counter()
        logits = step(run, live)
        spent[block]["seconds"] += time.perf_counter() - start
        spent[block]["rows"] += len(live)
        spent[block]["steps"] += 1
        return logits

    _Run._step = paired_step
    try:
        run_fast(lm, texts, params, samples, batch, threads)
    finally:
        _Run._step, fast.ATTENTION_BLOCK = step, default
    return spent


def run_contention(lm, texts, params, samples, batch, seconds) -> list[tuple[str, dict]]:
    """The fast sampler alone, then beside one CPU-bound process (a busy loop), on the same workload:
    with the thread count left to `CoreShare` (num_threads null) and pinned to every core (the old
    default, whose OpenMP threads stall at each barrier behind the competitor). A row that runs past
    `seconds` is stopped and rated on the samples it finished (the ones in flight are not counted)."""
    import subprocess

    cores = len(os.sched_getaffinity(0))
    out = []
    for label, threads, rival in [
        ("alone, num_threads=null", None, False),
        ("beside 1 CPU-bound process, num_threads=null", None, True),
        (f"beside 1 CPU-bound process, num_threads={cores}", cores, True),
    ]:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if rival else None
        try:
            FULL_SORTS[0] = 0
            sampler = FastHFSampler(lm, batch_size=batch, num_threads=threads)
            reqs = [SampleRequest(k, v, tuple(range(samples))) for k, v in texts.items()]
            done = []
            with Timer() as t:
                for c in sampler.sample(reqs, params):
                    done.append(c)
                    if time.perf_counter() - t.wall > seconds:
                        break
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        res = {"tokens": sum(c.num_tokens for c in done), "samples": len(done), "wall": t.wall, "cpu": t.cpu,
               "stopped": len(done) < samples * len(texts),
               "threads": [n for _, n in sampler.cores.changes] or [sampler.cores.threads]}
        out.append((label, res))
        print(f"  contention, {label}: {rate_of(res):.1f} tok/s, threads {res['threads']}"
              f"{' (stopped at the time limit)' if res['stopped'] else ''}", flush=True)
    return out


def run_llamacpp(lm, texts, params, samples, threads, gguf):
    from llama_cpp import Llama

    n_ctx = max(len(lm.tokenizer(t, add_special_tokens=False).input_ids) for t in texts.values()) + params.max_new_tokens + 64
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
    tokens = count = 0
    with Timer() as t:
        for key, text in texts.items():
            for i in range(samples):  # consecutive samples reuse the prompt's KV (llama-cpp-python prefix match)
                out = llm.create_completion(
                    text, max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                    top_k=0, min_p=0.0, repeat_penalty=1.0, stop=list(params.stop),
                    seed=sample_seed(params.seed, key, i) & 0x7FFFFFFF,
                )
                tokens += out["usage"]["completion_tokens"]
                count += 1
    return {"tokens": tokens, "samples": count, "wall": t.wall, "cpu": t.cpu}


def run_llamacpp_batched(lm, texts, params, samples, threads, gguf, parallel, kv_unified=True):
    """llama.cpp at its best on repeated sampling: `parallel` sequences decoded together in one `llama_decode`
    batch (llama-cpp-python's low-level API, as llama.cpp's own examples/batched and llama-server do). Each
    prompt is prefilled once into its own sequence, whose KV cells each new sample takes over by
    `llama_memory_seq_cp` (with `kv_unified` the cells are shared, not copied); a finished sequence frees its
    slot at once for the next (prompt, index), across prompts. The last prompt token is fed again in each
    sample's first step, which yields that sample's first logits (one extra token per sample). Sampling is
    llama.cpp's sampler chain per sample (temperature, then top-p, then a draw seeded with the suite's
    per-sample seed), so a sample does not depend on what shares its batch."""
    import ctypes
    from collections import deque

    import llama_cpp as lc

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load and context logs, unless errors
    prompt_ids = {key: lm.tokenizer(text, add_special_tokens=False).input_ids for key, text in texts.items()}
    prompt_seq = {key: n for n, key in enumerate(texts)}  # sequences 0..P-1 hold prompts, P.. the samples
    longest = max(map(len, prompt_ids.values()))
    per_sample = params.max_new_tokens + 2
    n_seq = len(texts) + parallel
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
    vocab = lc.llama_model_get_vocab(model)
    cp = lc.llama_context_default_params()
    # unified: one pool of cells, a prompt's cells shared by its samples; split: a stream per sequence, each
    # as large as the longest sequence, and a prompt's cells copied into each sample's stream
    cp.n_ctx = len(texts) * longest + parallel * per_sample + 64 if kv_unified else n_seq * (longest + per_sample)
    cp.n_batch = max(longest, parallel)
    cp.n_ubatch = min(cp.n_batch, 512)
    cp.n_seq_max = n_seq
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = kv_unified
    ctx = lc.llama_init_from_model(model, cp)
    if hasattr(lc, "llama_get_memory"):  # llama-cpp-python >= 0.3.10 (llama.cpp's memory API)
        mem = lc.llama_get_memory(ctx)
        seq_cp = lambda src, dst: lc.llama_memory_seq_cp(mem, src, dst, -1, -1)  # noqa: E731
        seq_rm = lambda seq: lc.llama_memory_seq_rm(mem, seq, -1, -1)  # noqa: E731
    else:
        seq_cp = lambda src, dst: lc.llama_kv_self_seq_cp(ctx, src, dst, -1, -1)  # noqa: E731
        seq_rm = lambda seq: lc.llama_kv_self_seq_rm(ctx, seq, -1, -1)  # noqa: E731
    batch = lc.llama_batch_init(cp.n_batch, 0, 1)
    eos = eos_token_ids(lm)
    piece = ctypes.create_string_buffer(256)
    tail_bytes = 4 * max((len(s) for s in params.stop), default=0) + 256  # holds a stop string and the last piece

    def decode(entries) -> None:
        for j, (token, pos, seq, want_logits) in enumerate(entries):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = token, pos, 1, want_logits
            batch.seq_id[j][0] = seq
        batch.n_tokens = len(entries)
        rc = lc.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} ({len(entries)} tokens, n_ctx {cp.n_ctx})")

    def start(slot: int, key: str, index: int) -> dict:
        ids = prompt_ids[key]
        if started[key] == 0 and len(ids) > 1:
            decode([(tok, pos, prompt_seq[key], False) for pos, tok in enumerate(ids[:-1])])
        started[key] += 1
        seq = len(texts) + slot
        seq_cp(prompt_seq[key], seq)
        if started[key] == samples:  # its cells live on in the samples that took them
            seq_rm(prompt_seq[key])
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(sample_seed(params.seed, key, index) & 0x7FFFFFFF))
        return {"key": key, "index": index, "seq": seq, "chain": chain, "next": ids[-1], "pos": len(ids) - 1,
                "gen": [], "text": b""}

    queue = deque((key, i) for key in texts for i in range(samples))
    started = defaultdict(int)
    slots: list[dict | None] = [None] * parallel
    done = []
    steps = rows = 0
    forward = 0.0  # seconds in llama_decode of the decode steps (prefills excluded); the rest is sampling and Python
    with Timer() as t:
        while queue or any(slots):
            for s in range(parallel):
                if slots[s] is None and queue:
                    slots[s] = start(s, *queue.popleft())
            live = [s for s in range(parallel) if slots[s] is not None]
            tick = time.perf_counter()
            decode([(slots[s]["next"], slots[s]["pos"], slots[s]["seq"], True) for s in live])
            forward += time.perf_counter() - tick
            steps, rows = steps + 1, rows + len(live)
            for j, s in enumerate(live):
                r = slots[s]
                token = lc.llama_sampler_sample(r["chain"], ctx, j)
                r["gen"].append(token)
                finished = lc.llama_vocab_is_eog(vocab, token) or len(r["gen"]) >= params.max_new_tokens
                if not finished and params.stop:
                    n = lc.llama_token_to_piece(vocab, token, piece, len(piece), 0, False)
                    r["text"] = (r["text"] + piece.raw[: max(n, 0)])[-tail_bytes:]
                    tail = r["text"].decode("utf-8", "ignore")
                    finished = any(stop in tail for stop in params.stop)
                if finished:
                    done.append(finish_completion(lm.tokenizer, r["key"], r["index"], r["gen"], 0, eos, params))
                    seq_rm(r["seq"])
                    lc.llama_sampler_free(r["chain"])
                    slots[s] = None
                else:
                    r["next"], r["pos"] = token, r["pos"] + 1
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    tokens = sum(c.num_tokens for c in done)
    return {"tokens": tokens, "samples": len(done), "wall": t.wall, "cpu": t.cpu, "mean_len": tokens / max(1, len(done)),
            "mean_rows": rows / max(1, steps), "forward": forward, "reasons": {r: sum(c.finish_reason == r for c in done) for r in ("stop", "eos", "length")}}


def best_llamacpp_parallel(lm, texts, params, threads, gguf, candidates, kv_modes, max_new_tokens) -> tuple[int, bool]:
    """The (parallel sequences, kv_unified) with the highest tok/s on a short run: the first prompt, as many
    samples as the largest candidate, at most `max_new_tokens` each. Prints every measurement."""
    from dataclasses import replace

    short = replace(params, max_new_tokens=min(params.max_new_tokens, max_new_tokens))
    first = dict(list(texts.items())[:1])
    best, choice = -1.0, (candidates[0], kv_modes[0])
    for unified in kv_modes:
        for parallel in candidates:
            res = run_llamacpp_batched(lm, first, short, max(candidates), threads, gguf, parallel, unified)
            print(f"  llama.cpp batched, {threads} thread(s), {parallel} parallel, kv {'unified' if unified else 'split'}: "
                  f"{rate_of(res):.1f} tok/s ({res['samples']} samples, <= {short.max_new_tokens} tokens; "
                  f"llama_decode {res['forward']:.1f} of {res['wall']:.1f} s)", flush=True)
            if rate_of(res) > best:
                best, choice = rate_of(res), (parallel, unified)
    return choice


def llamacpp_gguf(lm, quiet: bool = False) -> Path | None:
    """The GGUF file llama.cpp runs: the model's own source, when llama-cpp-python is installed and it is one."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if not quiet:
            print("  llama.cpp: llama-cpp-python is not installed (pip install llm-replications[llamacpp]); skipped")
        return None
    gguf = Path(lm.source)
    if gguf.suffix != ".gguf":
        if not quiet:
            print(f"  llama.cpp: model source {gguf} is not a GGUF file; skipped")
        return None
    return gguf


def step_fixture(lm, texts, params, batch, threads, t_mean, kernel="auto"):
    """A decode loop's state mid-run, for timing single steps: `batch` rows of the first prompt at generated lengths
    ~U(0, 2 t_mean), every row live. Call inside inference_mode. Returns (the run, its live rows)."""
    torch.set_num_threads(threads)
    s = FastHFSampler(lm, batch_size=batch, num_threads=threads, matmul_kernel=kernel)
    s._w = _Weights(lm.model, torch.float32, s.matmul_kernel, batch)
    key, text = next(iter(texts.items()))
    run = _Run(s, [SampleRequest(key, text, tuple(range(batch)))], params)
    run._fill(list(range(batch)))
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, max(1, 2 * t_mean), (batch,), generator=gen).clamp_(max=params.max_new_tokens - 2)
    t = t.sort(descending=True).values  # rows in order of age, as the sampler appends them (fast.ATTENTION_BLOCK)
    run.t[:batch] = t
    run.pos[:batch] += t
    return run, [i for i, r in enumerate(run.rows) if r is not None]


def profile_step(lm, texts, params, batch, threads, t_mean, kernel="auto"):
    """One decode step with `batch` rows of one prompt at generated length ~t_mean: op-level split."""
    from torch.profiler import profile

    with torch.inference_mode():
        run, live = step_fixture(lm, texts, params, batch, threads, t_mean, kernel)
        n = live[-1] + 1
        run._step(live)
        steps = 4
        with profile() as prof:
            for _ in range(steps):
                logits = run._step(live)
                run._choose(logits, [run.rows[i]["gen"] for i in live])
        start = time.perf_counter()  # the same steps unprofiled: the profiler's own cost is not a step's
        for _ in range(steps):
            logits = run._step(live)
            run._choose(logits, [run.rows[i]["gen"] for i in live])
        step_ms = 1e3 * (time.perf_counter() - start) / steps
    groups = defaultdict(float)
    kind = {
        "aten::mm": "matmul (linear layers + lm_head)",
        "aten::addmm": "matmul (linear layers + lm_head)",
        "mkldnn::_linear_pointwise": "matmul (linear layers + lm_head)",
        # one flash call per layer over the shared prompt, one over each row's own keys (prompt copied in or generated)
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (flash: shared prompt, and each row's own keys)",
        "aten::index_select": "attention (rows' own keys: gathering the rows that reach a chunk)",
        "aten::sigmoid": "attention (merging the prompt's and the row's parts)",
        "aten::logaddexp": "attention (merging the prompt's and the row's parts)",
        "aten::topk": "sampling (top-k/top-p/draw)",
        "aten::sort": "sampling (top-k/top-p/draw)",
    }
    total = 0.0
    ops = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        if e.key.startswith(("aten::", "mkldnn::")) and e.self_cpu_time_total > 0:
            groups[kind.get(e.key, "other tensor ops")] += e.self_cpu_time_total
            total += e.self_cpu_time_total
            ops[e.key][0] += e.self_cpu_time_total
            ops[e.key][1] += e.count
    shares = {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    # each op's time and calls per step, spread over the unprofiled step time by its share of the profiled op time
    top = sorted(ops.items(), key=lambda kv: -kv[1][0])[:12]
    per_op = [(k.split("::", 1)[1], step_ms * t / total, calls / steps) for k, (t, calls) in top]
    return {"step_ms": step_ms, "rows": n, "shares": shares, "ops": per_op,
            "calls_per_step": sum(c for _, c in ops.values()) / steps}


def step_split(lm, texts, params, batch, threads, t_mean, kernel="auto", reps=4):
    """Where a decode step's time goes, without a profiler's overhead: the same step (`batch` rows of one prompt,
    generated lengths ~U(0, 2 t_mean)) in full, with both attention calls replaced by zeros, and its products alone,
    interleaved `reps` times so that the host's load falls on all three alike; the best of each, in ms."""
    zeros = lambda q, *rest: (torch.zeros_like(q), torch.zeros(q.shape[:-1]))  # noqa: E731
    attention = (fast._masked_attention, fast._prompt_attention)
    best = {}
    with torch.inference_mode():
        run, live = step_fixture(lm, texts, params, batch, threads, t_mean, kernel)
        w = run.w
        x, down_in = torch.randn(batch, w.embed.shape[1]), torch.randn(batch, w.layers[0][5].shape[1])

        variants = {"full step": lambda: run._step(live), "attention replaced by zeros": lambda: run._step(live),
                    "products alone": lambda: step_products(w, x, down_in)}
        try:
            for _ in range(reps):
                for name, fn in variants.items():
                    fast._masked_attention, fast._prompt_attention = (zeros, zeros) if "zeros" in name else attention
                    fn()  # warm
                    start = time.perf_counter()
                    fn()
                    best[name] = min(best.get(name, float("inf")), 1e3 * (time.perf_counter() - start))
        finally:
            fast._masked_attention, fast._prompt_attention = attention
    return best


# ---- report ----------------------------------------------------------------------------------------


def main() -> None:
    args = parse()
    skip = set(filter(None, args.skip.split(",")))
    threads = [int(x) for x in args.threads.split(",")]
    requested = args.kernels.split(",")

    def runnable(dtype: torch.dtype) -> list[str]:  # oneDNN only where it packs `dtype` (AVX2: float32, not bf16)
        return [k for k in requested if k != "onednn" or onednn_available(dtype)]

    kernels = runnable(torch.float32)
    default_kernel = resolve_matmul_kernel("auto")
    default_block = fast.ATTENTION_BLOCK
    blocks = [int(b) for b in args.attention_blocks.split(",") if b] or [default_block]
    print(f"# sampling benchmark {time.strftime('%Y-%m-%d %H:%M')}\nmachine: {machine()}\nload average at start: {load():.2f}")
    lm = load_model(OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml"))
    texts, stop = prompts(args.num_prompts, args.shots, args.prompt, lm.tokenizer)
    plens = [len(lm.tokenizer(t, add_special_tokens=False).input_ids) for t in texts.values()]
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, stop=stop, seed=0)
    print(f"model: {lm.identity} ({lm.num_parameters / 1e6:.1f} M parameters, {2 * lm.num_parameters / 1e9:.3f} GFLOP/token)")
    print(f"prompts: {len(texts)} GSM8K test problems, {args.shots if args.prompt == 'fewshot' else 0}-shot {args.prompt}, {min(plens)}-{max(plens)} tokens; "
          f"temperature {params.temperature}, top_p {params.top_p}, max_new_tokens {params.max_new_tokens}, stop {list(stop)}")

    few = dict(list(texts.items())[: args.plain_prompts])
    rows = []
    for th in threads:
        gf = ceiling_gflops(th)
        rows.append(("fp32 matmul ceiling", th, {"rate": gf / (2 * lm.num_parameters / 1e9), "note": f"{gf:.0f} GFLOP/s (2048^2)"}))
        for dtype in (torch.float32,) + ((torch.bfloat16,) if "bf16" not in skip else ()):
            for kernel in runnable(dtype):
                rate = step_matmul_rate(lm, args.batch_size, th, dtype=dtype, kernel=kernel)
                rows.append((f"decode-step matmuls alone (the model's shapes, {args.batch_size} rows, {dtype_name(dtype)}, {kernel})",
                             th, {"rate": rate, "note": "what a decode step without attention could do",
                                  "dtype": dtype_name(dtype), "kernel": kernel}))
    for th in threads:
        if "plain" not in skip:
            res = run_plain(lm, few, params, args.plain_samples, args.plain_batch, th)
            rows.append((f"plain generate (num_return_sequences={args.plain_batch})", th, res))
            print(f"  plain generate, {th} thread(s): {res['tokens'] / res['wall']:.1f} tok/s", flush=True)
        for kernel in kernels:
            for block in blocks:
                fast.ATTENTION_BLOCK = block
                default = " (the default)" if kernel == default_kernel and block == default_block else ""
                named = f", attention block {block}" if len(blocks) > 1 else ""
                if "fast" not in skip:
                    res = run_fast(lm, texts, params, args.samples, args.batch_size, th, kernel=kernel)
                    rows.append((f"fast hf sampler (batch {args.batch_size}, matmul_kernel {kernel}{named}{default})", th, res))
                    print(f"  fast sampler, {kernel}{named}, {th} thread(s): {res['tokens'] / res['wall']:.1f} tok/s", flush=True)
            fast.ATTENTION_BLOCK = default_block
            if "bf16" not in skip and kernel in runnable(torch.bfloat16):
                res = run_fast(lm, texts, params, args.samples, args.batch_size, th, "bfloat16", kernel)
                rows.append((f"fast hf sampler, matmul_dtype=bfloat16 (opt-in; not fp32 numerics), matmul_kernel {kernel}", th, res))
                print(f"  fast sampler bf16 matmuls, {kernel}, {th} thread(s): {res['tokens'] / res['wall']:.1f} tok/s", flush=True)
        gguf = llamacpp_gguf(lm, quiet=th != threads[0]) if {"llamacpp", "llamacpp_batched"} - skip else None
        if gguf is not None and "llamacpp" not in skip:
            res = run_llamacpp(lm, few, params, args.llamacpp_samples, th, gguf)
            rows.append((f"llama.cpp ({gguf.name}, sequential, prefix reuse)", th, res))
            print(f"  llama.cpp, {th} thread(s): {res['tokens'] / res['wall']:.1f} tok/s", flush=True)
        if gguf is not None and "llamacpp_batched" not in skip:
            candidates = [int(x) for x in args.llamacpp_parallel.split(",")]
            kv_modes = [{"unified": True, "split": False}[x] for x in args.llamacpp_kv.split(",")]
            parallel, unified = best_llamacpp_parallel(lm, texts, params, th, gguf, candidates, kv_modes, args.llamacpp_probe_tokens)
            res = run_llamacpp_batched(lm, texts, params, args.samples, th, gguf, parallel, unified)
            rows.append((f"llama.cpp batched ({gguf.name}, {parallel} parallel sequences, kv {'unified' if unified else 'split'}, "
                         f"mean {res['mean_rows']:.0f} live)", th, res))
            print(f"  llama.cpp batched, {th} thread(s), {parallel} parallel: {rate_of(res):.1f} tok/s, mean {res['mean_len']:.0f} "
                  f"tokens, finish {res['reasons']}; llama_decode {res['forward']:.1f} s of {res['wall']:.1f} s "
                  f"(the rest: prefills, llama.cpp's per-sequence sampler chains over the full vocabulary, Python)", flush=True)

    if args.paired_blocks:
        paired = [int(b) for b in args.paired_blocks.split(",")]
        spent = run_paired_blocks(lm, texts, params, args.samples, args.batch_size, threads[0], paired)
        first = spent[paired[0]]["rows"] / spent[paired[0]]["seconds"]
        print(f"\nattention blocks paired in one fp32 run (the block changes every decode step), {threads[0]} thread(s):")
        for block, took in spent.items():
            rate = took["rows"] / took["seconds"]
            print(f"  block {block}: {took['steps']} steps, {took['rows']} row-steps, {rate:.1f} row-steps/s "
                  f"({100 * (rate / first - 1):+.1f}% against block {paired[0]})")

    contention = []
    if "contention" not in skip:
        contention = run_contention(lm, texts, params, args.contention_samples, args.batch_size, args.contention_seconds)

    base = {th: r["tokens"] / r["wall"] for name, th, r in rows if name.startswith("plain") and r.get("tokens")}
    fast_rate = {th: rate_of(r) for name, th, r in rows if name.startswith("fast hf sampler (") and "default" in name and r.get("tokens")}
    ceil = {th: r["rate"] for name, th, r in rows if name.startswith("fp32")}
    # the machine's decode-step matmul rate in a dtype: its fastest kernel's
    step_rate = defaultdict(float)
    for name, th, r in rows:
        if name.startswith("decode-step matmuls"):
            step_rate[th, r["dtype"]] = max(step_rate[th, r["dtype"]], r["rate"])
    print(f"\nload average at end: {load():.2f}\n")
    print("| method | threads | samples | tokens | wall s | tok/s | samples/s | tok/s per CPU-s | x plain | x fast | % of ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, th, r in rows:
        if "rate" in r:
            share = 100 * r["rate"] / ceil[th]
            print(f"| {name} | {th} | | | | {r['rate']:.0f} | | | | | {share:.0f}% ({r['note']}) |")
            continue
        rate = r["tokens"] / r["wall"]
        x = f"{rate / base[th]:.2f}" if th in base else "-"
        xf = f"{rate / fast_rate[th]:.2f}" if th in fast_rate else "-"
        print(f"| {name} | {th} | {r['samples']} | {r['tokens']} | {r['wall']:.1f} | {rate:.1f} | {r['samples'] / r['wall']:.2f} "
              f"| {r['tokens'] / max(r['cpu'], 1e-9):.1f} | {x} | {xf} | {100 * rate / ceil[th]:.0f}% |")

    if contention:
        alone = rate_of(contention[0][1])
        print(f"\nfast sampler beside a competing CPU-bound process ({len(texts)} prompts x {args.contention_samples} samples, "
              f"batch {args.batch_size}; the machine's other users are not controlled)")
        print("| fast sampler | threads used | samples | tokens | wall s | tok/s | x alone |")
        print("|---|---|---|---|---|---|---|")
        for label, r in contention:
            print(f"| {label} | {r['threads']} | {r['samples']} | {r['tokens']} | {r['wall']:.1f} | {rate_of(r):.1f} "
                  f"| {rate_of(r) / alone:.2f} |")

    for name, th, r in rows:
        if "stats" not in r:
            continue
        st = r["stats"]
        known = st["prefill"] + st["forward"] + st["sampling"] + st["bookkeeping"]
        flops = st["row_steps"] * 2 * lm.num_parameters / 1e9
        print(f"\n{name}, {th} thread(s): {r['samples']} samples, mean {r['mean_len']:.0f} tokens, finish {r['reasons']}, "
              f"{r['full_sorts']} full-vocabulary sorts")
        print(f"  wall {r['wall']:.1f} s = prefill {st['prefill']:.1f} ({st['prompt_tokens']} prompt tokens) + decode forward "
              f"{st['forward']:.1f} ({st['steps']} steps, mean {st['row_steps'] / max(1, st['steps']):.0f} rows) + sampling "
              f"{st['sampling']:.1f} + stop checks/refill {st['bookkeeping']:.1f} + other Python {r['wall'] - known:.1f}")
        print(f"  rows moved to the front of the cache {st['compactions']} times ({st['compaction']:.1f} s, within the above)")
        print(f"  decode forward: {flops / max(st['forward'], 1e-9):.0f} GFLOP/s of 2 x params per token "
              f"(ceiling {ceil[th] * 2 * lm.num_parameters / 1e9:.0f})")
        # The ceiling above counts 2 x params per token; attention adds 4 x layers x (heads x head_dim) x context
        # FLOPs per token (scores and weighted values), which an 8-shot prompt of ~1.3k tokens makes ~35% more work.
        cfg = lm.model.config
        ctx = st["prompt_tokens"] / len(texts) + r["mean_len"] / 2
        attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads) * ctx
        with_attn = ceil[th] * 2 * lm.num_parameters / (2 * lm.num_parameters + attn)
        print(f"  with attention over the mean context ({ctx:.0f} tokens: +{100 * attn / (2 * lm.num_parameters):.0f}% FLOPs "
              f"per token) the ceiling is {with_attn:.0f} tok/s; this run: {100 * rate_of(r) / with_attn:.0f}% of it")
        if st["full_row_steps"]:
            full = st["full_row_steps"] / st["full_steps_time"]
            dtype = "bfloat16" if "bfloat16" in name else "float32"
            matmul = step_rate.get((th, dtype))
            versus = f" = {100 * full / matmul:.0f}% of the decode-step matmul rate in {dtype} ({matmul:.0f}, fastest kernel)" if matmul else ""
            print(f"  steady state (steps with the batch >= 90% full, {st['full_row_steps']} tokens): {full:.0f} tok/s "
                  f"= {100 * full / ceil[th]:.0f}% of ceiling{versus}; the rest is prefill and the tail of long samples "
                  f"decoding in a part-empty batch once the queue is empty")
    if "profile" not in skip:
        fast_rows = [r for name, th, r in rows if "stats" in r]
        t_mean = int(fast_rows[0]["mean_len"] / 2) if fast_rows else 60
        for th, kernel in [(threads[0], k) for k in kernels]:
            split = profile_step(lm, texts, params, args.batch_size, th, t_mean, kernel)
            print(f"\none decode step, matmul_kernel {kernel} (token choice included), {split['rows']} rows of one prompt, generated length "
                  f"~U(0, {2 * t_mean}), {th} thread(s): {split['step_ms']:.1f} ms a step ({split['rows'] / split['step_ms'] * 1e3:.0f} "
                  f"tok/s), {split['calls_per_step']:.0f} aten calls a step")
            for k, v in split["shares"].items():
                print(f"  {k}: {100 * v:.0f}% ({v * split['step_ms']:.1f} ms)")
            print("  top ops: " + "; ".join(f"{k} {ms:.1f} ms / {calls:.0f} calls" for k, ms, calls in split["ops"]))
    if "split" not in skip:
        fast_rows = [r for name, th, r in rows if "stats" in r]
        t_mean = int(fast_rows[0]["mean_len"] / 2) if fast_rows else 60
        for kernel, block in [(k, b) for k in kernels for b in blocks]:
            fast.ATTENTION_BLOCK = block
            ms = step_split(lm, texts, params, args.batch_size, threads[0], t_mean, kernel)
            fast.ATTENTION_BLOCK = default_block
            full, bare, products = ms["full step"], ms["attention replaced by zeros"], ms["products alone"]
            print(f"\none decode step split by subtraction, matmul_kernel {kernel}, attention block {block}, {args.batch_size} rows, generated length "
                  f"~U(0, {2 * t_mean}), {threads[0]} thread(s), best of 4 interleaved: full {full:.0f} ms, attention "
                  f"{full - bare:.0f} ms ({100 * (full - bare) / full:.0f}%), products {products:.0f} ms ({100 * products / full:.0f}%), "
                  f"the rest {bare - products:.0f} ms; the products alone cap the steady state at {100 * products / full:.0f}% "
                  "of the decode-step matmul rate")


if __name__ == "__main__":
    main()
