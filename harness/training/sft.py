"""Supervised fine-tuning with TRL's SFTTrainer on prompt/completion data (loss on the completion)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.models.gguf_cache import dequantized
from harness.training.config import TrainingConfig, peft_config, trainer_kwargs, training_config
from harness.training.data import TrainingData
from harness.training.fused_head import labelled_positions_only


@dataclass
class TrainResult:
    model: Any  # the trained transformers model (LoRA merged), in eval mode
    steps: int
    seconds: float
    train_loss: float | None  # TRL's mean training loss over the run
    loss_before: float | None = None  # completion NLL on the training data before / after training
    loss_after: float | None = None
    log: list[dict] = field(default_factory=list)  # TRL's per-step log (loss, lr, grad_norm...)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("model")
        return out


def sft_config(cfg: TrainingConfig, output_dir: str | Path):
    from trl import SFTConfig

    extra = dict(cfg.trl)
    return SFTConfig(
        **trainer_kwargs(cfg, str(output_dir)),
        max_length=cfg.max_length,
        completion_only_loss=bool(cfg.completion_only_loss),
        packing=False,  # packing would mix examples of different problems inside one attention window
        dataset_num_proc=None,
        **extra,
    )


def train_sft(model: Any, tokenizer: Any, data: TrainingData, cfg: Any, output_dir: str | Path) -> TrainResult:
    """Fine-tune `model` (a transformers model, updated in place for full fine-tuning) on `data`.

    `output_dir` receives TRL's scratch files only; the caller saves the checkpoint it wants to keep
    (harness.training.checkpoints.save_checkpoint) with the data provenance.
    """
    import datasets
    import torch
    from trl import SFTTrainer

    datasets.disable_progress_bars()  # TRL maps the dataset five times; five bars per Improve step are noise
    cfg = training_config(cfg)
    torch.manual_seed(cfg.seed)
    dataset = data.to_dataset()
    args = sft_config(cfg, output_dir)
    model = dequantized(model)
    model.train()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset if cfg.measure_loss else None,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
    )
    return run_trainer(trainer, cfg)


def train_on_free_cores(trainer: Any) -> Any:
    """`trainer.train()` with one torch thread per core others leave free, re-checked every few steps.

    The thread count is process-wide: without this, training inherits whatever the last sampling call
    chose (one thread, if the machine was busy then) for the whole run.
    """
    from transformers import TrainerCallback

    from harness.sampling.threads import CoreShare

    cores = CoreShare()

    class _Recheck(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            cores.tick()

    cores.start()
    trainer.add_callback(_Recheck())
    return trainer.train()


def run_trainer(trainer: Any, cfg: TrainingConfig) -> TrainResult:
    """Train a built TRL trainer; every method (SFT, DPO, GRPO...) reports the same TrainResult."""
    with labelled_positions_only(cfg.score_labelled_positions_only):
        loss_before = _eval_loss(trainer) if cfg.measure_loss else None
        start = time.perf_counter()
        out = train_on_free_cores(trainer)
        seconds = time.perf_counter() - start
        loss_after = _eval_loss(trainer) if cfg.measure_loss else None
    trained = trainer.model
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    trained.eval()
    log = [dict(r) for r in trainer.state.log_history if "loss" in r]
    return TrainResult(
        model=trained,
        steps=int(out.global_step),
        seconds=round(seconds, 2),
        train_loss=float(out.training_loss) if out.training_loss is not None else None,
        loss_before=loss_before,
        loss_after=loss_after,
        log=log,
    )


def _eval_loss(trainer: Any) -> float | None:
    loss = trainer.evaluate().get("eval_loss")
    return None if loss is None or math.isnan(loss) else float(loss)
