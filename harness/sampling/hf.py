"""The plain reference backend: transformers `model.generate` with left padding.

Every sample is drawn by its own `torch.Generator` seeded with `sample_seed(seed, key, index)`, so a
sample does not depend on which other samples share its batch (the store's resume/shard contract).
`generate` does the forward passes and applies transformers' own temperature / top-k / top-p warpers;
only the final categorical draw is replaced (`PerSampleDraw`), because `generate(do_sample=True)` draws
every row from one global RNG stream. The fast backend (`fast.py`) reuses `draw_rows` and
`finish_completion` from here so the two agree sample for sample, not only in distribution.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams, cut_at_stop, sample_seed
from harness.sampling.counter_rng import CounterStream, row_uniforms
from harness.sampling.threads import CoreShare


# ------------------------------------------------------------------------------------------------
# pieces shared with the fast backend


def eos_token_ids(loaded: Any) -> list[int]:
    """Every token that ends a sequence: the generation config's eos ids and the tokenizer's eos."""
    ids: list[int] = []
    gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, loaded.tokenizer.eos_token_id):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return ids


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    # Prompts arrive rendered (chat template, BOS text included): adding special tokens again would
    # duplicate BOS for tokenizers that add one (SmolLM2's adds none, Llama 3's does).
    return tokenizer(prompt, add_special_tokens=False).input_ids


def row_generator(params: SamplingParams, key: str, index: int, rng: str = "generator") -> torch.Generator | CounterStream:
    """The random stream of one sample (`backend.rng`: a seeded torch.Generator, or a counter-based stream)."""
    if rng == "counter":
        return CounterStream(sample_seed(params.seed, key, index))
    g = torch.Generator()
    g.manual_seed(sample_seed(params.seed, key, index))
    return g


def draw_rows(probs: torch.Tensor, generators: Sequence[torch.Generator | CounterStream]) -> torch.Tensor:
    """Inverse-CDF categorical draw, one uniform per row from that row's own stream (counter_rng.row_uniforms).

    `probs` [R, m] holds each row's candidate weights in descending order (unnormalised: exp(score -
    best score); filtered-out candidates 0); returns the position of the drawn candidate in each row. Exact
    categorical sampling, and it consumes exactly one number per row per step, so a sample's stream
    does not depend on the batch.
    """
    u = row_uniforms(generators, probs.device)
    cdf = probs.double().cumsum(-1)
    threshold = (u * cdf[:, -1]).unsqueeze(-1)
    pos = (cdf <= threshold).sum(-1)
    return pos.clamp_(max=probs.shape[-1] - 1)


def finish_completion(
    tokenizer: Any,
    key: str,
    index: int,
    tokens: Sequence[int],
    prompt_tokens: int,
    eos_ids: Sequence[int],
    params: SamplingParams,
    extra: dict | None = None,
) -> Completion:
    """A Completion from one row's generated tokens (which may run past its end: padding, EOS...).

    The text ends at the earliest of: an EOS token (not included), the first stop string (cut; its
    tokens are counted), max_new_tokens.
    """
    tokens = list(tokens[: params.max_new_tokens])
    eos = set(eos_ids)
    end = next((i for i, t in enumerate(tokens) if t in eos), None)
    body = tokens if end is None else tokens[:end]
    text, stopped = cut_at_stop(tokenizer.decode(body, skip_special_tokens=True), params.stop)
    if stopped:
        num = _tokens_to_stop(tokenizer, body, len(text), params.stop)
        reason = "stop"
    elif end is not None:
        num, reason = end + 1, "eos"
    else:
        num, reason = len(tokens), "length"
    return Completion(key, index, text, num, prompt_tokens, reason, dict(extra or {}))


def _tokens_to_stop(tokenizer: Any, tokens: Sequence[int], cut: int, stop: Sequence[str]) -> int:
    """The fewest leading tokens whose text already contains the stop string found at char `cut`."""
    lo, hi = 1, len(tokens)
    while lo < hi:  # decoded prefixes grow monotonically, so bisect on "contains a stop string"
        mid = (lo + hi) // 2
        if cut_at_stop(tokenizer.decode(tokens[:mid], skip_special_tokens=True), stop)[1]:
            hi = mid
        else:
            lo = mid + 1
    return lo


class PerSampleDraw:
    """Last logits processor of `generate`: draws each row with its own generator, returns one-hot scores.

    Runs after transformers' warpers, so `scores` is already the filtered distribution; with
    do_sample=False, generate's argmax then picks the drawn token.
    """

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ordered, order = torch.sort(scores.float(), dim=-1, descending=True)
        weights = torch.exp(ordered - ordered[:, :1])  # filtered tokens (-inf) get weight 0
        pos = draw_rows(weights, self.generators)
        chosen = order.gather(1, pos.unsqueeze(1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


def warpers(params: SamplingParams) -> list:
    """transformers' own warpers, in generate's order: temperature, top-k, top-p."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out: list = []
    if params.temperature != 1.0:
        out.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k and params.top_k > 0:
        out.append(TopKLogitsWarper(top_k=int(params.top_k)))
    if params.top_p is not None and params.top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=float(params.top_p)))
    return out


