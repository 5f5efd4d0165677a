"""harness.training: SFT on prompt/completion data lowers the loss, checkpoints load back as a policy
with a new identity, LoRA is merged, the config rejects bad values with the key named."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.cli import CONF_DIR
from harness.errors import ConfigError, DataError
from harness.models.loading import load_model
from harness.training import (
    TrainingData,
    export_model_config,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train_sft,
    training_config,
)

TINY = CONF_DIR / "model" / "tiny_random.yaml"


@pytest.fixture(scope="module")
def tiny():
    return load_model(OmegaConf.load(TINY))


def _data(tokenizer, n=8) -> TrainingData:
    records = []
    for i in range(n):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {i} plus {i}?"}], tokenize=False, add_generation_prompt=True
        )
        records.append({"prompt": prompt, "completion": f"{i} + {i} = {2 * i}. The answer is \\boxed{{{2 * i}}}.",
                        "problem_id": f"p{i}", "source": "sample"})
    return TrainingData(records, {"fixture": True})


def _fresh():
    return load_model(OmegaConf.load(TINY))


def test_sft_step_lowers_loss_on_kept_data(tmp_path):
    m = _fresh()
    data = _data(m.tokenizer)
    cfg = {"epochs": 4, "learning_rate": 3e-3, "batch_size": 4, "lr_scheduler": "constant"}
    result = train_sft(m.model, m.tokenizer, data, cfg, tmp_path / "scratch")
    assert result.steps == 8
    assert result.loss_before is not None and result.loss_after is not None
    assert result.loss_after < result.loss_before - 0.1
    assert not result.model.training  # handed back in eval mode, ready to sample


def test_completion_only_loss_ignores_the_prompt(tmp_path):
    from harness.training.sft import sft_config

    m = _fresh()
    from trl import SFTTrainer

    args = sft_config(training_config({"epochs": 1}), tmp_path)
    trainer = SFTTrainer(model=m.model, args=args, train_dataset=_data(m.tokenizer, 2).to_dataset(),
                         processing_class=m.tokenizer)
    row = trainer.train_dataset[0]
    prompt_len = len(m.tokenizer(_data(m.tokenizer, 1).records[0]["prompt"], add_special_tokens=False).input_ids)
    assert row["labels"][:prompt_len] == [-100] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert row["input_ids"][-1] == m.tokenizer.eos_token_id  # the completion ends the turn


def test_checkpoint_loads_as_next_policy(tmp_path, tiny):
    m = _fresh()
    data = _data(m.tokenizer, 4)
    result = train_sft(m.model, m.tokenizer, data, {"epochs": 1, "learning_rate": 1e-3, "measure_loss": False},
                       tmp_path / "scratch")
    ckpt = save_checkpoint(result.model, m.tokenizer, tmp_path / "checkpoints" / "iter1", name="tiny-rest-iter1",
                           chat_template=True, meta={"data": data.describe()})
    assert is_checkpoint(ckpt.dir) and not (tmp_path / "checkpoints" / "iter1.partial").exists()
    again = load_checkpoint(ckpt.dir)
    assert again.meta["data"]["sha256"] == data.sha256 and again.meta["weights_sha256"].startswith(ckpt.name[-8:])
    policy = again.load()
    assert policy.identity != tiny.identity  # the store never mixes its samples with the base model's
    assert policy.use_chat_template and policy.tokenizer.chat_template == tiny.tokenizer.chat_template
    for (name, a), b in zip(result.model.state_dict().items(), policy.model.state_dict().values()):
        assert torch.equal(a, b), name
    # The next iteration trains the loaded checkpoint further.
    more = train_sft(policy.model, policy.tokenizer, data, {"epochs": 1, "learning_rate": 1e-3, "measure_loss": False},
                     tmp_path / "scratch2")
    assert more.steps == 1


def test_checkpoint_selectable_from_hydra(tmp_path, tiny):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    ckpt = save_checkpoint(tiny.model, tiny.tokenizer, tmp_path / "ck", name="tiny", chat_template=True, meta={})
    export_model_config(ckpt, tmp_path / "conf", "rest_iter1")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="monkeys", overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=rest_iter1"])
    assert cfg.model.path == str(tmp_path / "ck") and cfg.model.name == ckpt.name
    assert load_model(cfg.model).identity == ckpt.load().identity


def test_lora_is_merged_into_a_plain_checkpoint(tmp_path, tiny):
    m = _fresh()
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    cfg = {"finetune": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "epochs": 2, "learning_rate": 1e-2,
           "measure_loss": False}
    result = train_sft(m.model, m.tokenizer, _data(m.tokenizer, 4), cfg, tmp_path / "scratch")
    ckpt = save_checkpoint(result.model, m.tokenizer, tmp_path / "lora", name="tiny-lora", chat_template=True, meta={})
    assert not list(Path(ckpt.dir).glob("adapter_*"))
    loaded = ckpt.load().model.state_dict()
    assert set(loaded) == set(before)
    assert any(not torch.equal(loaded[k], before[k]) for k in before if "proj" in k)


def test_training_data_hash_and_mix_counts():
    a = TrainingData([{"prompt": "p", "completion": "c", "source": "sample", "problem_id": "1"},
                      {"prompt": "p", "completion": "r", "source": "reference", "problem_id": "1"}])
    b = TrainingData([{"prompt": "p", "completion": "c", "source": "sample", "problem_id": "1", "reward": 1.0},
                      {"prompt": "p", "completion": "r", "source": "reference", "problem_id": "1"}])
    assert a.sha256 == b.sha256  # provenance columns do not change what the weights were fit to
    assert a.counts() == {"sample": 1, "reference": 1}
    with pytest.raises(DataError):
        TrainingData([]).to_dataset()


@pytest.mark.parametrize("override,key", [
    ({"finetune": "qlora"}, "training.finetune"),
    ({"precision": "fp8"}, "training.precision"),
    ({"learning_rate": "fast"}, "training.learning_rate"),
    ({"epochs": 0}, "training.epochs"),
    ({"colour": "red"}, "training.colour"),
])
def test_bad_training_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        training_config(override)


def test_bf16_needs_a_gpu_here():
    from harness.training import trainer_kwargs

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="training.precision"):
        trainer_kwargs(training_config({"precision": "bf16"}), "/tmp/x")


def test_every_training_config_validates():
    for path in sorted((CONF_DIR / "training").glob("*.yaml")):
        cfg = training_config(OmegaConf.load(path))
        assert cfg.name == path.stem, path


@pytest.mark.slow
def test_embedded_gguf_model_trains_and_reloads(tmp_path):
    """The GGUF-loaded SmolLM2 is marked quantized by transformers; training and saving must work."""
    m = load_model(OmegaConf.load(CONF_DIR / "model" / "smollm2_135m.yaml"))
    result = train_sft(m.model, m.tokenizer, _data(m.tokenizer, 2), {"max_steps": 1, "batch_size": 2,
                       "measure_loss": False}, tmp_path / "scratch")
    ckpt = save_checkpoint(result.model, m.tokenizer, tmp_path / "ck", name="smollm2", chat_template=True, meta={})
    assert "quantization_config" not in (ckpt.dir / "config.json").read_text()
    again = ckpt.load()
    assert again.name.startswith("smollm2-") and again.num_parameters == m.num_parameters


def test_dpo_prefers_the_chosen_answers(tmp_path):
    from harness.training import train_dpo

    m = _fresh()
    records = []
    for i in range(6):
        prompt = m.tokenizer.apply_chat_template([{"role": "user", "content": f"What is {i} plus {i}?"}],
                                                 tokenize=False, add_generation_prompt=True)
        records.append({"prompt": prompt, "chosen": f"The answer is {2 * i}.", "rejected": f"I like {i + 7} cats.",
                        "problem_id": f"p{i}", "source": "pair"})
    cfg = {"epochs": 3, "learning_rate": 5e-3, "batch_size": 3, "trl": {"beta": 0.1}}
    result = train_dpo(m.model, m.tokenizer, TrainingData(records), cfg, tmp_path / "scratch")
    assert result.loss_before == pytest.approx(0.6931, abs=1e-3)  # policy == reference: sigmoid loss at 0 margin
    assert result.loss_after < result.loss_before - 0.05


def test_scoring_labelled_positions_only_is_the_same_loss_on_fewer_rows(tmp_path, monkeypatch):
    """training.score_labelled_positions_only: the fused LM head projects only labelled rows, and the training
    losses match TRL's every-position default up to float rounding."""
    import trl.trainer.utils as trl_utils

    projected: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: projected.append(hidden.shape[0]) or apply(hidden, *rest))
    runs = {}
    for compact in (False, True):
        projected.clear()
        m = _fresh()
        torch.manual_seed(0)
        cfg = {"epochs": 1, "learning_rate": 1e-3, "batch_size": 4, "measure_loss": False,
               "score_labelled_positions_only": compact}
        result = train_sft(m.model, m.tokenizer, _data(m.tokenizer), cfg, tmp_path / f"scratch{compact}")
        runs[compact] = ([r["loss"] for r in result.log], list(projected))
    (full_losses, full_rows), (compact_losses, compact_rows) = runs[False], runs[True]
    assert len(full_losses) == len(compact_losses) == 2
    assert compact_losses == pytest.approx(full_losses, rel=1e-4)
    assert all(c < f for c, f in zip(compact_rows, full_rows))  # the prompt rows are no longer projected
    assert trl_utils._use_triton(torch.device("cpu")) is False  # TRL's own switch is restored after training


def test_scoring_labelled_positions_only_needs_trls_switch(tmp_path, monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.delattr(trl_utils, "_use_triton")
    m = _fresh()
    with pytest.raises(ConfigError, match="training.score_labelled_positions_only"):
        train_sft(m.model, m.tokenizer, _data(m.tokenizer, 2), {"max_steps": 1, "measure_loss": False,
                  "score_labelled_positions_only": True}, tmp_path / "scratch")
