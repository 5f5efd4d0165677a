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
