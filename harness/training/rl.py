"""Outcome-reward RL with TRL's GRPOTrainer: text prompts in, a reward function over completions, a trained model.

    cfg = rl_config(node)                       # RLConfig below; `training` is a conf/training node
    result = train_grpo(model, tokenizer, records, reward_fn, cfg, scratch_dir)
    result.log                                  # one row per optimizer step: reward, KL, length, zero-variance share
    result.rewards                              # one row per completion: step, group, its record's fields, reward

`records` are dicts with a rendered "prompt" (plain text, no chat template applied here: the caller renders,
as for sampling) and any other fields (reference answer, problem id, stage...); `reward_fn(completions,
rows, finish_reasons)` returns one float per completion, `rows[i]` being the record completion i answers.
Completions are cut before the first of `cfg.stop`, as the harness samplers cut them, before the reward
sees them.

Why GRPO and not PPO: TRL 1.x has no PPO trainer (R3 used PPO); GRPO needs no value model and its
group-relative advantage makes one thing visible that PPO hides: a group whose samples all score the same
has zero advantage and teaches nothing. Its share per step is in the log (TRL's `frac_reward_zero_std`,
and recounted from the recorded rewards in `RLResult.zero_variance_share`).

Rollouts: TRL's own generation (`rollout: trl`, plain `generate`) or the harness sampler (`rollout: harness`,
a conf/backend config; the fast shared-prefix sampler draws a group's samples from one prefill). The harness
path returns the completion's re-tokenized text (+ EOS when the sample ended by itself) and no sampling
log-probabilities, so TRL scores the tokens under the current policy itself: exact on-policy with
`num_iterations: 1`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from harness.errors import ConfigError, DataError
from harness.models.gguf_cache import dequantized
from harness.training.sft import train_on_free_cores
from harness.training.config import peft_config, trainer_kwargs, training_config

ROLLOUTS = ("trl", "harness")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
RewardFn = Callable[[list[str], list[dict], list[Optional[str]]], list[float]]

# TRL's log keys -> ours (None when TRL did not log it: `kl` only exists with beta > 0).
LOG_FIELDS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completion_length": "completions/mean_length",
    "clipped_ratio": "completions/clipped_ratio",
    "zero_variance_share": "frac_reward_zero_std",
    "loss": "loss",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
}


@dataclass
class RLConfig:
    """One RL run's settings (a conf node, e.g. `r3.rl`); optimiser fields live in `training`."""

    name: str = "grpo"  # a label (logs, reports)
    num_generations: int = 4  # G: completions per prompt; a group's advantages are its rewards less its mean
    prompts_per_step: int = 2  # distinct prompts per optimizer step (the batch is prompts_per_step * G completions)
    max_completion_length: int = 96  # tokens a completion may run before it is cut ("length": no stated answer)
    temperature: float = 1.0  # rollout sampling; R3's official code samples at 1.0, top_k 0, top_p 1
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    stop: list[str] = field(default_factory=list)  # completion text is cut before the first of these
    beta: float = 0.05  # KL penalty to the starting policy (R3 math: 0.05 for CoT); 0 drops the reference model
    epsilon: float = 0.2  # clipping of the policy ratio
    num_iterations: int = 1  # optimisation passes over each generated batch (GRPO's mu; 1: strictly on-policy)
    scale_rewards: str = "group"  # divide advantages by the group's std (group), the batch's (batch), or not (none)
    loss_type: str = "dapo"  # how token losses are averaged (TRL's loss_type)
    rollout: str = "trl"  # trl: TRL's generate | harness: the harness sampler named by `backend`
    backend: Any = None  # a conf/backend node (rollout: harness), e.g. {name: hf, batch_size: 64}
    seed: int = 0  # rollout sampling seed (with the step and the group, it seeds each harness sample)
    # A conf/training node: learning rate, schedule, precision, seed, LoRA or full. Its epochs, max_steps,
    # batch_size and gradient_accumulation_steps are not used: one pass over the records, one optimizer step
    # per prompts_per_step records (TRL's GRPO batch counts completions: prompts_per_step * G).
    training: Any = None
    trl: dict[str, Any] = field(default_factory=dict)  # passed through to GRPOConfig unchanged


