"""Checkpoints any replication can load back: a save_pretrained folder plus what made it.

Layout of `<dir>` (written under `<dir>.partial` and renamed when complete, so a folder that exists
is a finished checkpoint and a killed save leaves only a `.partial` to be redone):
    config.json, model.safetensors, tokenizer files   the weights (LoRA adapters merged in)
    training.json                                     training config, data provenance, metrics, weights sha256
    model.yaml                                        a conf/model config for harness.models.loading.load_model

The model name in model.yaml carries a hash of the weights, so a checkpoint rewritten at the same path is
never taken for the older one. Every path written (model.yaml, training.json) is portable
(harness.reporting.paths): project-relative inside the checkout, `external:<name>` elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from harness.errors import DataError
from harness.models.gguf_cache import dequantized
from harness.reporting.paths import portable, portable_tree

MODEL_CONFIG = "model.yaml"
TRAINING_META = "training.json"


@dataclass
class Checkpoint:
    dir: Path
    name: str  # model name recorded in model.yaml (base name, tag and weights hash)
    meta: dict

    @property
    def model_config(self) -> DictConfig:
        """model.yaml with `path` pointing at this folder: the file spells its path portably (it may read
        `external:<name>`, or the checkpoint may have moved), but the folder it sits in is the checkpoint."""
        cfg = OmegaConf.load(self.dir / MODEL_CONFIG)
        cfg.path = str(self.dir)
        return cfg

    def load(self):
        """The checkpoint as a harness LoadedModel (its identity differs from the base model's)."""
        from harness.models.loading import load_model

        return load_model(self.model_config)


def weights_sha256(directory: Path) -> str:
    h = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise DataError(f"{directory}: no weight files (*.safetensors) saved")
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def unwrap(model: Any) -> Any:
    """The plain transformers model: LoRA adapters merged, any peft wrapper removed."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_checkpoint(
    model: Any,
    tokenizer: Any,
    directory: str | Path,
    name: str,
    chat_template: bool,
    meta: Mapping[str, Any],
    dtype: str = "float32",
    data_root: str | Path | None = None,
) -> Checkpoint:
    """Save weights + tokenizer + provenance atomically; returns the finished checkpoint.

    `directory` should be a path relative to the working directory (e.g. results/rest/<run>/checkpoints/iter1):
    it becomes the model's `path`. The metadata is written with portable paths (`data_root`: the data files'
    root, for `data:` spellings of the training data's files).
    """
    final = Path(directory)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    plain = dequantized(unwrap(model))
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    digest = weights_sha256(partial)
    full_name = f"{name}-{digest[:8]}"
    model_cfg = {
        "name": full_name,
        "path": portable(final),  # project-relative for a checkpoint under results/ (loadable from the checkout)
        "chat_template": bool(chat_template),
        "dtype": dtype,
        "num_parameters": int(sum(p.numel() for p in plain.parameters())),
    }
    (partial / MODEL_CONFIG).write_text(
        "# Written by harness.training.checkpoints: load with harness.models.loading.load_model(OmegaConf.load(this file)).\n"
        + OmegaConf.to_yaml(OmegaConf.create(model_cfg))
    )
    record = {"name": full_name, "weights_sha256": digest, **dict(meta)}
    written = portable_tree(json.loads(json.dumps(record, default=str)), data_root)
    (partial / TRAINING_META).write_text(json.dumps(written, indent=2))
    if final.exists():  # an older checkpoint at this path (a rerun without resume): replaced whole
        shutil.rmtree(final)
    os.replace(partial, final)
    return Checkpoint(final, full_name, record)


def is_checkpoint(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / MODEL_CONFIG).is_file() and (d / TRAINING_META).is_file()


def load_checkpoint(directory: str | Path) -> Checkpoint:
    d = Path(directory)
    if not is_checkpoint(d):
        raise DataError(f"{d}: not a finished checkpoint (no {MODEL_CONFIG} / {TRAINING_META})")
    meta = json.loads((d / TRAINING_META).read_text())
    return Checkpoint(d, meta["name"], meta)


def export_model_config(checkpoint: Checkpoint, conf_dir: str | Path, option: str) -> Path:
    """Write `<conf_dir>/model/<option>.yaml` so `hydra.searchpath=[file://<conf_dir>] model=<option>`
    selects the checkpoint in any replication."""
    path = Path(conf_dir) / "model" / f"{option}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.to_container(checkpoint.model_config)
    # Portable (project-relative, loadable from the checkout) when the checkpoint lies in the project; a
    # checkpoint elsewhere keeps its real path, since `external:<name>` could not be loaded from this config.
    spelled = portable(checkpoint.dir)
    cfg["path"] = str(checkpoint.dir) if spelled.startswith("external:") else spelled
    path.write_text(f"# The checkpoint {cfg['path']} (see its {TRAINING_META}).\n" + OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return path
