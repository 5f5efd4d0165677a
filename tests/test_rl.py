"""harness.training.rl: one GRPO step end to end on the tiny random model (weights move, the per-step log has
reward / KL / length / zero-variance share, every completion's reward is recorded), with TRL's rollouts and
with the harness sampler's; config errors name their key."""
import pytest
import torch
from omegaconf import OmegaConf

from harness.cli import CONF_DIR
from harness.errors import ConfigError, DataError
from harness.models.loading import load_model
from harness.training.rl import LOG_FIELDS, rl_config, train_grpo, zero_variance_share

TINY = CONF_DIR / "model" / "tiny_random.yaml"
TRAINING = OmegaConf.load(CONF_DIR / "training" / "cpu_full.yaml")


def _rl(**overrides):
    node = {"num_generations": 3, "prompts_per_step": 2, "max_completion_length": 6, "beta": 0.05,
            "backend": {"name": "hf", "batch_size": 8},
            "training": OmegaConf.merge(TRAINING, {"learning_rate": 1e-3, "measure_loss": False})}
    node.update(overrides)
    return node


RECORDS = [{"prompt": f"Question: what is {i} + 1?\nAnswer:\n", "answer": str(i + 1), "problem_id": f"p{i}"} for i in range(2)]


def _varied(texts, rows, reasons):
    """Distinct rewards inside a group, so the advantages (and the update) are not zero."""
    return [float(len(t) % 5) for t in texts]


@pytest.mark.parametrize("rollout", ["trl", "harness"])
def test_one_grpo_step_moves_the_weights_and_logs_its_fields(tmp_path, rollout):
    loaded = load_model(OmegaConf.load(TINY))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    seen = []

    def reward(texts, rows, reasons):
        seen.append((list(texts), [dict(r) for r in rows], list(reasons)))
        return _varied(texts, rows, reasons)

    result = train_grpo(loaded.model, loaded.tokenizer, RECORDS, reward, _rl(rollout=rollout), tmp_path)
    assert result.steps == 1
    after = result.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    (row,) = result.log
    assert set(LOG_FIELDS) | {"step"} == set(row)
    for name in ("reward", "kl", "completion_length", "zero_variance_share"):
        assert row[name] is not None, name
    assert row["completion_length"] <= 6
    # the reward function saw each record's fields, G completions per prompt, in groups of the same prompt
    ((texts, rows, reasons),) = seen
    assert len(texts) == 6 and [r["problem_id"] for r in rows] == ["p0"] * 3 + ["p1"] * 3
    assert set(reasons) <= {"eos", "stop", "length"}
    assert [r["reward"] for r in result.rewards] == _varied(texts, rows, reasons)
    assert {(r["group"], r["problem_id"]) for r in result.rewards} == {(0, "p0"), (1, "p1")}
    assert row["zero_variance_share"] == pytest.approx(result.zero_variance_share())


def test_zero_variance_share_counts_groups_with_one_reward_value():
    rows = [{"step": 1, "group": 0, "reward": 1.0}, {"step": 1, "group": 0, "reward": 1.0},
            {"step": 1, "group": 1, "reward": 0.2}, {"step": 1, "group": 1, "reward": 0.0},
            {"step": 2, "group": 0, "reward": 0.0}, {"step": 2, "group": 0, "reward": 0.0}]
    assert zero_variance_share(rows) == pytest.approx(2 / 3)
    assert zero_variance_share([]) is None


@pytest.mark.parametrize("override, key", [
    ({"num_generations": 1}, "rl.num_generations"),
    ({"rollout": "vllm"}, "rl.rollout"),
    ({"rollout": "harness", "backend": None}, "rl.backend"),
    ({"scale_rewards": "sometimes"}, "rl.scale_rewards"),
    ({"temperature": 0.0}, "rl.temperature"),
    ({"training": None}, "rl.training"),
    ({"num_generatons": 4}, "rl.num_generatons"),
])
def test_bad_rl_config_names_its_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        rl_config(_rl(**override))
    assert "\n" not in str(err.value)


def test_records_must_split_into_steps_and_carry_prompts(tmp_path):
    loaded = load_model(OmegaConf.load(TINY))
    with pytest.raises(ConfigError, match="prompts_per_step"):
        train_grpo(loaded.model, loaded.tokenizer, RECORDS[:1], _varied, _rl(), tmp_path)
    with pytest.raises(DataError, match="prompt"):
        train_grpo(loaded.model, loaded.tokenizer, [{"answer": "1"}, {"answer": "2"}], _varied, _rl(), tmp_path)