def rl_config(node: Any, key: str = "rl") -> RLConfig:
    """Validate an RL config node (DictConfig, dict or RLConfig); errors name `key`.<field>."""
    from omegaconf import OmegaConf

    from harness.config import validate

    if isinstance(node, RLConfig):
        cfg = node
    else:
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        training = plain.pop("training", None)
        backend = plain.pop("backend", None)
        root = OmegaConf.create({})
        OmegaConf.update(root, key, plain, force_add=True)  # so that errors name the node where the caller keeps it
        cfg = validate(root, RLConfig, key)
        cfg.training, cfg.backend = training, backend
    if cfg.training is None:
        raise ConfigError(f"config key '{key}.training': missing (a conf/training node)")
    try:
        cfg.training = training_config(cfg.training)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}") from None
    checks = [
        (cfg.num_generations >= 2, "num_generations", "must be >= 2 (a group of one has no relative advantage)"),
        (cfg.prompts_per_step >= 1, "prompts_per_step", "must be >= 1"),
        (cfg.max_completion_length >= 1, "max_completion_length", "must be >= 1"),
        (cfg.temperature > 0, "temperature", "must be > 0 (RL samples)"),
        (0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]"),
        (cfg.beta >= 0, "beta", "must be >= 0"),
        (cfg.num_iterations >= 1, "num_iterations", "must be >= 1"),
        (cfg.scale_rewards in SCALE_REWARDS, "scale_rewards", f"must be one of {', '.join(SCALE_REWARDS)}"),
        (cfg.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}"),
        (cfg.rollout in ROLLOUTS, "rollout", f"must be one of {', '.join(ROLLOUTS)}"),
        (cfg.rollout != "harness" or cfg.backend is not None, "backend", "rollout: harness needs a conf/backend node"),
    ]
    for ok, name, why in checks:
        if not ok:
            raise ConfigError(f"config key '{key}.{name}': {why}, got {getattr(cfg, name)!r}")
    return cfg


@dataclass
class RLResult:
    model: Any  # the trained transformers model, in eval mode
    steps: int
    seconds: float
    log: list[dict] = field(default_factory=list)  # per optimizer step: LOG_FIELDS (None where TRL logged nothing)
    rewards: list[dict] = field(default_factory=list)  # per completion: step, group, record fields, reward, ...
    train_loss: float | None = None  # TRL's mean loss over the run (the clipped surrogate + KL: not a fit measure)
    # No supervised loss before / after: the fields are here so every trainer's summary has the same keys
    # (harness.pipeline.iterated records them for each checkpoint).
    loss_before: float | None = None
    loss_after: float | None = None

    def zero_variance_share(self) -> float | None:
        """Share of groups whose completions all got the same reward (zero group-relative advantage)."""
        return zero_variance_share(self.rewards)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("model")
        out["zero_variance_groups"] = self.zero_variance_share()
        return out


def zero_variance_share(rows: Sequence[dict]) -> float | None:
    groups: dict[tuple, set] = {}
    for row in rows:
        groups.setdefault((row["step"], row["group"]), set()).add(row["reward"])
    return sum(len(v) == 1 for v in groups.values()) / len(groups) if groups else None


def grpo_config(cfg: RLConfig, output_dir: str | Path, steps: int):
    from trl import GRPOConfig

    kwargs = trainer_kwargs(cfg.training, str(output_dir))
    batch = cfg.prompts_per_step * cfg.num_generations
    kwargs.update(max_steps=int(steps), num_train_epochs=1.0, per_device_train_batch_size=batch,
                  gradient_accumulation_steps=1)
    return GRPOConfig(
        **kwargs,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        scale_rewards=cfg.scale_rewards,
        loss_type=cfg.loss_type,
        shuffle_dataset=False,  # the caller's order is the curriculum
        **dict(cfg.trl),
    )


class _RewardRecorder:
    """The reward function TRL calls: cuts completions at the stop strings, calls `reward_fn`, keeps a row
    per completion (TRL keeps only batch means)."""

    def __init__(self, reward_fn: RewardFn, cfg: RLConfig, eos_ids: set[int], columns: Sequence[str]):
        self.__name__ = "outcome"  # TRL names a reward function's log columns after it
        self.reward_fn, self.cfg, self.eos_ids, self.columns = reward_fn, cfg, eos_ids, list(columns)
        self.rows: list[dict] = []
        self._calls = 0

    def __call__(self, prompts, completions, completion_ids, trainer_state=None, finish_reason=None, **fields):
        from harness.sampling.base import cut_at_stop

        texts, reasons = [], []
        for i, (text, ids) in enumerate(zip(completions, completion_ids)):
            cut, stopped = cut_at_stop(text, self.cfg.stop)
            texts.append(cut)
            if finish_reason is not None:  # the harness rollout knows how each sample ended
                reasons.append(finish_reason[i])
            else:
                reasons.append("stop" if stopped else "eos" if ids and ids[-1] in self.eos_ids
                               else "length" if len(ids) >= self.cfg.max_completion_length else "eos")
        rows = [{c: fields[c][i] for c in self.columns if c in fields} for i in range(len(texts))]
        rewards = [float(r) for r in self.reward_fn(texts, rows, reasons)]
        if len(rewards) != len(texts):
            raise ValueError(f"reward function returned {len(rewards)} rewards for {len(texts)} completions")
        # the optimizer step these completions train (TRL's log counts steps from 1)
        step = (int(trainer_state.global_step) if trainer_state is not None else self._calls) + 1
        for i, (row, text, reason, reward) in enumerate(zip(rows, texts, reasons, rewards)):
            self.rows.append({"step": step, "group": i // self.cfg.num_generations, **row, "completion": text,
                              "finish_reason": reason, "completion_tokens": len(completion_ids[i]), "reward": reward})
        self._calls += 1
        return rewards