# ------------------------------------------------------------------------------------------------


class HFGenerateSampler(Sampler):
    """transformers `generate`, left-padded batches of `batch_size` rows (prompt copies for n samples)."""

    name = "hf_generate"

    def __init__(self, loaded_model: Any, batch_size: int = 16, num_threads: int | None = None, use_stop_strings: bool = True,
                 rng: str = "generator"):
        self.loaded = loaded_model
        self.rng = rng
        self.model = loaded_model.model
        self.tokenizer = loaded_model.tokenizer
        self.batch_size = max(1, int(batch_size))
        self.use_stop_strings = use_stop_strings
        self.eos_ids = eos_token_ids(loaded_model)
        self.cores = CoreShare(num_threads)  # null: one thread per free core, re-checked per batch

    def count_tokens(self, text: str) -> int:
        return len(encode_prompt(self.tokenizer, text))

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams) -> Iterator[Completion]:
        encoded = {r.key: encode_prompt(self.tokenizer, r.prompt) for r in requests}
        if params.greedy:
            # Greedy samples of one prompt are identical: decode once, hand out a copy per index.
            rows = [(r, r.indices[0]) for r in requests if r.indices]
        else:
            rows = [(r, i) for r in requests for i in r.indices]
        self.cores.start()
        for start in range(0, len(rows), self.batch_size):
            self.cores.tick()
            batch = rows[start : start + self.batch_size]
            outputs = self._generate([encoded[r.key] for r, _ in batch], [(r.key, i) for r, i in batch], params)
            for (req, index), tokens in zip(batch, outputs):
                plen = len(encoded[req.key])
                done = finish_completion(self.tokenizer, req.key, index, tokens, plen, self.eos_ids, params)
                if params.greedy:
                    for i in req.indices:
                        yield Completion(req.key, i, done.text, done.num_tokens, plen, done.finish_reason)
                else:
                    yield done

    def _generate(self, prompts: list[list[int]], keys: list[tuple[str, int]], params: SamplingParams) -> list[list[int]]:
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every row's next token lands in the last column
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        processors = LogitsProcessorList()
        if not params.greedy:
            processors.extend(warpers(params))
            processors.append(PerSampleDraw([row_generator(params, k, i, self.rng) for k, i in keys]))
        config = GenerationConfig(
            do_sample=False,  # the draw happens in PerSampleDraw; generate's argmax picks the drawn token
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=pad,
            stop_strings=list(params.stop) if (params.stop and self.use_stop_strings) else None,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.model.device),  # built on the CPU; generate does not move them
                attention_mask=mask.to(self.model.device),
                generation_config=config,
                logits_processor=processors,
                tokenizer=self.tokenizer if config.stop_strings else None,
            )
        return out[:, width:].tolist()
