"""Published numbers: every results/published/*.yaml validates; malformed files fail with the field named;
side_by_side never alters a regenerated value and labels published values with their source."""
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.errors import DataError
from harness.reporting.published import DEFAULT_ROOT, load_all, load_published, side_by_side

PAPERS = ["monkeys", "compute_optimal", "rest", "self_rewarding", "r3", "easy_to_hard"]
FIXTURE = Path(__file__).parent / "fixtures" / "published" / "valid.yaml"


@pytest.mark.parametrize("paper", PAPERS)
def test_every_paper_file_loads_and_validates(paper):
    pub = load_published(paper)
    assert pub.arxiv and pub.title and len(pub) > 0 and pub.setup
    ids = [e.id for e in pub]
    assert len(ids) == len(set(ids))
    for e in pub:
        assert isinstance(e.value, float) and e.source
        if e.unit == "fraction":
            assert 0.0 <= e.value <= 1.0, e.id
        if e.secondary:
            assert e.site, e.id


def test_no_stray_files_and_all_load():
    assert sorted(load_all()) == sorted(PAPERS)
    assert sorted(p.stem for p in DEFAULT_ROOT.glob("*.yaml")) == sorted(PAPERS)


def test_select_filters_on_fields_and_setting_keys():
    pub = load_published("compute_optimal")
    hits = pub.select(metric="rm_weighted_vote", dataset="math500", model="Llemma-7B", strategy="rebase", budget_samples=32)
    assert {e.id for e in hits} == {"tab1_math500_llemma_7b_rebase_wv_32", "tab4_math500_llemma_7b_rebase_wv"}
    assert all(e.value == pytest.approx(0.468) for e in hits)
    assert pub.select(metric="rm_weighted_vote", no_such_setting=1) == []
    # numbers match by value whatever their Python type
    assert pub.select(metric="accuracy", model="Mistral-7B", dataset="gsm8k", budget_samples=1.0)[0].value == pytest.approx(0.779)


def test_fixture_is_valid():
    assert len(load_published("valid", FIXTURE.parent)) == 2


def _broken(tmp_path, edit) -> Path:
    raw = yaml.safe_load(FIXTURE.read_text())
    edit(raw)
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return tmp_path


@pytest.mark.parametrize("edit,named", [
    (lambda r: r["numbers"][1].update(value="0.5"), "field 'value'"),
    (lambda r: r["numbers"][1].pop("source"), "field 'source'"),
    (lambda r: r["numbers"][1].update(value=1.7), "unit is fraction"),
    (lambda r: r["numbers"][1].update(unit="percentage"), "field 'unit'"),
    (lambda r: r["numbers"][1].update(approximate="yes"), "field 'approximate'"),
    (lambda r: r["numbers"][1].update(id="cov_k1"), "duplicate id"),
    (lambda r: r["numbers"][1].update(secondary=True), "field 'site'"),
    (lambda r: r["numbers"][1].update(setting={"k": [1, 2]}), "field 'setting'"),
    (lambda r: r["numbers"][1].update(metric="Coverage@k"), "field 'metric'"),
    (lambda r: r["numbers"][1].update(colour="red"), "unknown field 'colour'"),
    (lambda r: r["setup"]["temperature"].pop("source"), "setup.temperature"),
    (lambda r: r.pop("arxiv"), "'arxiv'"),
])
def test_malformed_file_raises_data_error_naming_file_entry_and_field(tmp_path, edit, named):
    root = _broken(tmp_path, edit)
    with pytest.raises(DataError) as err:
        load_published("broken", root)
    msg = str(err.value)
    assert "broken.yaml" in msg and named in msg
    if "numbers" in msg:
        assert "numbers[1]" in msg
    assert "\n" not in msg