def harness_rollout(cfg: RLConfig) -> Callable[[list[str], Any], dict]:
    """A `rollout_func` drawing each group from the harness sampler (`cfg.backend`) on the current weights."""
    from harness.models.loading import LoadedModel
    from harness.sampling.factory import make_sampler
    from harness.sampling.base import SampleRequest, SamplingParams

    def rollout(prompts: list[str], trainer: Any) -> dict:
        G = cfg.num_generations
        # TRL hands over its batch with each prompt repeated G times in a row (RepeatSampler); one request
        # per group lets the sampler prefill the shared prompt once.
        if len(prompts) % G or any(prompts[i] != prompts[i - i % G] for i in range(len(prompts))):
            raise DataError(f"rollout: expected each prompt repeated {G} times in a row, got {len(prompts)} prompts")
        tokenizer = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        # A fresh sampler each step: the fast sampler keeps fused copies of the weights, stale after an update.
        loaded = LoadedModel(name="policy", source="", model=model, tokenizer=tokenizer, num_parameters=0,
                             use_chat_template=False)
        sampler = make_sampler(cfg.backend, loaded)
        step = int(trainer.state.global_step)
        requests = [SampleRequest(f"step{step}/group{g}", prompts[g * G], tuple(range(G))) for g in range(len(prompts) // G)]
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                max_new_tokens=cfg.max_completion_length, stop=tuple(cfg.stop), seed=cfg.seed)
        done = {(c.key, c.index): c for c in sampler.sample(requests, params)}
        if was_training:
            model.train()
        eos = tokenizer.eos_token_id
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": None, "finish_reason": []}
        for r in requests:
            prompt_ids = tokenizer(r.prompt, add_special_tokens=False).input_ids
            for i in r.indices:
                c = done[(r.key, i)]
                ids = tokenizer(c.text, add_special_tokens=False).input_ids[: cfg.max_completion_length]
                if c.finish_reason != "length":  # it ended by itself: the policy learns to end there
                    ids = ids[: cfg.max_completion_length - 1] + [eos]
                out["prompt_ids"].append(prompt_ids)
                out["completion_ids"].append(ids)
                out["finish_reason"].append(c.finish_reason)
        return out

    return rollout


def _save_reference(model: Any, tokenizer: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_grpo(model: Any, tokenizer: Any, records: Sequence[dict], reward_fn: RewardFn, cfg: Any,
               output_dir: str | Path, reference: str | Path | None = None) -> RLResult:
    """GRPO on `records` in their order, `cfg.prompts_per_step` records per optimizer step (one pass).

    `model` is updated in place (full fine-tuning; LoRA is merged on return). `output_dir` receives TRL's
    scratch files only: the caller saves the checkpoint it keeps (harness.training.checkpoints).
    `reference` is the model folder the KL penalty (beta > 0) measures against: the run's starting policy
    (R3: the SFT model) when training goes on over several calls; None: `model` as it is now, saved under
    `output_dir` (TRL builds its reference model from a folder, not from an object).
    """
    import datasets
    import torch
    from trl import GRPOTrainer

    cfg = rl_config(cfg)
    if not records:
        raise DataError("RL: no training prompts")
    if any(not isinstance(r.get("prompt"), str) or not r["prompt"] for r in records):
        raise DataError("RL: every record needs a non-empty text 'prompt'")
    if len(records) % cfg.prompts_per_step:
        raise ConfigError(f"config key 'rl.prompts_per_step': {len(records)} prompts do not split into steps of "
                          f"{cfg.prompts_per_step}")
    steps = len(records) // cfg.prompts_per_step
    datasets.disable_progress_bars()
    torch.manual_seed(cfg.training.seed)
    columns = [k for k in records[0] if k != "prompt"]
    dataset = datasets.Dataset.from_list([dict(r) for r in records])
    model = dequantized(model)
    model.train()
    eos_ids = {tokenizer.eos_token_id}
    if getattr(model.generation_config, "eos_token_id", None) is not None:
        eos = model.generation_config.eos_token_id
        eos_ids |= set(eos if isinstance(eos, list) else [eos])
    recorder = _RewardRecorder(reward_fn, cfg, eos_ids, columns)
    if cfg.beta > 0 and cfg.training.finetune == "full":
        model.config._name_or_path = str(reference or _save_reference(model, tokenizer, Path(output_dir) / "reference"))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=recorder,
        args=grpo_config(cfg, output_dir, steps),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.training),
        rollout_func=harness_rollout(cfg) if cfg.rollout == "harness" else None,
    )
    start = time.perf_counter()
    out = train_on_free_cores(trainer)
    seconds = time.perf_counter() - start
    trained = trainer.model
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    trained.eval()
    log = [{"step": int(r["step"]), **{ours: r.get(theirs) for ours, theirs in LOG_FIELDS.items()}}
           for r in trainer.state.log_history if "reward" in r]
    return RLResult(model=trained, steps=int(out.global_step), seconds=round(seconds, 2), log=log, rewards=recorder.rows,
                    train_loss=float(out.training_loss) if out.training_loss is not None else None)
