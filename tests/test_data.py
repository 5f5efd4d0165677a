"""harness.data.problems: parsing, subset selection, sharding, errors, and the local data root."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.data import problems as data
from harness.data.problems import (
    DatasetConfig,
    Problem,
    dataset_config,
    load_problems,
    load_split,
    resolve_data_root,
)
from harness.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
LOCAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_local = pytest.mark.skipif(not (LOCAL_ROOT / "gsm8k" / "test.jsonl").is_file(), reason="no local data root")


def cfg(name: str = "gsm8k", **over) -> DatasetConfig:
    base = OmegaConf.load(data.DATASET_CONF_DIR / f"{name}.yaml")
    return data.as_dataset_config(OmegaConf.merge(base, over))


# --- parsing ---------------------------------------------------------------------------------


def test_gsm8k_fixture_rows_become_problems():
    ps = load_problems(cfg("gsm8k"), FIXTURES)
    assert [p.id for p in ps] == [f"gsm8k/test/{i}" for i in range(5)]
    first, second, last = ps[0], ps[1], ps[4]
    assert first.dataset == "gsm8k"
    assert first.answer == "7"
    assert first.solution == "She has 3 + 4 = 7 apples."  # <<calc>> removed, "#### 7" cut
    assert first.metadata["raw_answer"].endswith("<<3+4=7>>7 apples.\n#### 7")
    assert second.answer == "1200"  # commas removed
    assert last.answer == "-3"
    assert ps[3].solution == "The discount is 20 * 0.25 = $5.\nThe price is 20 - 5 = $15."


def test_math_fixture_rows_keep_level_subject_and_unique_id():
    ps = load_problems(cfg("math"), FIXTURES)
    assert ps.ids[:2] == ["test/algebra/1.json", "test/algebra/7.json"]
    frac = ps[3]
    assert frac.answer == "\\frac{3}{4}" and frac.metadata["level"] == 5 and frac.metadata["subject"] == "Prealgebra"
    unlabeled = ps[4]
    assert unlabeled.metadata["level"] is None and unlabeled.metadata["level_raw"] == "Level ?"
    assert ps[2].metadata["subject_id"] == "counting_and_probability"


def test_problem_is_hashable_and_frozen():
    p = load_problems(cfg("gsm8k"), FIXTURES)[0]
    assert len({p, p}) == 1
    with pytest.raises(AttributeError):
        p.answer = "8"  # type: ignore[misc]


# --- selection -------------------------------------------------------------------------------


def test_seed_none_keeps_file_order_and_offset_limit_slice_it():
    ps = load_problems(cfg("gsm8k", offset=1, limit=3), FIXTURES)
    assert ps.ids == ["gsm8k/test/1", "gsm8k/test/2", "gsm8k/test/3"]


def test_seeded_subset_is_deterministic_and_seed_dependent():
    a = load_problems(cfg("gsm8k", seed=0, limit=4), FIXTURES).ids
    b = load_problems(cfg("gsm8k", seed=0, limit=4), FIXTURES).ids
    others = {tuple(load_problems(cfg("gsm8k", seed=s, limit=4), FIXTURES).ids) for s in range(1, 6)}
    assert a == b
    assert len(set(a)) == 4
    assert others - {tuple(a)}, "a different seed should give a different subset or order"


def test_limit_on_a_seeded_subset_is_a_prefix_of_the_larger_one():
    small = load_problems(cfg("gsm8k", seed=3, limit=2), FIXTURES).ids
    full = load_problems(cfg("gsm8k", seed=3), FIXTURES).ids
    assert full[:2] == small


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_subset_exactly(count):
    subset = load_problems(cfg("gsm8k", seed=1, limit=4), FIXTURES).ids
    shards = [
        load_problems(cfg("gsm8k", seed=1, limit=4, shard={"index": i, "count": count}), FIXTURES).ids
        for i in range(count)
    ]
    flat = [pid for shard in shards for pid in shard]
    assert sorted(flat) == sorted(subset)
    assert len(flat) == len(set(flat))
    # stride: position % count == index within the subset
    assert all(shards[i] == subset[i::count] for i in range(count))


def test_bad_shard_and_offset_are_config_errors():
    with pytest.raises(ConfigError, match="dataset.shard"):
        load_problems(cfg("gsm8k", shard={"index": 2, "count": 2}), FIXTURES)
    with pytest.raises(ConfigError, match="dataset.offset"):
        load_problems(cfg("gsm8k", offset=5), FIXTURES)
    with pytest.raises(ConfigError, match="dataset.limit"):
        load_problems(cfg("gsm8k", limit=0), FIXTURES)


def test_unknown_config_key_is_a_config_error():
    bad = OmegaConf.merge(OmegaConf.load(data.DATASET_CONF_DIR / "gsm8k.yaml"), {"limt": 3})
    with pytest.raises(ConfigError, match="limt"):
        load_problems(bad, FIXTURES)


def test_levels_filter_applies_before_limit():
    ps = load_problems(cfg("math", levels=[1, 2, 3]), FIXTURES)
    assert ps.ids == ["test/algebra/1.json", "test/algebra/7.json", "test/counting_and_probability/3.json"]
    assert load_problems(cfg("math", levels=[2, 3], limit=1), FIXTURES).ids == ["test/algebra/7.json"]


def test_subjects_filter_accepts_names_and_directories():
    by_name = load_problems(cfg("math", subjects=["Counting & Probability", "prealgebra"]), FIXTURES).ids
    assert by_name == ["test/counting_and_probability/3.json", "test/prealgebra/11.json"]
    with pytest.raises(ConfigError, match="dataset.subjects.*'topology'"):
        load_problems(cfg("math", subjects=["topology"]), FIXTURES)


def test_provenance_names_file_hash_and_selection():
    ps = load_problems(cfg("gsm8k", seed=0, limit=2), FIXTURES)
    prov = ps.provenance()
    raw = (FIXTURES / "gsm8k" / "test.jsonl").read_bytes()
    assert prov["sha256"] == hashlib.sha256(raw).hexdigest()
    assert prov["source"] == str((FIXTURES / "gsm8k" / "test.jsonl").resolve())
    assert prov["rows"] == 5 and prov["selected"] == 2
    assert prov["selection"]["seed"] == 0 and prov["selection"]["limit"] == 2
    assert prov["ids_sha256"] == hashlib.sha256("\n".join(ps.ids).encode()).hexdigest()


# --- errors ----------------------------------------------------------------------------------


def _write(tmp_path: Path, rel: str, lines: list[str]) -> Path:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_json_row_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    path = _write(tmp_path, "gsm8k/test.jsonl", [good, good, '{"question": "q", "answer": '])
    with pytest.raises(DataError) as err:
        load_problems(cfg("gsm8k"), tmp_path)
    assert str(err.value).startswith(f"{path}:3: invalid JSON")
    assert "\n" not in str(err.value)


def test_missing_field_names_file_line_and_field(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1"})
    path = _write(tmp_path, "gsm8k/test.jsonl", [good, json.dumps({"answer": "a\n#### 2"})])
    with pytest.raises(DataError, match=rf"^{path}:2: missing field 'question'$"):
        load_problems(cfg("gsm8k"), tmp_path)


def test_non_utf8_row_names_file_and_line(tmp_path):
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(json.dumps({"question": "q", "answer": "a\n#### 1"}).encode() + b"\n{\"question\": \"\xff\"}\n")
    with pytest.raises(DataError, match=rf"^{path}:2: not UTF-8"):
        load_problems(cfg("gsm8k"), tmp_path)


def test_gsm8k_answer_without_final_answer_is_an_error(tmp_path):
    path = _write(tmp_path, "gsm8k/test.jsonl", [json.dumps({"question": "q", "answer": "no marker"})])
    with pytest.raises(DataError, match=rf"^{path}:1: field 'answer' has no '####'"):
        load_problems(cfg("gsm8k"), tmp_path)


def test_math_bad_level_is_an_error(tmp_path):
    row = {"problem": "p", "solution": "s", "answer": "1", "subject": "Algebra", "level": "Level 2"}
    row["unique_id"] = "test/algebra/1.json"
    path = _write(tmp_path, "math/test.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=rf"^{path}:1: field 'level'"):
        load_problems(cfg("math"), tmp_path)


def test_empty_file_is_one_line_naming_it(tmp_path):
    path = _write(tmp_path, "gsm8k/test.jsonl", [])
    with pytest.raises(DataError, match=rf"^{path}: no problems in the file") as err:
        load_problems(cfg("gsm8k"), tmp_path)
    assert "\n" not in str(err.value)


def test_selection_that_leaves_nothing_is_one_line_naming_file_and_selection():
    with pytest.raises(DataError, match=r"math/test.jsonl: the selection .*'levels': \[9\].* leaves none of its \d+ problems") as err:
        load_problems(cfg("math", levels=[9]), FIXTURES)
    assert "\n" not in str(err.value)


def test_missing_file_offline_is_one_line_naming_root_and_hub(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # no cached copy to fall back on
    root = tmp_path / "no-such-root"
    with pytest.raises(DataError) as err:
        load_problems(cfg("gsm8k"), root)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(root) in msg and "gsm8k/test.jsonl" in msg and "openai/gsm8k" in msg


# --- data root -------------------------------------------------------------------------------


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMREP_DATA_ROOT", raising=False)
    assert resolve_data_root() == (data.PROJECT_ROOT / ".." / "shared" / "data").resolve()
    monkeypatch.setenv("LLMREP_DATA_ROOT", str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()
    assert resolve_data_root(FIXTURES) == FIXTURES.resolve()
    monkeypatch.setenv("LLMREP_DATA_ROOT", str(FIXTURES))
    assert load_problems(cfg("gsm8k")).total == 5


@needs_local
@pytest.mark.parametrize(
    "name,rows,sha",
    [
        ("gsm8k", 1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
        ("gsm8k_train", 7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
        ("math", 5000, "9b384a8a696fad45d4b5bd2ff2947af6fc77a4461b7dd37df4787c622ee7a19f"),
        ("math_train", 7500, "0a0213daafb403c53459ef2ca14ea796e7e72af3e282a3373a8e5672d972c491"),
        ("math500", 500, "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
    ],
)
def test_local_root_matches_provenance(name, rows, sha):
    ps = load_problems(dataset_config(name), LOCAL_ROOT)
    assert (len(ps), ps.total, ps.sha256) == (rows, rows, sha)
    assert len(set(ps.ids)) == rows


@needs_local
def test_local_gsm8k_first_problem_and_math_train_unlabeled_levels():
    first = load_problems(dataset_config("gsm8k"), LOCAL_ROOT)[0]
    assert first.id == "gsm8k/test/0" and first.answer == "18" and first.question.startswith("Janet")
    train = load_split("math", "train", LOCAL_ROOT)
    unlabeled = [p for p in train if p.metadata["level"] is None]
    assert [p.id for p in unlabeled] == ["train/geometry/377.json", "train/geometry/471.json"]
    assert all(p.metadata["level_raw"] == "Level ?" for p in unlabeled)
    easy = load_problems(cfg("math_train", levels=[1]), LOCAL_ROOT)
    assert len(easy) == 564 and all(p.metadata["level"] == 1 for p in easy)


@needs_local
def test_math500_ids_are_math_test_ids():
    test_ids = set(load_split("math", "test", LOCAL_ROOT).ids)
    m500 = load_split("math", "math500", LOCAL_ROOT)
    assert set(m500.ids) <= test_ids and isinstance(m500[0], Problem)
