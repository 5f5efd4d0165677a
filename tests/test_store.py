"""The sample store: keyed entries, incremental draws, resume after a kill, shard merge, concurrent writers."""
import json
import multiprocessing

import pytest

from harness.errors import DataError
from harness.sampling.base import Completion, SampleRequest, SamplingParams, sample_seed
from harness.store.samples import SampleStore, draw_samples, writer_id


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
    with pytest.raises(DataError, match=r"samples\.main\.[^/]*\.jsonl:1: not valid JSON"):
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


# ---- numerics, labels ---------------------------------------------------------------------------------------
def test_backend_numerics_are_part_of_the_key(tmp_path):
    store = SampleStore(tmp_path)
    plain = store.entry("m", "sha", "prompt", "fp", PARAMS)
    fp32 = store.entry("m", "sha", "prompt", "fp", PARAMS, {"matmul_dtype": "float32"})
    bf16 = store.entry("m", "sha", "prompt", "fp", PARAMS, numerics={"matmul_dtype": "bfloat16"})
    assert len({plain.dir, fp32.dir, bf16.dir}) == 3
    assert json.loads((bf16.dir / "key.json").read_text())["numerics"] == {"matmul_dtype": "bfloat16"}


def test_one_key_under_two_labels_is_one_entry(tmp_path):
    store = SampleStore(tmp_path)
    first = store.entry("sha256:abc/float32", "sha", "prompt", "fp", PARAMS, label="smollm2_135m")
    draw_samples(first, CountingSampler(), PROMPTS, 2, PARAMS, progress=False)
    again = store.entry("sha256:abc/float32", "sha", "prompt", "fp", PARAMS, label="my_copy")
    assert again.dir == first.dir and len(again.frame()) == 6


# ---- the line format ----------------------------------------------------------------------------------------
def test_complete_last_record_without_newline_is_counted_and_kept(tmp_path):
    """Measured on the old code: the reader counted it, the next append cut it, the rerun then failed."""
    e = entry(tmp_path)
    draw_samples(e, CountingSampler(), PROMPTS, 4, PARAMS, progress=False)
    path = e.shard_files()[0]
    path.write_text(path.read_text().rstrip("\n"))  # e.g. written by a tool that omits the final newline
    assert len(entry(tmp_path).frame()) == 12
    more = CountingSampler()
    df = draw_samples(entry(tmp_path), more, PROMPTS, 5, PARAMS, progress=False)
    assert len(df) == 15 and len(more.drawn) == 3
    lines = path.read_text().splitlines()
    assert len(lines) == 15 and all(json.loads(line)["problem_id"] for line in lines)


def test_last_record_without_newline_in_another_writers_file_counts(tmp_path):
    e = entry(tmp_path)
    other = e.dir / "samples.main.jsonl"  # the file every process of a shard used to share
    record = {"problem_id": "p1", "index": 0, "text": "x", "num_tokens": 1, "prompt_tokens": 2, "finish_reason": "eos"}
    other.write_text(json.dumps(record))
    sampler = CountingSampler()
    df = draw_samples(entry(tmp_path), sampler, {"p1": "Q"}, 2, PARAMS, progress=False)
    assert len(df) == 2 and sampler.drawn == [("p1", 1)]
    assert other.read_text() == json.dumps(record)


def test_torn_line_in_another_writers_file_is_skipped_and_left_alone(tmp_path):
    e = entry(tmp_path)
    other = e.dir / "samples.main.jsonl"  # the file every process of a shard used to share
    other.write_text('{"problem_id": "p1", "index": 0, "te')  # another process's write in progress
    draw_samples(entry(tmp_path), CountingSampler(), {"p1": "Q"}, 2, PARAMS, progress=False)
    assert other.read_text() == '{"problem_id": "p1", "index": 0, "te'
    assert len(entry(tmp_path).frame()) == 2


@pytest.mark.parametrize("line", [
    '{"foo": 1}',
    "42",
    '["p1", 0]',
    '{"problem_id": "p1", "index": "0", "text": "x", "num_tokens": 1, "prompt_tokens": 2, "finish_reason": "eos"}',
    '{"problem_id": "p1", "index": 0, "text": null, "num_tokens": 1, "prompt_tokens": 2, "finish_reason": "eos"}',
])
@pytest.mark.parametrize("where", ["middle", "last"])
def test_json_that_is_not_a_sample_is_a_one_line_data_error(tmp_path, line, where):
    e = entry(tmp_path)
    draw_samples(e, CountingSampler(), {"p1": "Q"}, 2, PARAMS, progress=False)
    path = e.shard_files()[0]
    good = path.read_text()
    path.write_text(line + "\n" + good if where == "middle" else good + line)
    lineno = 1 if where == "middle" else 3
    with pytest.raises(DataError, match=rf"\.jsonl:{lineno}: ") as err:
        entry(tmp_path).frame()
    assert "\n" not in str(err.value)


def test_sidecars_of_other_writers_are_read_and_never_cut(tmp_path):
    e = entry(tmp_path)
    other = e.dir / "grades-x.main.otherhost-1-abcdef.jsonl"
    other.write_text('{"problem_id": "p1", "index": 0, "correct": true}\n{"problem_id": "p1", "in')
    e.append_sidecar("grades-x", [{"problem_id": "p1", "index": 1, "correct": False}])
    assert other.read_text().endswith('"in')
    assert sorted(r["index"] for r in entry(tmp_path).read_sidecars("grades-x")) == [0, 1]
    assert e.sidecar("grades-x") != other and e.sidecar("grades-x").exists()


