"""The one interface every sampling backend implements.

A backend turns rendered prompts into completions. It never sees problems, graders or the store:
the store asks it only for the (prompt, sample index) pairs that are still missing, and each
sample's randomness is derived from (seed, key, index) alone, so a sample is the same whether it
was drawn in the first run, after a resume, or in another shard of a multirun job.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    """Sampling semantics shared by all backends (vLLM/transformers meaning of each field)."""

    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()  # generation ends *before* the first stop string; it is cut from the text
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def as_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class SampleRequest:
    """Draw the samples numbered `indices` for one rendered prompt.

    `key` identifies the prompt (the problem id); together with the index it seeds each sample.
    """

    key: str
    prompt: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Completion:
    key: str
    index: int
    text: str  # generated text, cut before the stop string, without EOS
    num_tokens: int  # tokens generated (including the tokens of a stop string that was cut)
    prompt_tokens: int  # tokens in the prompt (prefill)
    finish_reason: str  # "stop" (stop string), "eos", or "length"
    extra: dict = field(default_factory=dict, compare=False)  # backend-specific (e.g. token logprobs)


class Sampler(Protocol):
    """A sampling backend.

    `sample` yields completions as they finish, in any order, exactly one per requested
    (key, index); callers persist them as they arrive so a killed run loses at most the
    sequences in flight.
    """

    name: str

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams) -> Iterator[Completion]: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def numerics(self) -> dict:
        """What changes the numbers this backend computes beyond the model (whose identity carries its
        dtype) and the sampling parameters: the sample store folds it into an entry's key, so samples
        drawn with other arithmetic are never mixed. Default: the products run in the model's dtype."""
        model = getattr(self, "model", None)
        dtype = next(model.parameters()).dtype if model is not None else None
        return {"matmul_dtype": dtype_name(dtype) if dtype is not None else "unknown", **rng_numerics(self)}


def rng_numerics(sampler: object) -> dict:
    """{"rng": "counter"} for a counter-based sampler: other draws, other samples. Empty for the per-sample
    generators every stored sample was drawn with, so that their store keys stay what they were."""
    rng = getattr(sampler, "rng", "generator")
    return {} if rng == "generator" else {"rng": rng}


def dtype_name(dtype: object) -> str:
    """'bfloat16' for torch.bfloat16 (or the string itself): the spelling the store key uses."""
    return str(dtype).removeprefix("torch.")


def sample_seed(seed: int, key: str, index: int) -> int:
    """A 63-bit seed for one sample, independent of batch composition and draw order."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}\x1f{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; returns (text, whether a stop string was found)."""
    cut = len(text)
    for s in stop:
        if s:
            pos = text.find(s)
            if pos != -1 and pos < cut:
                cut = pos
    return text[:cut], cut != len(text)
