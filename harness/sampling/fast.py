"""The default CPU backend ("hf"): repeated sampling near the speed of the model's matrix products.

What makes it fast, compared with `generate(num_return_sequences=n)`:
- each prompt is prefilled once (transformers' own forward); its keys/values are shared, never copied,
  by the n samples drawn from it: attention over the shared prefix is one matrix product for all the
  rows of that prompt (queries of n samples x prefix keys), not n memory-bound vector products; a prompt
  with one or two samples (greedy evaluation) is instead copied into its rows' caches, so that many such
  prompts share one batched attention rather than one call each, and are prefilled in batches;
- a prompt that starts with the previous prompt's tokens (a judge rubric, a few-shot block) prefills only
  what follows them;
- continuous batching: a sequence that ends (EOS, stop string, max tokens) leaves the batch at once and
  the next pending (key, index) starts in its place, across samples and prompts, so no row pads to max tokens;
  new rows are appended after the live ones, so rows stay in order of age, and attention over the rows' own
  keys runs in blocks of rows of similar length, each reading keys only up to its longest row;
- the nucleus is found among the top-64 candidates (a full-vocabulary sort only for the rare rows
  where those are not enough), instead of sorting 49k logits per row per step;
- the products use weights packed once in oneDNN's blocked layout (`matmul_kernel: auto`), ~1.4x the
  decode step's F.linear in float32 (bench/README.md).

The decode step is written by hand over the Llama weights of the transformers model because the
shared-prefix attention (prompt keys stored once per prompt, generated keys per row, one softmax over
both) has no equivalent in transformers' caches or attention functions. Prefill, by contrast, is
transformers' own forward, so the prompt's keys/values are exactly generate's.

Sampling semantics are transformers' (temperature, then top-k, then top-p; greedy at temperature 0)
and each draw uses `draw_rows` from the reference backend with the sample's own generator, so the
same (seed, key, index) gives the same text as `hf_generate`, whatever else shares the batch
(up to floating-point rounding of the logits in a different batch shape).
"""
from __future__ import annotations

import copy
import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from harness.errors import ConfigError
from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams, dtype_name, rng_numerics
from harness.sampling.threads import CoreShare
from harness.sampling.hf import (
    HFGenerateSampler,
    draw_rows,
    encode_prompt,
    eos_token_ids,
    finish_completion,
    row_generator,
)

# Generated-key slots per attention chunk (see _Run._step): a chunk involves only the rows that reach it. 256 covers a
# whole chat sample in one flash-attention call per layer; shorter chunks made many more small ops (one layer of 128
# rows at ~255 generated keys, 2 threads: 64-slot chunks of matmul/softmax/merge 10-12 ms, one flash call 4-6 ms)
GEN_CHUNK = 256
INITIAL_CAPACITY = 128  # generated-key slots allocated per row before the cache grows
# Rows per attention call over the rows' own keys: a block reads keys only up to its longest row. New rows are appended
# after the others (never put in a freed row's place), so the rows stay in order of age and a block's rows have
# similar lengths. One layer, 128 rows at lengths ~U(0, 256), 2 threads, AMD EPYC: one call 6.6 ms, 4 blocks of 32
# 3.1 ms, 8 blocks of 16 2.7 ms (bench/README.md, 2026-12-02 evening)
ATTENTION_BLOCK = 16
# Cache rows beyond batch_size, so that rows can be appended while finished rows leave gaps; when the end is reached the
# live rows are moved to the front (in order). More spare rows: fewer of those moves, more memory.
SPARE_ROWS_FRACTION = 0.25
# A prompt with at most this many samples is copied into its rows' own caches instead of being shared:
# shared-prompt attention costs one kernel call per prompt per layer per step, which dominates when
# many prompts have one sample each (greedy evaluation: ~15 s a step with 128 prompts, measured).
INLINE_MAX_SAMPLES = 2
# A prompt that begins with at least this many tokens of the previous prompt prefills only the rest (vLLM's
# automatic prefix caching, for the common case of consecutive prompts sharing a preamble: a judge rubric, a
# few-shot block). One prompt is remembered; requests come in order, so that is where the shared prefixes are.
MIN_REUSED_PREFIX = 16
# Prompts prefilled together in one padded forward when their rows hold them in their own caches (greedy
# evaluation of many short prompts); 8 to 32 prefilled at the same speed (bench of the ladder prompts).
PREFILL_BATCH = 16
NUCLEUS_CANDIDATES = 64  # top candidates examined per row before falling back to a full sort
FULL_SORTS = [0]  # rows that needed the full-vocabulary sort (reported by bench/sampling.py)
SUPPORTED = ("llama",)
MATMUL_DTYPES = ("float32", "bfloat16", "auto")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot products in hardware
# `auto` picks bf16 only when it is clearly faster: it gives up fp32 numerics, which a few percent do not pay for
AUTO_BF16_MIN_SPEEDUP = 1.15
# transformers 5.2x renamed forward's `past_key_values` to `cache` (the old name warns until 5.40)
_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def supports(model: Any) -> str | None:
    """None when the hand-written decode step can run this model, else why not."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        return f"model_type '{getattr(cfg, 'model_type', None)}' (the fast decode step covers {', '.join(SUPPORTED)})"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "biased attention/MLP projections"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act '{cfg.hidden_act}'"
    return None


MATMUL_KERNELS = ("auto", "onednn", "blas")
_ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


@lru_cache(maxsize=None)
def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build, on this CPU, can multiply by a oneDNN-packed weight in `dtype` (and gets the
    right product doing so). bf16 packing needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT: an AVX2-only CPU has oneDNN
    for float32 but not for bfloat16."""
    if _ONEDNN_PACK is None or _ONEDNN_LINEAR is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.inference_mode():
            x, w = torch.randn(3, 8).to(dtype), torch.randn(5, 8).to(dtype)
            y = _ONEDNN_LINEAR(x, _ONEDNN_PACK(w, 3), None, "none", [], "")
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        return bool(torch.allclose(y.float(), F.linear(x.float(), w.float()), rtol=tolerance, atol=tolerance))
    except (RuntimeError, TypeError):
        return False


