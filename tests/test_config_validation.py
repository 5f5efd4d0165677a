"""Start-up validation: every sampling node's values and the published numbers are checked before any model
loads, with a one-line error naming the key or file; YAML is the one source of defaults; the selection
methods, k grid, per-problem Monte Carlo seeds and paired bootstrap have one home (harness.selection.metrics)."""
import dataclasses
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, OmegaConf

from harness.cli import CONF_DIR
from harness.config import SamplingConfig, check_sampling
from harness.errors import ConfigError
from harness.selection import metrics


def _compose(name, overrides=()):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


BAD_SAMPLING = [
    ("sampling.temperature=-1", "sampling.temperature"),
    ("sampling.max_new_tokens=0", "sampling.max_new_tokens"),
    ("sampling.top_p=1.5", "sampling.top_p"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_k=-5", "sampling.top_k"),
]


def _paper_main(paper, monkeypatch):
    """The module's real entry point, with everything after start-up replaced by a tripwire."""
    import importlib

    module = importlib.import_module(f"replications.{paper}.__main__")

    def must_not_start(*args, **kwargs):
        raise AssertionError("the run started (a model would load) before the config was rejected")

    for name in ("start_run", "setup_experiment"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, must_not_start)
    if hasattr(module, "loop"):
        monkeypatch.setattr(module.loop, "setup", must_not_start)
    return module.main


def _run_cli(paper, overrides, tmp_path, monkeypatch, capsys):
    main = _paper_main(paper, monkeypatch)
    monkeypatch.setattr(sys, "argv", [paper, f"hydra.run.dir={tmp_path / 'run'}", "progress=false", *overrides])
    with pytest.raises(SystemExit) as exit_info:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exit_info.value.code, lines


@pytest.mark.parametrize("override,key", BAD_SAMPLING)
def test_bad_sampling_value_exits_2_with_one_line_before_the_run_starts(override, key, tmp_path, monkeypatch, capsys):
    code, lines = _run_cli("monkeys", [override], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and f"'{key}'" in lines[0], lines


@pytest.mark.parametrize("paper,override,key", [
    ("rest", "rest.eval.sampling.temperature=-0.5", "rest.eval.sampling.temperature"),
    ("rest", "rest.eval.sampling.top_p=2", "rest.eval.sampling.top_p"),
    ("compute_optimal", "sampling.top_k=-1", "sampling.top_k"),
    ("compute_optimal", "compute_optimal.greedy.max_new_tokens=0", "compute_optimal.greedy.max_new_tokens"),
    ("monkeys", "monkeys.greedy_baseline.max_new_tokens=0", "monkeys.greedy_baseline.max_new_tokens"),
])
def test_nested_sampling_nodes_are_checked_too(paper, override, key, tmp_path, monkeypatch, capsys):
    code, lines = _run_cli(paper, [override], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert len(lines) == 1 and f"'{key}'" in lines[0], lines


def test_missing_or_malformed_published_file_fails_at_start_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMREP_PUBLISHED", str(tmp_path / "published"))
    code, lines = _run_cli("monkeys", [], tmp_path, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "monkeys.yaml" in lines[0], lines

    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "monkeys.yaml").write_text("paper: x\narxiv: '1'\nsetup: {}\nnumbers: []\n")
    code, lines = _run_cli("monkeys", [], tmp_path, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "monkeys.yaml" in lines[0] and "setup" in lines[0], lines


def test_default_configs_pass_the_start_up_checks():
    for name in ("monkeys", "compute_optimal", "rest"):
        check_sampling(_compose(name))


def test_sampling_config_check_names_the_nested_key():
    with pytest.raises(ConfigError, match=r"'rest\.eval\.sampling\.top_k'"):
        SamplingConfig(temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=8, seed=0).check("rest.eval.sampling")


# ---- YAML is the one source of defaults -------------------------------------------------------------------------


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def _disagreements(schema, yaml_node, where):
    """Fields whose dataclass default differs from the YAML's value (fields without a default are fine)."""
    out = []
    for f in dataclasses.fields(schema):
        if f.name not in yaml_node:
            continue
        default, value = _default(f), yaml_node[f.name]
        key = f"{where}.{f.name}"
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None) or (
                default is not MISSING and dataclasses.is_dataclass(default)):
            out += _disagreements(type(default) if dataclasses.is_dataclass(default) else f.type, value, key)
        elif default is not MISSING and default != value:
            out.append(f"{key}: dataclass {default!r} vs YAML {value!r}")
    return out


def _schemas():
    from harness.config import BootstrapConfig, RunKeys, StoreConfig
    from replications.compute_optimal.config import ComputeOptimalConfig
    from replications.monkeys.config import MonkeysConfig

    for paper in ("monkeys", "compute_optimal", "rest"):
        cfg = OmegaConf.to_container(_compose(paper), resolve=True)
        yield paper, SamplingConfig, cfg["sampling"], "sampling"
        yield paper, StoreConfig, cfg["store"], "store"
        yield paper, RunKeys, cfg, ""
    yield "monkeys", MonkeysConfig, OmegaConf.to_container(_compose("monkeys").monkeys), "monkeys"
    yield "compute_optimal", ComputeOptimalConfig, OmegaConf.to_container(
        _compose("compute_optimal").compute_optimal), "compute_optimal"
    yield "monkeys", BootstrapConfig, OmegaConf.to_container(_compose("monkeys").monkeys.bootstrap), "bootstrap"


def test_schema_defaults_agree_with_the_yaml_or_do_not_exist():
    problems = [p for paper, schema, node, where in _schemas() for p in _disagreements(schema, node, where)]
    assert not problems, problems


def test_paper_presets_put_the_analysis_defaults_under_the_paper_key():
    # a preset's `- default` used to land at the top level, leaving the paper's node to the schema's defaults
    for name, preset in (("monkeys", "monkeys=paper_math"), ("compute_optimal", "compute_optimal=paper_gsm8k_pythia")):
        cfg = _compose(name, [preset])
        assert "bootstrap" not in cfg and cfg[name].bootstrap.num_resamples == 2000


# ---- one home for selection -------------------------------------------------------------------------------------


def test_canonical_names_and_aliases():
    assert metrics.METHODS == ("majority", "weighted_vote", "best_of_k", "pass@k")
    assert {metrics.canonical_method(m) for m in ("majority_vote", "rm_weighted_vote", "rm_best_of_n", "coverage")} \
        == set(metrics.METHODS)
    with pytest.raises(ValueError, match="unknown selection method"):
        metrics.canonical_method("oracle")


def test_k_grid_is_one_function():
    from replications.compute_optimal.config import budgets, check_config

    assert metrics.k_grid(12) == [1, 2, 4, 8, 12]
    assert metrics.k_grid(8) == [1, 2, 4, 8]
    assert metrics.k_grid(10, [0, 3, 3, 11, 5]) == [3, 5]
    co = check_config(_compose("compute_optimal"))
    assert budgets(co, 32) == metrics.k_grid(32)


def _records(rng, ids, n=40):
    recs = []
    for pid in ids:
        answers = [str(a) for a in rng.integers(0, 4, n)]
        recs.append({"problem_id": pid, "answers": answers, "correct": [a == "0" for a in answers],
                     "scores": list(rng.random(n))})
    return recs


@pytest.mark.parametrize("method", ["majority", "weighted_vote"])
def test_a_problems_monte_carlo_estimate_does_not_move_when_problems_are_added(method):
    base = _records(np.random.default_rng(0), ["a", "b"])
    more = _records(np.random.default_rng(1), ["0", "c", "d"]) + base  # "a" is now at index 3, not 0
    kwargs = dict(method=method, seed=3, num_subsets=30, exact_limit=0)
    alone = metrics.per_problem_values(base, [5, 20], **kwargs)
    mixed = metrics.per_problem_values(more, [5, 20], **kwargs)
    np.testing.assert_array_equal(alone, mixed[3:])
    other_seed = metrics.per_problem_values(base, [5, 20], **{**kwargs, "seed": 4})
    assert not np.array_equal(alone, other_seed)  # the seed still matters


def test_paired_bootstrap_difference_and_ci():
    a = np.array([1.0] * 30 + [0.0] * 10)
    b = np.array([0.0] * 30 + [0.0] * 10)
    d = metrics.paired_bootstrap(a, b, n_boot=500, seed=0)
    assert d.n == 40 and d.mean == pytest.approx(0.75) and 0 < d.ci_low < 0.75 < d.ci_high <= 1
    assert d.status == "holds" and metrics.paired_bootstrap(b, a, n_boot=500).status == "fails"
    assert metrics.paired_bootstrap(a, a, n_boot=100).status == "inconclusive"
    with pytest.raises(ValueError, match="same problems"):
        metrics.paired_bootstrap(a, b[:-1])
