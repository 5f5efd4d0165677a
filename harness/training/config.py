"""The training config every trainer shares (SFT here; DPO, GRPO/RLOO and reward models next).

One schema for conf/training/*.yaml: what to update (full weights or a LoRA adapter), the optimiser
schedule, precision and the device-dependent switches. Method-specific TRL fields (DPO's beta, GRPO's
num_generations...) go in `trl`, passed through unchanged to the TRL config class of the method, so a
new trainer needs no new schema field to be configurable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from harness.config import validate
from harness.errors import ConfigError

FINETUNE_MODES = ("full", "lora")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # peft's shorthand, or a list of module names
    # LoRA adapters are merged into the weights when a checkpoint is saved, so every loader reads a
    # plain model folder; nothing downstream has to know how the checkpoint was trained.


@dataclass
class TrainingConfig:
    name: str = "training"
    finetune: str = "full"  # full | lora
    lora: LoraSettings = field(default_factory=LoraSettings)
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"  # any transformers SchedulerType: constant, linear, cosine...
    warmup: float = 0.0  # < 1: fraction of the steps; >= 1: a number of steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4  # per device
    gradient_accumulation_steps: int = 1
    max_length: Optional[int] = 1024  # tokens of prompt + completion; longer examples are truncated
    completion_only_loss: bool = True  # loss on the completion tokens only (the prompt is context)
    precision: str = "fp32"  # fp32 on CPU (bf16 matmuls are ~4x slower on this CPU); bf16 on GPUs
    gradient_checkpointing: bool = False
    # Project to the vocabulary only at positions with a label (harness/training/fused_head.py): the same loss,
    # 1.4-1.5x faster a step on the ladder's short examples on CPU, but different float rounding from TRL's CPU default
    # (every position). Off by default because the committed runs and their times were measured with TRL's
    # default; the warm start turns it on to fit its 15-minute budget.
    score_labelled_positions_only: bool = False
    seed: int = 0
    logging_steps: int = 1
    measure_loss: bool = True  # NLL on the training data before and after (one extra forward pass each)
    trl: dict[str, Any] = field(default_factory=dict)  # passed through to the TRL config class


def training_config(node: Any) -> TrainingConfig:
    """Validate a `training` config node (DictConfig, dict or TrainingConfig)."""
    if isinstance(node, TrainingConfig):
        cfg = node
    else:
        from omegaconf import OmegaConf

        cfg = validate(OmegaConf.create({"training": node}), TrainingConfig, "training")
    if cfg.finetune not in FINETUNE_MODES:
        raise ConfigError(f"training.finetune: '{cfg.finetune}' is not one of {', '.join(FINETUNE_MODES)}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"training.precision: '{cfg.precision}' is not one of {', '.join(PRECISIONS)}")
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise ConfigError("training.epochs: must be > 0 (or set training.max_steps)")
    if cfg.learning_rate <= 0:
        raise ConfigError(f"training.learning_rate: must be > 0, got {cfg.learning_rate}")
    return cfg


def trainer_kwargs(cfg: TrainingConfig, output_dir: str) -> dict[str, Any]:
    """TrainingArguments fields shared by every TRL config class (SFTConfig, DPOConfig, GRPOConfig...)."""
    import torch

    on_gpu = torch.cuda.is_available()
    if cfg.precision != "fp32" and not on_gpu:
        raise ConfigError(f"training.precision: {cfg.precision} needs a GPU here; use fp32 on CPU")
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        num_train_epochs=float(cfg.epochs),
        max_steps=int(cfg.max_steps),
        learning_rate=float(cfg.learning_rate),
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=float(cfg.warmup),
        weight_decay=float(cfg.weight_decay),
        max_grad_norm=float(cfg.max_grad_norm),
        per_device_train_batch_size=int(cfg.batch_size),
        per_device_eval_batch_size=int(cfg.batch_size),
        gradient_accumulation_steps=int(cfg.gradient_accumulation_steps),
        # TRL's configs default to bf16=True and gradient checkpointing on: both are set explicitly.
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        logging_steps=int(cfg.logging_steps),
        save_strategy="no",  # checkpoints are written by harness.training.checkpoints, with provenance
        report_to="none",
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    kwargs[_checkpointing_field()] = bool(cfg.gradient_checkpointing)
    return kwargs


def _checkpointing_field() -> str:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def peft_config(cfg: TrainingConfig):
    """A peft LoraConfig for finetune=lora, else None."""
    if cfg.finetune != "lora":
        return None
    from peft import LoraConfig

    target = cfg.lora.target_modules
    target = target if isinstance(target, str) else list(target)
    return LoraConfig(
        r=int(cfg.lora.r),
        lora_alpha=int(cfg.lora.alpha),
        lora_dropout=float(cfg.lora.dropout),
        target_modules=target,
        task_type="CAUSAL_LM",
    )
