"""Direct preference optimisation with TRL's DPOTrainer on prompt/chosen/rejected records (Self-Rewarding's
Improve step). The reference model is a frozen copy of the starting weights, made here: TRL would reload it
from `config._name_or_path`, which names no loadable model for GGUF-loaded or in-memory weights. With LoRA
(or `training.trl.precompute_ref_log_probs`) no copy is made: the adapter-free base serves as reference."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from harness.models.gguf_cache import dequantized
from harness.training.config import TrainingConfig, peft_config, trainer_kwargs, training_config
from harness.training.data import TrainingData
from harness.training.sft import TrainResult, run_trainer


def dpo_config(cfg: TrainingConfig, output_dir: str | Path):
    """DPOConfig from the shared fields; DPO's own (beta, loss_type...) come from `training.trl`."""
    from trl import DPOConfig

    return DPOConfig(**trainer_kwargs(cfg, str(output_dir)), max_length=cfg.max_length, **dict(cfg.trl))


def train_dpo(model: Any, tokenizer: Any, data: TrainingData, cfg: Any, output_dir: str | Path) -> TrainResult:
    """Fine-tune `model` on preference pairs; loss_before/after are DPO losses on the training pairs."""
    import datasets
    import torch
    from trl import DPOTrainer

    datasets.disable_progress_bars()
    cfg = training_config(cfg)
    torch.manual_seed(cfg.seed)
    dataset = data.to_dataset()
    model = dequantized(model)
    model.train()
    ref_model = None
    if cfg.finetune == "full" and not cfg.trl.get("precompute_ref_log_probs"):
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=dpo_config(cfg, output_dir),
        train_dataset=dataset,
        eval_dataset=dataset if cfg.measure_loss else None,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
    )
    return run_trainer(trainer, cfg)