def resolve_matmul_kernel(value: str, dtype: torch.dtype = torch.float32) -> str:
    """`backend.matmul_kernel` as the decode step will use it for products in `dtype`: `auto` is onednn wherever
    this torch and CPU can pack `dtype` weights for it, else blas."""
    if value not in MATMUL_KERNELS:
        raise ConfigError(f"backend.matmul_kernel: '{value}' is not one of {', '.join(MATMUL_KERNELS)}")
    if value == "auto":
        return "onednn" if onednn_available(dtype) else "blas"
    if value == "onednn" and not onednn_available(dtype):
        raise ConfigError(f"backend.matmul_kernel: 'onednn' but this torch build or CPU has no oneDNN linear for "
                          f"{dtype_name(dtype)} products (use auto or blas)")
    return value


class _Product:
    """x @ W^T for one weight matrix, in `dtype`, through the chosen kernel; x and the result are float32.

    `onednn` keeps W pre-packed in oneDNN's blocked layout (what torch.compile's CPU freezing pass does for a
    linear layer; here without compiling anything). At this model's decode shapes it is ~1.4x (layers) to ~2x
    (lm_head) faster than F.linear's BLAS call in float32, and ~1.1-1.2x in bf16 (bench/README.md, 2026-12-02). Both are
    float32 arithmetic: their products differ in the last bits only (summation order), as BLAS's do between CPUs.
    """

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, kernel: str, rows: int):
        self.shape = tuple(weight.shape)
        self.dtype = dtype
        matrix = weight.detach().to(dtype).contiguous()
        self.packed = _ONEDNN_PACK(matrix, rows) if kernel == "onednn" else None
        self.matrix = None if self.packed is not None else matrix

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.packed is not None:
            y = _ONEDNN_LINEAR(x.contiguous(), self.packed, None, "none", [], "")
        else:
            y = F.linear(x, self.matrix)
        return y if self.dtype == torch.float32 else y.float()


class _Weights:
    """The Llama weights in the layout the decode step wants (q/k/v and gate/up fused into one product each)."""

    def __init__(self, model: Any, matmul_dtype: torch.dtype = torch.float32, kernel: str = "blas", rows: int = 128):
        cfg = model.config
        inner = model.model
        self.num_heads = cfg.num_attention_heads
        self.num_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        # Activations, norms and caches are float32 whatever the model's dtype (a bfloat16 model is
        # upcast, not decoded in bf16); only the matrix products take `matmul_dtype`.
        vector = lambda t: t.detach().float()  # noqa: E731
        matrix = lambda t: _Product(t, matmul_dtype, kernel, rows)  # noqa: E731
        self.embed = vector(inner.embed_tokens.weight)
        self.lm_head = matrix(model.lm_head.weight)
        self.final_norm = vector(inner.norm.weight)
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    vector(layer.input_layernorm.weight),
                    matrix(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                    matrix(a.o_proj.weight),
                    vector(layer.post_attention_layernorm.weight),
                    matrix(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                    matrix(m.down_proj.weight),
                )
            )
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 4096))
        positions = torch.arange(self.max_positions)[None]
        with torch.no_grad():
            cos, sin = inner.rotary_emb(self.embed[:1], positions)
        self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # The same operations, in the same order, as transformers' LlamaRMSNorm.
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@dataclass
class _Group:
    """One prompt: its shared prefill and the sample indices still to start."""

    request: SampleRequest
    length: int
    keys: list[torch.Tensor]  # per layer [1, kv_heads, length, head_dim] (after RoPE)
    values: list[torch.Tensor]
    logits: torch.Tensor  # [vocab] at the last prompt position
    pending: deque
    live: int = 0
    inline: bool = False  # its rows hold the prompt's keys in their own cache (INLINE_MAX_SAMPLES)


@dataclass
class Stats:
    """Where the time goes (seconds), for bench/sampling.py's breakdown."""

    prefill: float = 0.0
    forward: float = 0.0
    sampling: float = 0.0
    bookkeeping: float = 0.0  # stop/EOS checks, refilling rows, completions
    steps: int = 0
    row_steps: int = 0  # sum over steps of the live rows (tokens generated by the decode loop)
    full_row_steps: int = 0  # the same, over steps with the batch at least 90% full ...
    full_steps_time: float = 0.0  # ... and their forward + sampling time (steady-state rate)
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0  # of which taken from the previous prompt's cache (MIN_REUSED_PREFIX)
    batched_prompts: int = 0  # prompts prefilled together with others (PREFILL_BATCH)
    compactions: int = 0  # times the live rows were moved to the front of the cache (SPARE_ROWS_FRACTION) ...
    compaction: float = 0.0  # ... and the seconds it took (within bookkeeping and the loop's other time)
    generated_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is no such file (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=None)