def test_duplicate_yaml_key_and_missing_file_are_data_errors(tmp_path):
    text = FIXTURE.read_text().replace("arxiv: '0000.00000'", "arxiv: '0000.00000'\narxiv: '1111.11111'")
    assert text != FIXTURE.read_text()
    (tmp_path / "dup.yaml").write_text(text)
    with pytest.raises(DataError, match="duplicate key 'arxiv'"):
        load_published("dup", tmp_path)
    with pytest.raises(DataError, match="no published numbers for paper 'nope'"):
        load_published("nope", tmp_path)


def _regenerated() -> pd.DataFrame:
    return pd.DataFrame({"metric": "coverage", "k": [1, 2, 4, 64], "coverage": [0.123456789, 0.2, 1 / 3, 0.9],
                         "ci_low": [0.1, 0.15, 0.3, 0.85], "ci_high": [0.15, 0.25, 0.36, 0.95],
                         "n_problems": [30, 30, 30, 30], "model": "SmolLM2-135M-Instruct"})


def test_side_by_side_keeps_regenerated_values_and_labels_published():
    ours = _regenerated()
    before = ours.copy(deep=True)
    entries = load_published("valid", FIXTURE.parent).select(metric="coverage")
    out = side_by_side(ours, entries, join_on=["metric", "k"])
    pd.testing.assert_frame_equal(ours, before)  # the input is not touched

    mine = out[out["coverage"].notna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine[list(before.columns)].astype(before.dtypes.to_dict()), before)
    assert list(mine["n_problems"]) == [30, 30, 30, 30] and all(type(v) is int for v in mine["n_problems"])

    k1 = mine[mine["k"] == 1].iloc[0]
    assert k1["published_value"] == 0.26 and k1["published_model"] == "Paper-Model-8B"
    assert k1["model"] == "SmolLM2-135M-Instruct"
    assert "Fig. 7" in k1["published_source"] and "read off plot" in k1["published_source"]
    assert k1["published_approximate"] is True

    k2 = mine[mine["k"] == 2].iloc[0]  # nothing published at k=2: empty, never 0
    assert math.isnan(k2["published_value"]) and pd.isna(k2["published_source"]) and pd.isna(k2["published_model"])

    extra = out[out["coverage"].isna()]  # published at k=10000 only: appended, regenerated side empty
    assert list(extra["k"]) == [10000] and extra["published_value"].iloc[0] == 0.95
    assert extra["n_problems"].iloc[0] is None


def test_side_by_side_left_join_and_bad_keys():
    entries = load_published("valid", FIXTURE.parent).entries
    out = side_by_side(_regenerated(), entries, join_on=["metric", "k"], how="left")
    assert len(out) == 4 and out["published_value"].notna().sum() == 1
    with pytest.raises(ValueError, match="join keys"):
        side_by_side(_regenerated(), entries, join_on=["metric", "samples"])


def test_side_by_side_matches_several_published_models_and_real_file():
    pub = load_published("monkeys")
    entries = [e for e in pub.select(metric="coverage", dataset="math")
               if e.model in ("Llama-3-8B-Instruct", "Llama-3-70B-Instruct")]
    out = side_by_side(_regenerated(), entries, join_on=["metric", "k"])
    at1 = out[(out["k"] == 1) & out["coverage"].notna()]
    assert set(at1["published_model"]) == {"Llama-3-8B-Instruct", "Llama-3-70B-Instruct"}
    assert (at1["coverage"] == 0.123456789).all()
    secondary = out[out["published_id"] == "sec_math_l3_8b_coverage_k100"]
    assert "secondary:" in secondary["published_source"].iloc[0]


def test_side_by_side_sorts_by_join_keys_with_published_only_rows_interleaved():
    entries = load_published("valid", FIXTURE.parent).entries
    ours = _regenerated().iloc[::-1].reset_index(drop=True)  # regenerated rows in descending k
    out = side_by_side(ours, entries, join_on=["metric", "k"])
    assert list(out["k"]) == [1, 2, 4, 64, 10000]
    unsorted = side_by_side(ours, entries, join_on=["metric", "k"], sort=False)
    assert list(unsorted["k"]) == [64, 4, 2, 1, 10000]
    assert list(unsorted["coverage"].iloc[:4]) == list(ours["coverage"])
