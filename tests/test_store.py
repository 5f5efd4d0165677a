"""The sample store: keyed entries, incremental draws, resume after a kill, shard merge."""
import json

import pytest

from harness.errors import DataError
from harness.sampling.base import Completion, SamplingParams, sample_seed
from harness.store.samples import SampleStore, draw_samples


class CountingSampler:
    """A deterministic fake backend: the text is a function of (seed, key, index) only."""

    name = "fake"

    def __init__(self, die_after: int | None = None):
        self.drawn: list[tuple[str, int]] = []
        self.die_after = die_after

    def sample(self, requests, params):
        for req in requests:
            for i in req.indices:
                if self.die_after is not None and len(self.drawn) >= self.die_after:
                    raise KeyboardInterrupt("simulated kill")
                self.drawn.append((req.key, i))
                yield Completion(req.key, i, f"s{sample_seed(params.seed, req.key, i) % 1000}", 3, 10, "eos")

    def count_tokens(self, text):
        return len(text.split())


PARAMS = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)
PROMPTS = {"p1": "Q1", "p2": "Q2", "p3": "Q3"}


def entry(tmp_path, shard="main", params=PARAMS):
    return SampleStore(tmp_path, shard=shard).entry("m@src", "sha", "prompt", "fp", params)


def test_more_samples_later_draws_only_the_difference(tmp_path):
    sampler = CountingSampler()
    df16 = draw_samples(entry(tmp_path), sampler, PROMPTS, 16, PARAMS, progress=False)
    assert len(df16) == 48 and len(sampler.drawn) == 48
    sampler.drawn.clear()
    df64 = draw_samples(entry(tmp_path), sampler, PROMPTS, 64, PARAMS, progress=False)
    assert len(df64) == 3 * 64
    assert len(sampler.drawn) == 3 * 48
    assert all(i >= 16 for _, i in sampler.drawn)
    # the first 16 are the very same samples
    merged = df64[df64["index"] < 16].reset_index(drop=True)
    assert merged.equals(df16.sort_values(["problem_id", "index"]).reset_index(drop=True))


def test_killed_run_resumes_without_redrawing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        draw_samples(entry(tmp_path), CountingSampler(die_after=20), PROMPTS, 10, PARAMS, progress=False)
    kept = entry(tmp_path).frame()
    assert len(kept) == 20
    resumed = CountingSampler()
    full = draw_samples(entry(tmp_path), resumed, PROMPTS, 10, PARAMS, progress=False)
    assert len(resumed.drawn) == 10
    assert set(resumed.drawn).isdisjoint({(r.problem_id, r.index) for r in kept.itertuples()})
    uninterrupted = draw_samples(entry(tmp_path / "other"), CountingSampler(), PROMPTS, 10, PARAMS, progress=False)
    assert list(full["text"]) == list(uninterrupted["text"])


def test_torn_last_line_is_ignored_and_cut_before_next_append(tmp_path):
    e = entry(tmp_path)
    draw_samples(e, CountingSampler(), {"p1": "Q"}, 3, PARAMS, progress=False)
    path = e.shard_files()[0]
    with open(path, "a") as f:
        f.write('{"problem_id": "p1", "index": 3, "te')  # killed mid-write
    assert len(entry(tmp_path).frame()) == 3
    draw_samples(entry(tmp_path), CountingSampler(), {"p1": "Q"}, 5, PARAMS, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)


def test_corrupted_middle_line_names_file_and_line(tmp_path):
    e = entry(tmp_path)
    draw_samples(e, CountingSampler(), {"p1": "Q"}, 2, PARAMS, progress=False)
    path = e.shard_files()[0]
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(DataError, match=r"samples\.main\.jsonl:1"):
        entry(tmp_path).frame()


def test_shards_merge_into_one_entry(tmp_path):
    draw_samples(entry(tmp_path, "0of2"), CountingSampler(), {"p1": "Q1"}, 4, PARAMS, progress=False)
    draw_samples(entry(tmp_path, "1of2"), CountingSampler(), {"p2": "Q2"}, 4, PARAMS, progress=False)
    merged = entry(tmp_path).frame()
    assert sorted(set(merged["problem_id"])) == ["p1", "p2"] and len(merged) == 8
    assert len(entry(tmp_path).shard_files()) == 2


def test_different_params_or_seed_get_different_entries(tmp_path):
    a = entry(tmp_path)
    b = entry(tmp_path, params=SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=1))
    c = entry(tmp_path, params=SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=0))
    assert len({a.dir, b.dir, c.dir}) == 3


def test_sidecar_roundtrip(tmp_path):
    e = entry(tmp_path)
    e.append_sidecar("grades-x", [{"problem_id": "p1", "index": 0, "correct": True}])
    assert entry(tmp_path).read_sidecars("grades-x") == [{"problem_id": "p1", "index": 0, "correct": True}]