def bf16_speedup(hidden: int, intermediate: int, threads: int, rows: int = 128, reps: int = 5,
                 kernel: str = "blas") -> float:
    """fp32 time / bf16 time of one layer's decode-shaped products (fused q/k/v-sized, o, fused gate/up,
    down; `rows` sequences) through the decode step's own `_Product` and `kernel`, bf16 including its casts.
    Best of `reps`, fp32 and bf16 interleaved so that a shared machine's load falls on both alike; a fraction of
    a second, once per process."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, 2 * intermediate), (intermediate, hidden)]
    inputs = [torch.randn(rows, k, generator=gen) for k, _ in shapes]
    weights = [torch.randn(n, k, generator=gen) for k, n in shapes]
    products = {dtype: [_Product(w, dtype, kernel, rows) for w in weights] for dtype in (torch.float32, torch.bfloat16)}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    try:
        with torch.inference_mode():
            for rep in range(reps + 1):  # the first round warms the kernels up and is not counted
                for dtype, ps in products.items():
                    start = time.perf_counter()
                    for x, product in zip(inputs, ps):
                        product(x)
                    elapsed = time.perf_counter() - start
                    if rep:
                        best[dtype] = min(best[dtype], elapsed)
    finally:
        torch.set_num_threads(previous)
    return best[torch.float32] / best[torch.bfloat16]


def resolve_matmul_dtype(value: str, config: Any, kernel: str = "blas") -> str:
    """`backend.matmul_dtype` as the decode step will use it: float32 or bfloat16 as given; `auto` is bfloat16
    only on a CPU with native bf16 where bf16 products measure >= AUTO_BF16_MIN_SPEEDUP faster at this model's
    shapes (a bf16 emulated in software, or one the memory bandwidth does not reward, stays float32)."""
    if value not in MATMUL_DTYPES:
        raise ConfigError(f"backend.matmul_dtype: '{value}' is not one of {', '.join(MATMUL_DTYPES)}")
    if value != "auto":
        return value
    if not set(NATIVE_BF16_FLAGS) & cpu_flags():
        return "float32"
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    fast = bf16_speedup(hidden, intermediate, torch.get_num_threads(), kernel=kernel) >= AUTO_BF16_MIN_SPEEDUP
    return "bfloat16" if fast else "float32"


class FastHFSampler(Sampler):
    name = "hf"

    def __init__(
        self,
        loaded_model: Any,
        batch_size: int = 64,
        num_threads: int | None = None,
        max_batch_tokens: int = 2048,
        matmul_dtype: str = "float32",
        rng: str = "generator",
        matmul_kernel: str = "auto",
    ):
        self.loaded = loaded_model
        self.rng = rng  # each sample's random stream (harness/sampling/counter_rng.py)
        self.model = loaded_model.model
        self.unsupported = supports(self.model)
        # `auto` is settled here, not per run: the store keys samples on `numerics`, which must name what ran
        if self.unsupported and matmul_dtype == "auto":
            matmul_dtype = "float32"  # unused: the fallback multiplies in the model's own dtype
        # oneDNN or BLAS products are the same float32 arithmetic up to summation order, like BLAS on two CPUs:
        # the kernel is named in reports (`kernels`) but is not part of the samples' key (`numerics`)
        # `auto` bf16 is measured only on CPUs with native bf16, where oneDNN packs bf16 too: the float32 kernel
        # serves the measurement, and the kernel is then settled for the dtype that won
        self.matmul_dtype = getattr(torch, resolve_matmul_dtype(matmul_dtype, self.model.config, resolve_matmul_kernel(matmul_kernel)))
        self.matmul_kernel = resolve_matmul_kernel(matmul_kernel, self.matmul_dtype)
        self.tokenizer = loaded_model.tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = max(16, int(max_batch_tokens))
        self.eos_ids = eos_token_ids(loaded_model)
        self.cores = CoreShare(num_threads)  # null: one thread per free core, re-checked as the run goes
        self._fallback = (
            HFGenerateSampler(loaded_model, batch_size=min(self.batch_size, 16), num_threads=num_threads, rng=rng)
            if self.unsupported else None
        )
        self._w: _Weights | None = None
        self._last_prefill: tuple[list[int], Any] | None = None  # (prompt ids, its transformers cache)
        self.stats = Stats()

    def count_tokens(self, text: str) -> int:
        return len(encode_prompt(self.tokenizer, text))

    @property
    def numerics(self) -> dict:
        if self._fallback is not None:
            return self._fallback.numerics
        return {"matmul_dtype": dtype_name(self.matmul_dtype), **rng_numerics(self)}

    @property
    def kernels(self) -> str | None:
        """The decode step's products' kernel, for reports (rounding only: not in `numerics`); None when
        transformers' generate samples instead (a model the decode step does not cover)."""
        return None if self._fallback is not None else self.matmul_kernel

    # --------------------------------------------------------------------------------------------
    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams) -> Iterator[Completion]:
        if self._fallback is not None:
            yield from self._fallback.sample(requests, params)
            return
        if self._w is None:
            self._w = _Weights(self.model, self.matmul_dtype, self.matmul_kernel, self.batch_size)
        threads = torch.get_num_threads()
        self.cores.start()
        try:
            with torch.inference_mode():
                yield from _Run(self, requests, params).run()
        finally:  # torch's thread count is process-wide: what sampling chose must not outlive it (training)
            torch.set_num_threads(threads)


