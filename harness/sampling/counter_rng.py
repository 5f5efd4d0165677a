"""Counter-based per-sample random numbers: the uniform of a sample's t-th draw is a hash of (its seed, t).

Every sampler draws one uniform per row per step and turns it into a token by inverse CDF
(`harness.sampling.hf.draw_rows`). With `backend.rng: generator` (the default, what the store's samples were
drawn with) each sample owns a `torch.Generator` seeded by `sample_seed(seed, key, index)`, and a step calls
each row's generator in turn: exact and independent of the batch, but one host-side call per row per step,
which is what dominates a GPU step of a small model. `backend.rng: counter` keeps the same guarantee (a sample
depends only on (seed, problem, index)) with the uniforms of all rows computed in one vectorised integer
expression on the rows' device, and bit-identical numbers on every device, since integer arithmetic is exact.

Written by hand: torch's generators are streams (one state advanced per call), with no keyed counter-based
API to ask "the number at (key, counter)" for many keys in one op, and numpy's Philox would be a host loop again.
The mixing function is lowbias32 (C. Wellons, hash-prospector); every product is split into 16-bit halves so
that no intermediate leaves int64's positive range, on any backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

MASK32 = 0xFFFFFFFF
RNGS = ("generator", "counter")
_TWO_POW_26 = 67108864.0
_TWO_POW_53 = 9007199254740992.0


def _mul32(x: Any, c: int) -> Any:
    """(x * c) mod 2^32 for 0 <= x, c < 2^32, without an intermediate >= 2^49 (int tensors or Python ints)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _mix32(x: Any) -> Any:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _words(seeds: Any, steps: Any) -> tuple[Any, Any]:
    lo, hi, t = seeds & MASK32, (seeds >> 32) & MASK32, steps & MASK32
    a = _mix32(hi ^ _mix32(lo ^ _mix32(t)))
    b = _mix32(lo ^ _mix32(hi ^ _mix32(t ^ 0x9E3779B9)))
    return a, b


def counter_uniforms(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in [0, 1), one per (seed, step) pair: 53 bits from two 32-bit hashes (numpy's layout)."""
    a, b = _words(seeds.long(), steps.long())
    return ((a >> 5).double() * _TWO_POW_26 + (b >> 6).double()) / _TWO_POW_53


def counter_uniform(seed: int, step: int) -> float:
    """The same number for one (seed, step), in Python integers: the reference the tensor version must match."""
    a, b = _words(seed, step)
    return ((a >> 5) * _TWO_POW_26 + (b >> 6)) / _TWO_POW_53


@dataclass
class CounterStream:
    """One sample's stream: its 63-bit seed and how many uniforms it has used."""

    seed: int
    step: int = 0


def row_uniforms(streams: Sequence[Any], device: Any = None) -> torch.Tensor:
    """One float64 uniform per row, from each row's own stream (a torch.Generator or a CounterStream), and
    advance every stream by one: a row's t-th draw never depends on the other rows."""
    if streams and isinstance(streams[0], CounterStream):
        seeds = torch.tensor([s.seed for s in streams], dtype=torch.long, device=device)
        steps = torch.tensor([s.step for s in streams], dtype=torch.long, device=device)
        for s in streams:
            s.step += 1
        return counter_uniforms(seeds, steps)
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in streams]).to(device)
