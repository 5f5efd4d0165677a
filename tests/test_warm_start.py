"""harness.training.warm_start: content-keyed SFT warm start (tiny random model, a few steps)."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.reporting.paths import absolute_paths_in
from harness.training import warm_start as ws
from harness.training.checkpoints import is_checkpoint

TINY = "smollm2_135m_sft_tiny"


@pytest.fixture(autouse=True)
def generated_root(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LLMREP_GENERATED_ROOT", str(tmp_path_factory.getbasetemp() / "generated"))


def tiny(tmp_path, **warm_start_overrides) -> OmegaConf:
    cfg = ws.model_config(TINY)
    cfg.warm_start = OmegaConf.merge(cfg.warm_start, {"cache_dir": str(tmp_path / "ckpt")}, warm_start_overrides)
    return cfg


def test_cache_key_stays_without_change_and_moves_with_what_shapes_the_weights(tmp_path):
    key = ws.plan(tiny(tmp_path)).key
    assert ws.plan(tiny(tmp_path)).key == key
    # evaluation and reporting settings do not shape the weights
    assert ws.plan(tiny(tmp_path, eval={"per_level": 3}, report_dir="elsewhere")).key == key
    changed = [
        tiny(tmp_path, training={"learning_rate": 3e-4}),
        tiny(tmp_path, data={"levels": [1, 2]}),
        tiny(tmp_path, data={"per_level": 5}),
        tiny(tmp_path, prompt="ladder_chat"),
    ]
    other_base = tiny(tmp_path)
    other_base.random_init.seed = 1
    keys = [ws.plan(cfg).key for cfg in changed + [other_base]]
    assert key not in keys and len(set(keys)) == len(keys)


def test_trains_once_then_reuses_the_checkpoint(tmp_path, monkeypatch):
    from harness.models.loading import load_model

    cfg = tiny(tmp_path)
    folder = ws.warm_start_checkpoint(cfg)
    assert is_checkpoint(folder) and folder.parent == tmp_path / "ckpt"
    meta = json.loads((folder / "training.json").read_text())
    assert meta["cache_key"].startswith(folder.name.rsplit("-", 1)[1])
    assert meta["train"]["steps"] == 2 and meta["data"]["examples"] == 12

    def no_training(plan):
        raise AssertionError("trained again although nothing changed")

    monkeypatch.setattr(ws, "train", no_training)
    assert ws.warm_start_checkpoint(tiny(tmp_path)) == folder
    loaded = load_model(cfg)  # the model loader's warm_start hook finds the same folder
    assert loaded.source.endswith(folder.name)


def test_evaluation_and_report(tmp_path):
    from harness.models.loading import load_model

    cfg = ws.warm_start_config(tiny(tmp_path).warm_start)
    cfg.eval.levels = [1, 7]
    cfg.eval.max_new_tokens = 4
    result = ws.evaluate(load_model(ws.base_model_config(tiny(tmp_path))), cfg)
    assert set(result["levels"]) == {"1", "7"}
    assert all(v["n"] == 2 and 0 <= v["pass@1"] <= 1 for v in result["levels"].values())
    record = {"warm_start": {"name": "tiny", "prompt": "ladder", "data": {"levels": [1]}},
              "base_model": {"name": "tiny", "identity": "random:x/float32"}, "cache_key": "0" * 64,
              "data": {"examples": 12},
              "train": {"steps": 2, "seconds": 1.0, "supervised_tokens_per_s": 10.0, "tokens_per_s": 30.0,
                        "loss_before": None, "loss_after": None, "load_average": [1.0, 1.0, 1.0], "torch_threads": 1,
                        "log": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}], "source": str(tmp_path / "x")}}
    report = ws.write_report(tmp_path / "report", record, result, result, {"total": 1.0})
    text = report.read_text()
    assert "| 7 | 2 |" in text and (tmp_path / "report" / "loss.png").is_file()
    assert not absolute_paths_in([(tmp_path / "report" / "metrics.json").read_text()])


@pytest.mark.parametrize(
    "node, key",
    [
        ({"config": "default", "data": {"levls": [1]}}, "warm_start.data.levls"),
        ({"config": "default", "training": {"learning_rate": -1.0}}, "training.learning_rate"),
        ({"config": "default", "eval": {"per_level": 0}}, "warm_start.eval.per_level"),
        ({"config": "nope"}, "warm_start"),
    ],
)
def test_bad_warm_start_config_is_one_line(node, key):
    with pytest.raises(ConfigError) as err:
        ws.warm_start_config(node)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_every_warm_start_config_composes():
    for path in sorted(ws.WARM_START_CONF_DIR.glob("*.yaml")):
        cfg = ws.warm_start_config(path.stem)
        assert cfg.training.completion_only_loss  # loss on the completion tokens only
        assert cfg.data.levels is None or {1, 2, 3} <= set(cfg.data.levels)


def test_sft_model_configs_name_a_warm_start_over_the_embedded_model():
    sft = ws.model_config("smollm2_135m_sft")
    base = ws.base_model_config(sft)
    embedded = ws.model_config("smollm2_135m")
    assert {k: v for k, v in base.items() if k != "name"} == {k: v for k, v in embedded.items() if k != "name"}
    assert ws.warm_start_config(sft.warm_start).data.levels == [1, 2, 3]
    assert ws.warm_start_config(ws.model_config(TINY).warm_start).training.max_steps == 2


def test_cli_rejects_unknown_arguments(capsys):
    assert ws.main(["warm_start.data.levls=[1]"]) == 2
    assert ws.main(["lr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


# ---------------------------------------------------------------------------------------------
# issue 10's targets as claims, from a fabricated metrics.json (no model)


def level(mean: float, low: float, high: float, n: int = 50) -> dict:
    return {"n": n, "correct": round(mean * n), "pass@1": mean, "ci95": [low, high]}


def fabricated_metrics(**levels: dict) -> dict:
    """Seven levels spanning the frontier (every target met), with `L<k>=level(...)` replacing level k."""
    after = {"1": level(0.9, 0.8, 1.0), "2": level(0.95, 0.92, 0.98), "3": level(0.3, 0.2, 0.4),
             "4": level(0.25, 0.15, 0.35), "5": level(0.05, 0.0, 0.1), "6": level(0.0, 0.0, 0.0),
             "7": level(0.0, 0.0, 0.0)}
    after.update({name[1:]: value for name, value in levels.items()})
    train = {"steps": 2, "seconds": 1.0, "supervised_tokens_per_s": 10.0, "tokens_per_s": 30.0, "loss_before": None,
             "loss_after": None, "train_loss": 1.5, "load_average": [1.5, 1.2, 1.0], "torch_threads": 2,
             "cpu_seconds": 2.0, "log": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]}
    record = {"warm_start": {"name": "fab", "prompt": "ladder", "data": {"levels": [1, 2, 3]}, "eval": {"dataset": "ladder"}},
              "base_model": {"name": "tiny", "identity": "random:x/float32"}, "cache_key": "0" * 64,
              "data": {"examples": 12}, "train": train}
    wall = {"plan": 1.0, "eval_before": 100.0, "load": 20.0, "train": 480.0, "eval_after": 100.0, "total": 701.0}
    return {"training": record, "before": None, "after": {"levels": after, "seconds": 1.0, "generated_tokens": 10,
                                                         "truncated": 0}, "wall_seconds": wall}


def verdicts(metrics: dict) -> list[str]:
    return [c.status for c in ws.frontier_claims(metrics)]


def test_frontier_claims_hold_when_every_target_is_met_with_n_per_level():
    claims = ws.frontier_claims(fabricated_metrics())
    assert [c.status for c in claims] == ["holds"] * 4
    assert [c.n for c in claims] == [50, 50, 50, None]  # the time claim rests on no problem sample
    assert "level 7" in claims[1].evidence and "10% < greedy pass@1 < 90%" in claims[2].name


@pytest.mark.parametrize("ci, verdict", [((0.52, 0.6), "holds"), ((0.45, 0.55), "inconclusive"), ((0.3, 0.48), "fails")])
def test_level_one_claim_flips_as_its_ci_crosses_50_percent(ci, verdict):
    assert verdicts(fabricated_metrics(L1=level(sum(ci) / 2, *ci)))[0] == verdict


@pytest.mark.parametrize("ci, verdict", [((0.0, 0.08), "holds"), ((0.04, 0.16), "inconclusive"), ((0.12, 0.3), "fails")])
def test_top_level_claim_flips_as_its_ci_crosses_10_percent(ci, verdict):
    assert verdicts(fabricated_metrics(L7=level(sum(ci) / 2, *ci)))[1] == verdict


@pytest.mark.parametrize("level_four, verdict", [
    (level(0.25, 0.15, 0.35), "holds"),  # levels 3 and 4 clearly inside (10%, 90%)
    (level(0.08, 0.02, 0.14), "inconclusive"),  # level 4 only possibly inside
    (level(0.04, 0.0, 0.08), "fails"),  # level 4 clearly below: one level in between
    (level(0.95, 0.92, 0.98), "fails"),  # level 4 clearly above: solved
])
def test_in_between_claim_needs_two_levels_neither_at_the_floor_nor_solved(level_four, verdict):
    assert verdicts(fabricated_metrics(L4=level_four))[2] == verdict


@pytest.mark.parametrize("total, verdict", [(899.0, "holds"), (901.0, "fails"), (2950.0, "fails")])
def test_time_claim_fails_past_900_wall_seconds_and_states_the_load(total, verdict):
    metrics = fabricated_metrics()
    metrics["wall_seconds"]["total"] = total
    claim = ws.frontier_claims(metrics)[3]
    assert claim.status == verdict and "[1.5, 1.2, 1.0]" in claim.evidence and f"{total:.0f} s" in claim.evidence


def test_time_claim_is_inconclusive_when_training_was_reused_from_the_cache():
    metrics = fabricated_metrics()
    metrics["wall_seconds"] = {"plan": 1.0, "train (cached)": 0.0, "eval_after": 50.0, "total": 51.0}
    claim = ws.frontier_claims(metrics)[3]
    assert claim.status == "inconclusive" and "train (cached)" in claim.evidence


def test_report_only_rebuilds_report_and_claims_json_from_metrics(tmp_path, monkeypatch):
    from harness.reporting.claims import read_claims

    run_dir = tmp_path / "warm_start" / "fab"
    run_dir.mkdir(parents=True)
    metrics = fabricated_metrics(L4=level(0.04, 0.0, 0.08))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(ws, "train", lambda plan: pytest.fail("--report-only trained"))
    monkeypatch.setattr(ws, "evaluate", lambda *a: pytest.fail("--report-only sampled"))
    assert ws.main(["--report-only", f"warm_start.report_dir={tmp_path / 'warm_start'}", "warm_start.name=fab"]) == 0
    saved = read_claims(run_dir / "claims.json")
    assert (saved.paper, saved.run, saved.model, saved.dataset) == ("warm_start", "fab", "tiny", "ladder")
    assert [c.status for c in saved.claims] == ["holds", "holds", "fails", "holds"]
    text = (run_dir / "report.md").read_text()
    assert "| FAILS |" in text and "| 4 | 50 | - | 4.0% [0.0, 8.0] |" in text and (run_dir / "loss.png").is_file()


def test_report_only_without_metrics_is_one_line(tmp_path, capsys):
    assert ws.main(["--report-only", f"warm_start.report_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.json" in err and "\n" not in err


def test_committed_warm_start_claims_match_its_metrics():
    from harness.reporting.claims import read_claims

    run_dir = ws.PROJECT_ROOT / "results" / "warm_start" / "ladder_l1_3"
    if not (run_dir / "claims.json").is_file():
        pytest.skip("no committed warm-start claims.json")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert read_claims(run_dir / "claims.json").claims == tuple(ws.frontier_claims(metrics))