class _Run:
    """One `sample` call: the row table, the pending queue and the decode loop."""

    def __init__(self, sampler: FastHFSampler, requests: Sequence[SampleRequest], params: SamplingParams):
        self.s = sampler
        self.w: _Weights = sampler._w
        self.params = params
        self.stats = sampler.stats
        self.queue = deque(r for r in requests if r.indices)
        self.eos = set(sampler.eos_ids)
        self.stop = tuple(s for s in params.stop if s)
        # a stop string of c characters lies within the last c+4 tokens when it first appears
        self.tail = max((len(s) for s in self.stop), default=0) + 4
        w = self.w
        self.B = sampler.batch_size
        self.T = max(1, params.max_new_tokens)
        # generated keys/values per row; grown on demand (zeros: masked slots must hold finite values)
        self.capacity = min(self.T, INITIAL_CAPACITY)
        self.max_slots = self.T  # grows by the longest prompt copied into a row (inline groups)
        # cache rows: at most B live at once, appended in order of admission (ATTENTION_BLOCK) into the spare ones
        self.S = self.B + max(1, int(self.B * SPARE_ROWS_FRACTION))
        self.kcache = [torch.zeros(self.S, w.num_kv, self.capacity, w.head_dim) for _ in w.layers]
        self.vcache = [torch.zeros(self.S, w.num_kv, self.capacity, w.head_dim) for _ in w.layers]
        self.groups: deque[_Group] = deque()  # groups with samples left to start, in request order
        self.rows: list[dict | None] = [None] * self.S
        self.tok = torch.zeros(self.S, dtype=torch.long)
        self.t = torch.zeros(self.S, dtype=torch.long)  # slot of the current token in the row's cache
        self.pos = torch.zeros(self.S, dtype=torch.long)
        self.scratch: dict = {}

    # ---- admission -----------------------------------------------------------------------------
    def _next_group(self) -> _Group | None:
        while self.groups and not self.groups[0].pending:
            self.groups.popleft()
        if self.groups:
            return self.groups[0]
        if not self.queue:
            return None
        t0 = time.perf_counter()
        together = self._prefill_batch()
        if len(together) > 1:
            self.groups.extend(self._prefill_together(together))
        else:
            self.groups.append(self._prefill(*together[0]) if together else self._prefill(self.queue.popleft()))
        self.stats.prefill += time.perf_counter() - t0
        return self.groups[0]

    def _prompt_ids(self, req: SampleRequest) -> list[int]:
        ids = encode_prompt(self.s.tokenizer, req.prompt)
        if not ids:
            ids = [self.s.tokenizer.bos_token_id if self.s.tokenizer.bos_token_id is not None else self.s.eos_ids[0]]
        if len(ids) + self.T > self.w.max_positions:
            raise ConfigError(
                f"sampling.max_new_tokens: prompt '{req.key}' has {len(ids)} tokens; with {self.T} new tokens it "
                f"exceeds the model's context of {self.w.max_positions}"
            )
        return ids

    def _starts(self, req: SampleRequest) -> tuple:
        return req.indices[:1] if self.params.greedy else req.indices  # greedy samples of a prompt are one decode

    def _prefill_batch(self) -> list[tuple[SampleRequest, list[int]]]:
        """The next prompts to prefill in one padded forward, taken off the queue: consecutive prompts whose rows
        hold them in their own caches (INLINE_MAX_SAMPLES: greedy evaluation), none sharing a preamble with the
        prompt before it (those prefill only what follows it, one at a time, from the previous prompt's cache).
        Empty when the prompt at the head is not such a prompt: it is prefilled alone (so is a batch of one)."""
        batch: list[tuple[SampleRequest, list[int]]] = []
        previous = self.s._last_prefill[0] if self.s._last_prefill is not None else None
        width = 0  # the padded length of the batch so far
        for req in islice(self.queue, PREFILL_BATCH):
            if len(self._starts(req)) > INLINE_MAX_SAMPLES:
                break
            ids = self._prompt_ids(req)
            if previous is not None and _shared_prefix(previous, ids) >= MIN_REUSED_PREFIX:
                if batch:  # the prompt it shares with is prefilled alone, so its cache is there to reuse
                    batch.pop()
                break
            width = max(width, len(ids))
            if (len(batch) + 1) * width > self.s.max_batch_tokens:
                break
            batch.append((req, ids))
            previous = ids
        for _ in batch:
            self.queue.popleft()
        return batch

    def _prefill_together(self, batch: list[tuple[SampleRequest, list[int]]]) -> list[_Group]:
        """Prefill several prompts in one forward (transformers' own, as `_prefill`): one prompt's forward is
        small products that run at about half the speed of a batch's (ladder prompts of ~35 tokens: 0.155 s each
        alone, 0.085 s in batches of 8-16). Right padding: a prompt's tokens attend only to earlier positions,
        so the pads after them change nothing but the rounding of the batch shape."""
        from transformers import DynamicCache

        width = max(len(ids) for _, ids in batch)
        x = torch.tensor([ids + [ids[-1]] * (width - len(ids)) for _, ids in batch])
        cache = DynamicCache(config=self.s.model.config)
        hidden = self.s.model.model(input_ids=x, **{_CACHE_ARG: cache}, use_cache=True).last_hidden_state
        last = hidden[torch.arange(len(batch)), torch.tensor([len(ids) - 1 for _, ids in batch])]
        logits = self.s.model.lm_head(last).float()
        self.s._last_prefill = None  # no prompt after these shares their preamble (_prefill_batch)
        groups = []
        for i, (req, ids) in enumerate(batch):
            n = len(ids)
            self.stats.prompt_tokens += n
            self.stats.batched_prompts += 1
            groups.append(_Group(
                request=req,
                length=n,
                keys=[layer.keys[i : i + 1, :, :n].float().contiguous() for layer in cache.layers],
                values=[layer.values[i : i + 1, :, :n].float().contiguous() for layer in cache.layers],
                logits=logits[i],
                pending=deque(self._starts(req)),
                inline=True,
            ))
        return groups

    def _prefill(self, req: SampleRequest, ids: list[int] | None = None) -> _Group:
        from transformers import DynamicCache

        ids = ids if ids is not None else self._prompt_ids(req)
        cache, reused = self._reused_prefix(ids)
        if cache is None:
            cache = DynamicCache(config=self.s.model.config)
        x = torch.tensor([ids])
        for start in range(reused, len(ids), self.s.max_batch_tokens):  # chunked prefill bounds activation memory
            chunk = x[:, start : start + self.s.max_batch_tokens]
            out = self.s.model(input_ids=chunk, **{_CACHE_ARG: cache}, use_cache=True, logits_to_keep=1)
        self.s._last_prefill = (ids, cache)
        self.stats.prompt_tokens += len(ids)
        self.stats.reused_prompt_tokens += reused
        indices = self._starts(req)
        return _Group(
            request=req,
            length=len(ids),
            keys=[layer.keys.float().contiguous() for layer in cache.layers],  # float32 like the decode step
            values=[layer.values.float().contiguous() for layer in cache.layers],
            logits=out.logits[0, -1].float(),
            pending=deque(indices),
            inline=len(indices) <= INLINE_MAX_SAMPLES,
        )

    def _reused_prefix(self, ids: list[int]) -> tuple[Any, int]:
        """A copy of the previous prompt's cache cut to the prefix it shares with `ids`, and that prefix's length."""
        if self.s._last_prefill is None:
            return None, 0
        last_ids, last_cache = self.s._last_prefill
        shared = _shared_prefix(last_ids, ids)
        if shared < MIN_REUSED_PREFIX:
            return None, 0
        cache = copy.deepcopy(last_cache)
        if shared < len(last_ids):
            cache.crop(shared - len(last_ids))  # transformers 5.2x: a negative count of tokens to drop
        return cache, shared

    def _fill(self, slots: list[int]) -> list[tuple[Completion, SampleRequest]]:
        """Start pending samples in free rows; a sample that ends on its first token frees its row again."""
        done: list[tuple[Completion, SampleRequest]] = []
        while slots:
            firsts: list[tuple[int, _Group, int]] = []
            for slot in slots:
                g = self._next_group()
                if g is None:
                    break
                firsts.append((slot, g, g.pending.popleft()))
            if not firsts:
                break
            gens = [row_generator(self.params, g.request.key, i, self.s.rng) for _, g, i in firsts]
            logits = torch.stack([g.logits for _, g, _ in firsts])
            t0 = time.perf_counter()
            first = self._choose(logits, gens)
            self.stats.sampling += time.perf_counter() - t0
            slots = []
            for (slot, g, index), gen, token in zip(firsts, gens, first.tolist()):
                g.live += 1
                self.rows[slot] = {"group": g, "index": index, "gen": gen, "tokens": [token]}
                self.t[slot] = self._copy_prompt(slot, g) if g.inline else 0
                self.pos[slot] = g.length
                self.tok[slot] = token
                c = self._check(slot)
                if c is not None:
                    done.append(c)
                    slots.append(slot)
        return done

    def _copy_prompt(self, slot: int, g: _Group) -> int:
        """Put the prompt's keys/values in the row's own cache; returns the slot of its first generated token."""
        self.max_slots = max(self.max_slots, g.length + self.T)
        if g.length + 1 > self.capacity:
            self._grow(g.length + 1)
        for li in range(len(self.kcache)):
            self.kcache[li][slot, :, : g.length] = g.keys[li][0]
            self.vcache[li][slot, :, : g.length] = g.values[li][0]
        return g.length

    # ---- finishing -----------------------------------------------------------------------------
    def _check(self, slot: int, tail_text: str | None = None) -> tuple[Completion, SampleRequest] | None:
        row = self.rows[slot]
        tokens = row["tokens"]
        last = tokens[-1]
        ended = last in self.eos or len(tokens) >= self.T
        if not ended and self.stop:
            if tail_text is None:
                tail_text = self.s.tokenizer.decode(tokens[-self.tail :], skip_special_tokens=True)
            ended = any(s in tail_text for s in self.stop)
        if not ended:
            return None
        return self._release(slot)

    def _release(self, slot: int) -> tuple[Completion, SampleRequest]:
        row = self.rows[slot]
        g: _Group = row["group"]
        self.rows[slot] = None
        self.t[slot] = 0  # a dead row must not widen the attention window
        g.live -= 1
        self.stats.generated_tokens += len(row["tokens"])
        c = finish_completion(self.s.tokenizer, g.request.key, row["index"], row["tokens"], g.length, self.s.eos_ids, self.params)
        return c, g.request

    def _emit(self, done: tuple[Completion, SampleRequest]) -> Iterator[Completion]:
        c, req = done
        if self.params.greedy:  # greedy samples of a prompt are identical: one was decoded
            for i in req.indices:
                yield Completion(c.key, i, c.text, c.num_tokens, c.prompt_tokens, c.finish_reason)
        else:
            yield c

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> Iterator[Completion]:
        while True:
            live = self._live()
            if not live:
                if not self._has_pending():
                    return
                for c in self._fill(self._free_rows(self.B)):
                    yield from self._emit(c)
                continue
            self.s.cores.tick()
            if len(live) < (live[-1] + 1) * 3 // 4 and not self._has_pending():
                live = self._compact(live)  # the tail: gaps between live rows still cost their blocks' attention
            t0 = time.perf_counter()
            logits = self._step(live)
            t1 = time.perf_counter()
            tokens = self._choose(logits, [self.rows[i]["gen"] for i in live])
            t2 = time.perf_counter()
            st = self.stats
            st.forward += t1 - t0
            st.sampling += t2 - t1
            st.steps += 1
            st.row_steps += len(live)
            if len(live) >= 0.9 * self.B:
                st.full_steps_time += t2 - t0
                st.full_row_steps += len(live)
            nested = st.prefill + st.sampling  # _fill may prefill a new prompt and draw first tokens
            freed, finished = self._advance(live, tokens.tolist())
            if freed and self._has_pending():
                finished += self._fill(self._free_rows(len(freed)))
            st.bookkeeping += time.perf_counter() - t2 - (st.prefill + st.sampling - nested)
            for c in finished:
                yield from self._emit(c)

    def _live(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is not None]

    def _free_rows(self, k: int) -> list[int]:
        """k cache rows for new samples, after every live row, so that rows stay in order of age (ATTENTION_BLOCK);
        the live rows move to the front first when the spare rows run out."""
        live = self._live()
        end = live[-1] + 1 if live else 0
        if end + k > self.S:
            end = len(self._compact(live))
        return list(range(end, end + k))

    def _has_pending(self) -> bool:
        return bool(self.queue) or any(g.pending for g in self.groups)

    def _advance(self, live: list[int], tokens: list[int]) -> tuple[list[int], list[tuple[Completion, SampleRequest]]]:
        tails = None
        for slot, token in zip(live, tokens):
            self.rows[slot]["tokens"].append(token)
        if self.stop:
            tails = self.s.tokenizer.batch_decode([self.rows[s]["tokens"][-self.tail :] for s in live], skip_special_tokens=True)
        freed, finished = [], []
        for j, (slot, token) in enumerate(zip(live, tokens)):
            c = self._check(slot, tails[j] if tails is not None else "")
            if c is not None:
                freed.append(slot)
                finished.append(c)
            else:
                self.tok[slot] = token
                self.t[slot] += 1
                self.pos[slot] += 1
        return freed, finished

    def _grow(self, needed: int) -> None:
        cap = max(needed, min(self.max_slots, 2 * self.capacity))
        for caches in (self.kcache, self.vcache):
            for i, old in enumerate(caches):
                new = torch.zeros(old.shape[0], old.shape[1], cap, old.shape[3])
                new[:, :, : self.capacity] = old
                caches[i] = new
        self.capacity = cap

    def _compact(self, live: list[int]) -> list[int]:
        """Move the live rows to the front, keeping their order (of age); returns their new rows, 0..len(live)-1."""
        t0 = time.perf_counter()
        moves = [(src, dst) for dst, src in enumerate(live) if src != dst]
        if moves:
            src = torch.tensor([a for a, _ in moves])
            dst = torch.tensor([b for _, b in moves])
            width = min(self.capacity, int(self.t.index_select(0, src).max()) + 1)  # no row has keys past its t
            for cache in (*self.kcache, *self.vcache):
                cache[dst, :, :width] = cache[src, :, :width]
            for state in (self.tok, self.t, self.pos):
                state[dst] = state[src].clone()
        self.rows = [self.rows[i] for i in live] + [None] * (self.S - len(live))
        self.t[len(live) :] = 0  # a dead row must not widen its block's attention window
        self.stats.compactions += 1
        self.stats.compaction += time.perf_counter() - t0
        return list(range(len(live)))

    # ---- one decode step ---------------------------------------------------------------------------
    def _attention_blocks(self, n: int, alive: torch.Tensor) -> list[tuple[int, int, list]]:
        """The rows [0, n) in blocks of ATTENTION_BLOCK, each with its chunks of generated keys: (first row, end row,
        [(rows of the block reaching the chunk, first key slot, end slot, mask hiding each row's slots past its
        length)]). A block reads keys only up to its longest row; a block with no live row is left out."""
        blocks = []
        for r0 in range(0, n, ATTENTION_BLOCK):
            r1 = min(n, r0 + ATTENTION_BLOCK)
            if not bool(alive[r0:r1].any()):
                continue
            t = self.t[r0:r1]
            T = int(t.max()) + 1
            # generated keys in chunks of GEN_CHUNK slots; a chunk only involves the rows that reach it
            chunks = []
            for c0 in range(0, T, GEN_CHUNK):
                c1 = min(T, c0 + GEN_CHUNK)
                reach = (t >= c0).nonzero().squeeze(1)
                sel = slice(0, r1 - r0) if c0 == 0 or reach.numel() == r1 - r0 else reach
                tc = t if isinstance(sel, slice) else t[reach]
                mask = torch.zeros(tc.numel(), c1 - c0).masked_fill_(torch.arange(c0, c1)[None, :] > tc[:, None], float("-inf"))
                chunks.append((sel, c0, c1, mask.view(tc.numel(), 1, 1, c1 - c0)))
            blocks.append((r0, r1, chunks))
        return blocks

    def _step(self, live: list[int]) -> torch.Tensor:
        """One decode step of the live rows (cache rows, ascending): their next-token logits, in that order.
        Products and norms run on the live rows only; attention runs on blocks of cache rows, where a finished
        row's gap costs little (its query is zero and its window one key)."""
        w = self.w
        nh, nkv, hd = w.num_heads, w.num_kv, w.head_dim
        rep = nh // nkv
        scale = hd**-0.5
        m, n = len(live), live[-1] + 1
        dense = m == n  # no gaps: cache rows [0, n) are the live rows
        index = torch.arange(n) if dense else torch.tensor(live)
        t = self.t.index_select(0, index)
        if int(t.max()) + 1 > self.capacity:
            self._grow(int(t.max()) + 1)
        pos = self.pos.index_select(0, index)
        cos = w.cos[pos].unsqueeze(1)  # [m, 1, hd]
        sin = w.sin[pos].unsqueeze(1)
        alive = torch.zeros(n, dtype=torch.bool)
        alive[index] = True
        blocks = self._attention_blocks(n, alive)
        # the rows of each prompt: their queries meet the prompt's keys in one fused attention call
        by_group: dict[int, tuple[_Group, list[int]]] = {}
        for slot in live:
            g = self.rows[slot]["group"]
            if g.inline:  # its prompt is in the row's own cache, attended with the generated keys
                continue
            by_group.setdefault(id(g), (g, []))[1].append(slot)
        groups = []
        for g, slots in by_group.values():
            contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
            groups.append((g, slice(slots[0], slots[-1] + 1) if contiguous else torch.tensor(slots)))

        x = w.embed[self.tok.index_select(0, index)]
        half = hd // 2
        for li, (ln1, wqkv, wo, ln2, wgu, wd) in enumerate(w.layers):
            h = _rms_norm(x, ln1, w.eps)
            qkv = wqkv(h).view(m, nh + 2 * nkv, hd)
            qk = qkv[:, : nh + nkv]
            rot = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rot * sin
            kc, vc = self.kcache[li], self.vcache[li]
            kc[index, :, t] = qk[:, nh:]
            vc[index, :, t] = qkv[:, nh + nkv :]
            q = qk[:, :nh].reshape(m, nkv, rep, hd)
            q = q if dense else torch.zeros(n, nkv, rep, hd).index_copy_(0, index, q)  # by cache row
            if len(blocks) == 1 and blocks[0][:2] == (0, n):
                o, lse = self._block_attention(q, kc, vc, *blocks[0], scale)
            else:
                o, lse = torch.empty(n, nkv, rep, hd), torch.empty(n, nkv, rep)  # rows of empty blocks: never read
                for r0, r1, chunks in blocks:
                    o[r0:r1], lse[r0:r1] = self._block_attention(q, kc, vc, r0, r1, chunks, scale)
            for g, sel in groups:
                _merge(o, lse, sel, *_prompt_attention(_take(q, sel), g.keys[li], g.values[li], scale))
            o = o if dense else o.index_select(0, index)
            x = x + wo(o.reshape(m, nh * hd))
            h = _rms_norm(x, ln2, w.eps)
            gate, up = wgu(h).chunk(2, dim=-1)
            x = x + wd(F.silu(gate) * up)
        x = _rms_norm(x, w.final_norm, w.eps)
        return w.lm_head(x)

    @staticmethod
    def _block_attention(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, r0: int, r1: int, chunks: list,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [r0, r1) against their own keys, chunk by chunk: (output, log-sum-exp)."""
        q, kc, vc = q[r0:r1], kc[r0:r1], vc[r0:r1]
        o = lse = None
        for sel, c0, c1, mask in chunks:
            part = _masked_attention(_take(q, sel), _take(kc[:, :, c0:c1], sel), _take(vc[:, :, c0:c1], sel), mask, scale)
            if o is None:
                o, lse = part
            else:
                _merge(o, lse, sel, *part)
        return o, lse

    # ---- token choice ----------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        return choose_tokens(logits, self.params, gens, inplace=True, scratch=self.scratch)


def _shared_prefix(previous: list[int], ids: list[int]) -> int:
    """How many leading tokens of `ids` a cache of `previous` can supply: never the last one, whose logits start
    the samples."""
    shared = 0
    for a, b in zip(previous, ids[:-1]):
        if a != b:
            break
        shared += 1
    return shared


def _merge(o: torch.Tensor, lse: torch.Tensor, sel: Any, o2: torch.Tensor, lse2: torch.Tensor) -> None:
    """Fold the attention of rows `sel` over more keys (o2, lse2) into the running (o, lse), in place.

    Two partial softmaxes combine by their log-sum-exps; the weight of the new part is
    exp(lse2 - logaddexp(lse, lse2)) = sigmoid(lse2 - lse).
    """
    o1, l1 = _take(o, sel), _take(lse, sel)
    weight = torch.sigmoid(lse2 - l1).unsqueeze(-1)
    _put(o, sel, o1 + weight * (o2 - o1))
    _put(lse, sel, torch.logaddexp(l1, lse2))


def _take(x: torch.Tensor, sel: Any) -> torch.Tensor:
    # index_select, not x[index]: advanced indexing is ~3x slower on these strided cache views
    return x[sel] if isinstance(sel, slice) else x.index_select(0, sel)


def _put(x: torch.Tensor, sel: Any, value: torch.Tensor) -> None:
    if isinstance(sel, slice):
        x[sel] = value
    else:
        x.index_copy_(0, sel, value)


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _masked_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries [b, kv, q, hd] over keys [b, kv, slots, hd], with an optional additive mask [b, 1, 1, slots]
    (each row's own keys: the slots past its length hidden): (output [b, kv, q, hd], log-sum-exp [b, kv, q]). torch's
    CPU flash kernel reads each key once, never materialises the scores (the matmul/softmax fallback, where that op
    is missing, does) and returns the log-sum-exp needed to merge partial attentions (public SDPA does not)."""
    if _FLASH is not None:
        out, lse = _FLASH(q, keys, values, attn_mask=mask, scale=scale)[:2]
        return out, lse
    scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(scale)
    if mask is not None:
        scores.add_(mask)
    return torch.matmul(torch.softmax(scores, -1), values), torch.logsumexp(scores, -1)


def _prompt_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of k rows' queries [k, kv, rep, hd] over one shared prompt: (output [k, kv, rep, hd], lse [k, kv, rep]).

    The k*rep queries of a kv head form one query block against the prompt's keys, so the prompt's
    keys are read once per step for all its samples (the flash kernel: ~2x faster than materialising the scores).
    """
    k, kv, rep, hd = q.shape
    out, lse = _masked_attention(q.transpose(0, 1).reshape(1, kv, k * rep, hd), keys, values, None, scale)
    return out.view(kv, k, rep, hd).transpose(0, 1), lse.view(kv, k, rep).transpose(0, 1)


def choose_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    gens: Sequence[torch.Generator],
    inplace: bool = False,
    scratch: dict | None = None,
) -> torch.Tensor:
    """The next token of each row: argmax when greedy, else a draw from the temperature/top-k/top-p
    distribution with transformers' semantics (see `nucleus`), one uniform per row."""
    if params.greedy:
        return logits.argmax(-1)
    probs, ids = nucleus(logits, params, inplace=inplace, scratch=scratch)
    pos = draw_rows(probs, gens)
    out = ids.gather(1, pos.unsqueeze(1)).squeeze(1)
    return out


def nucleus(
    logits: torch.Tensor,
    params: SamplingParams,
    candidates: int = NUCLEUS_CANDIDATES,
    inplace: bool = False,
    scratch: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights of the kept tokens in descending order, 0 past the kept set; their token ids), per row.

    Same kept set as transformers' TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper:
    top-k keeps every token scoring at least the k-th score; top-p keeps a token iff the probability
    of the tokens ranked above it is < top_p (the warper's "ascending cumulative > 1 - top_p").
    Rows whose kept set may extend past the first `candidates` tokens are sorted in full. Weights are
    exp(score - best score), the form `PerSampleDraw` feeds to `draw_rows` as well.
    """
    z = logits.float() if inplace else logits.float().clone()
    if params.temperature != 1.0:
        z.div_(params.temperature)
    vocab = z.shape[-1]
    top_k = int(params.top_k) if params.top_k and params.top_k > 0 else 0
    top_p = float(params.top_p) if params.top_p is not None else 1.0
    c = min(vocab, max(candidates, top_k + 1 if top_k else candidates))
    vals, ids = torch.topk(z, c, dim=-1)
    if top_k and top_k < vocab:
        kth = vals[:, top_k - 1 : top_k]
        z.masked_fill_(z < kth, float("-inf"))
        vals = vals.masked_fill(vals < kth, float("-inf"))
    keep = torch.isfinite(vals)
    if top_p < 1.0:
        probs = torch.exp(vals - _logsumexp(z, scratch)).double()
        keep &= (torch.cumsum(probs, -1) - probs) < top_p  # mass ranked strictly above each candidate
    keep[:, 0] = True
    # a row needs the full sort if its last candidate is still kept and more tokens could follow
    spill = keep[:, -1] & (c < vocab)
    weights = torch.exp(vals - vals[:, :1]).masked_fill_(~keep, 0.0)
    if bool(spill.any()):
        rows = spill.nonzero().squeeze(1)
        FULL_SORTS[0] += rows.numel()
        full_w, full_ids = _full_nucleus(z.index_select(0, rows), top_p)
        width = full_w.shape[-1]
        if width > c:
            weights = F.pad(weights, (0, width - c))
            ids = F.pad(ids, (0, width - c))
        weights[rows] = F.pad(full_w, (0, weights.shape[-1] - width))
        ids[rows] = F.pad(full_ids, (0, ids.shape[-1] - width))
    return weights, ids


def _logsumexp(z: torch.Tensor, scratch: dict | None) -> torch.Tensor:
    # Through the run's reused scratch buffer: a fresh vocab-sized temporary per step costs page faults.
    m = z.amax(-1, keepdim=True)
    scratch = {} if scratch is None else scratch
    buf = scratch.get("lse")
    if buf is None or buf.numel() < z.numel():
        buf = scratch["lse"] = torch.empty(z.numel())
    e = torch.sub(z, m, out=buf[: z.numel()].view_as(z))
    return m + e.exp_().sum(-1, keepdim=True).log_()


def _full_nucleus(z: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Flat rows (thousands of kept tokens): decide the kept set with TopPLogitsWarper's own arithmetic
    # (ascending sort, float32 softmax cumsum) on the tempered, top-k-filtered scores, since there a
    # rounding difference moves the boundary.
    asc, order = torch.sort(z, dim=-1, descending=False)
    remove = ~torch.isfinite(asc)
    if top_p < 1.0:
        drop = asc.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        remove |= drop
    vals, ids, keep = asc.flip(-1), order.flip(-1), ~remove.flip(-1)
    width = int(keep.sum(-1).max())
    weights = torch.exp(vals[:, :width] - vals[:, :1]).masked_fill_(~keep[:, :width], 0.0)
    return weights, ids[:, :width]