def test_sidecar_line_that_is_not_an_object_is_a_one_line_data_error(tmp_path):
    e = entry(tmp_path)
    e.append_sidecar("grades-x", [{"problem_id": "p1", "index": 0, "correct": True}])
    with open(e.sidecar("grades-x"), "a") as f:
        f.write("[1, 2]\n")
    with pytest.raises(DataError, match=r"grades-x\.main\.[^/]*\.jsonl:2: "):
        entry(tmp_path).read_sidecars("grades-x")


# ---- several processes filling one entry ---------------------------------------------------------------------
class SlowCountingSampler(CountingSampler):
    """Yields to the other processes between samples so that their draws overlap."""

    def sample(self, requests, params):
        import time

        for completion in super().sample(requests, params):
            time.sleep(0.002)
            yield completion


def _fill(root, prompts, n, barrier, results):
    store_entry = SampleStore(root).entry("m@src", "sha", "prompt", "fp", PARAMS)
    sampler = SlowCountingSampler()
    barrier.wait()
    df = draw_samples(store_entry, sampler, prompts, n, PARAMS, progress=False)
    results.put((writer_id(), sampler.drawn, len(df)))


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_filling_one_entry_draw_each_sample_once(tmp_path, processes):
    """Measured on the old code: 2 processes on 24 keys x 2 both drew all 48; 3 processes: 144 duplicate rows."""
    prompts = {f"p{i:02d}": f"Q{i}" for i in range(24)}
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_fill, args=(tmp_path, prompts, 2, barrier, results)) for _ in range(processes)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    drawn = [key for _, keys, _ in reports for key in keys]
    assert sorted(drawn) == sorted((pid, i) for pid in prompts for i in range(2))  # each exactly once
    assert all(rows == 48 for _, _, rows in reports)  # every process sees the whole entry
    lines = [json.loads(line) for p in entry(tmp_path).shard_files() for line in p.read_text().splitlines()]
    assert len(lines) == 48 and len({(r["problem_id"], r["index"]) for r in lines}) == 48
    assert len({w for w, _, _ in reports}) == processes


def test_a_claimed_problem_is_left_to_its_holder_then_finished_if_it_died(tmp_path):
    """A problem another process holds is not drawn at once; once it lets go, only what it left missing is drawn."""
    import fcntl

    e = entry(tmp_path)
    ctx = multiprocessing.get_context("fork")
    holding, release = ctx.Event(), ctx.Event()

    def hold_p1_draw_one_and_die():
        e.lock("p1").parent.mkdir(parents=True, exist_ok=True)
        with open(e.lock("p1"), "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            e.append(CountingSampler().sample([SampleRequest("p1", "Q1", (0,))], PARAMS))
            holding.set()
            release.wait(120)

    class ReleasesTheHolder(CountingSampler):
        def sample(self, requests, params):
            self.batches = getattr(self, "batches", []) + [[r.key for r in requests]]
            release.set()
            yield from super().sample(requests, params)

    holder = ctx.Process(target=hold_p1_draw_one_and_die)
    holder.start()
    assert holding.wait(120)
    sampler = ReleasesTheHolder()
    df = draw_samples(entry(tmp_path), sampler, PROMPTS, 2, PARAMS, progress=False)
    holder.join(60)
    assert len(df) == 6 and df.attrs["drawn_now"] == 5
    assert sampler.batches == [["p2", "p3"], ["p1"]]  # p1 waited for its holder
    assert ("p1", 0) not in sampler.drawn and ("p1", 1) in sampler.drawn


# ---- migrating entries keyed by path ---------------------------------------------------------------------------
def _old_entry(root, model, rows):
    """An entry as the path-keyed store wrote it: `name@<absolute path>`, no numerics, one shared shard file."""
    key = {"model": model, "data_sha256": "sha", "prompt": "prompt", "prompt_fingerprint": "fp", "params": PARAMS.as_dict()}
    d = root / model.split("@")[0] / "0123456789abcdef"
    d.mkdir(parents=True)
    (d / "key.json").write_text(json.dumps(key))
    (d / "samples.main.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "grades-x.main.jsonl").write_text('{"problem_id": "p1", "index": 0, "correct": true}\n')
    return d


def test_migrate_rekeys_entries_whose_model_file_exists_and_keeps_the_rest(tmp_path, monkeypatch, capsys):
    from harness.models import identity
    from harness.store import migrate

    monkeypatch.setenv(identity.HASH_CACHE_ENV, str(tmp_path / "hash-cache.json"))
    weights = tmp_path / "models" / "m.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"GGUF weights")
    rows = [{"problem_id": "p1", "index": i, "text": f"t{i}", "num_tokens": 1, "prompt_tokens": 2,
             "finish_reason": "eos"} for i in range(3)]
    root = tmp_path / "store"
    old = _old_entry(root, f"small@{weights}", rows)
    gone = _old_entry(root, f"gone@{tmp_path / 'nowhere.gguf'}", rows)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert migrate.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 re-keyed, 0 already current, 1 left" in out and "gone/0123456789abcdef" in out
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing deleted or changed
    assert not (gone / "migrated.json").exists()

    expected = f"sha256:{identity.file_sha256(weights)[:16]}/float32"
    e = SampleStore(root).entry(expected, "sha", "prompt", "fp", PARAMS, {"matmul_dtype": "float32"})
    assert e.dir.parent == old.parent and list(e.frame()["text"]) == ["t0", "t1", "t2"]
    assert e.read_sidecars("grades-x") == [{"problem_id": "p1", "index": 0, "correct": True}]
    sampler = CountingSampler()
    draw_samples(e, sampler, {"p1": "Q"}, 4, PARAMS, progress=False)
    assert sampler.drawn == [("p1", 3)]

    assert migrate.main(["--root", str(root)]) == 0  # idempotent
    assert "0 re-keyed, 2 already current, 1 left" in capsys.readouterr().out
