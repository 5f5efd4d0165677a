"""Counter-based per-sample streams (backend.rng=counter): exact integer hashing that any device computes alike,
uniform and uncorrelated draws, one step per draw. The samplers with rng=counter: tests/test_sampling.py."""
import numpy as np
import pytest
import torch

from harness.sampling.base import sample_seed
from harness.sampling.counter_rng import CounterStream, counter_uniform, counter_uniforms, row_uniforms


def test_tensor_uniforms_equal_the_python_integer_reference():
    rng = np.random.default_rng(0)
    seeds = [int(x) for x in rng.integers(0, 2**63 - 1, size=64, dtype=np.int64)] + [0, 1, 2**63 - 1]
    steps = [int(x) for x in rng.integers(0, 10_000, size=len(seeds))]
    got = counter_uniforms(torch.tensor(seeds), torch.tensor(steps)).tolist()
    assert got == [counter_uniform(s, t) for s, t in zip(seeds, steps)]
    assert all(0.0 <= u < 1.0 for u in got)


def test_draws_are_uniform_and_uncorrelated():
    from scipy.stats import chisquare

    seeds = torch.tensor([sample_seed(0, f"problem-{i}", j) for i in range(50) for j in range(20)])
    u = torch.stack([counter_uniforms(seeds, torch.full_like(seeds, t)) for t in range(200)])  # [step, sample]
    counts = torch.histc(u.float(), bins=20, min=0.0, max=1.0).numpy()
    assert chisquare(counts).pvalue > 1e-4  # 200,000 draws in 20 bins
    assert abs(float(u.mean()) - 0.5) < 0.005
    lag1 = np.corrcoef(u[:-1].flatten().numpy(), u[1:].flatten().numpy())[0, 1]  # a stream's t and t+1
    across = np.corrcoef(u[:, :-1].flatten().numpy(), u[:, 1:].flatten().numpy())[0, 1]  # neighbouring samples
    assert abs(lag1) < 0.01 and abs(across) < 0.01


def test_a_stream_advances_one_step_per_draw_whatever_its_neighbours():
    a, b, c = CounterStream(11), CounterStream(22), CounterStream(11)
    first = row_uniforms([a, b])
    second = row_uniforms([a])
    alone = torch.cat([row_uniforms([c]), row_uniforms([c])])
    assert (a.step, b.step, c.step) == (2, 1, 2)
    assert torch.equal(torch.stack([first[0], second[0]]), alone)
