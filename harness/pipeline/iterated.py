"""The loop of papers whose policy changes from iteration to iteration (ReST, Self-Rewarding, R3, Easy-to-Hard).

A recipe writes its algorithm box with four calls and the loop makes it resumable:

    loop = PolicyLoop(exp, config_keys=[...], fail_at=cfg.<paper>.fail_at)
    policy = BASE
    for i in 1..I:
        data_i = loop.stage(f"grow/{i}", lambda: ... loop.exp.sample_and_grade(spec, n, policy=policy, ...))
        step   = loop.stage(f"improve/{i}", lambda: loop.train(policy, training_data, tag=f"iter{i}", method="sft"))
        policy = Policy.of(step["policy"])
        loop.stage(f"eval/{i}", lambda: ... sample_and_grade(..., policy=policy, problem_set=test))

- a stage's summary goes to the run's ledger (ledger.json) when it finishes; a rerun returns it without
  running the stage again;
- samples are keyed in the store by the policy's weights, so a stage redone after a kill draws only what
  the store lacks, and samples of two policies never mix;
- a checkpoint is saved atomically under <run>/checkpoints/<tag> with what made it (init weights, data
  sha256, training config); a finished one made from the same inputs is reused, not retrained;
- the run's config fingerprint is in the ledger: resuming with a different config is refused.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError, HarnessError
from harness.pipeline.experiment import BASE, Experiment, Policy
from harness.reporting.paths import portable, portable_tree
from harness.store.samples import fingerprint
from harness.training import (
    TrainingData,
    export_model_config,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train_dpo,
    train_sft,
    training_config,
)

__all__ = ["BASE", "Policy", "PolicyLoop", "StageFailure", "config_fingerprint", "derived_seed", "sample_info"]


class StageFailure(HarnessError):
    """Raised at `fail_at` (tests): the run stops as if it had been killed when that stage starts."""


def derived_seed(seed: int, *keys: Any) -> int:
    """A seed for one part of a run (an iteration, a step, a purpose), from the run's seed and that part's
    names: distinct parts get unrelated streams, and the same part the same stream on every rerun."""
    blob = json.dumps([int(seed), *keys], default=str, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") % (2**31 - 1)


def config_fingerprint(cfg: DictConfig, keys: Sequence[str], volatile: Sequence[str] = ()) -> str:
    """What a run's ledger depends on: the config groups `keys`, less the dotted keys in `volatile`
    (settings that do not change results, e.g. `rest.fail_at`)."""
    body = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys if k in cfg}
    for dotted in volatile:
        *parents, leaf = dotted.split(".")
        node = body
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return fingerprint(body)


def sample_info(graded) -> dict:
    """What a ledger records of a sampling call: the store entry, the weights that drew it, the cost."""
    entry = graded.attrs["entry"]
    return {"store": portable(entry.dir), "model": entry.key.model, "n": int(graded.groupby("problem_id").size().max()),
            "params": dict(entry.key.params), "generated_tokens": int(graded["num_tokens"].sum()),
            "drawn_now": int(graded.attrs.get("drawn_now", 0))}


def _trainer(method: str | Callable) -> Callable:
    """train(model, tokenizer, data, training_cfg, scratch_dir) -> TrainResult for a method name."""
    if callable(method):
        return method
    trainers = {"sft": train_sft, "dpo": train_dpo}  # looked up per call so tests can wrap them
    if method not in trainers:
        raise ConfigError(f"training method '{method}': not one of {', '.join(trainers)} (or pass a trainer function)")
    return trainers[method]


def _method_name(method: str | Callable) -> str:
    """How a training method is named in a checkpoint's key: a trainer function by its qualified name (never
    its repr, which holds a memory address and would change on every rerun)."""
    if isinstance(method, str):
        return method
    return getattr(method, "__qualname__", None) or type(method).__qualname__


class PolicyLoop:
    """Stages, checkpoints and resumes of an iterated-policy run over one Experiment (see the module doc)."""

    def __init__(self, exp: Experiment, config_keys: Sequence[str], fail_at: str | None = None,
                 volatile: Sequence[str] = ()):
        self.exp, self.run, self.cfg = exp, exp.run, exp.cfg
        self.fail_at = fail_at
        self._check_resume(config_fingerprint(self.cfg, config_keys, volatile))

    # ---- stages ---------------------------------------------------------------------------------------
    def stage(self, name: str, body: Callable[[], dict], label: str | None = None) -> dict:
        """`body()`'s summary, from the ledger when a previous run finished this stage."""
        done = self.run.ledger()
        if name in done:
            return done[name]
        if self.fail_at == name:
            raise StageFailure(f"fail_at={name}: stopping before this stage (simulated interruption)")
        with self.run.stage(label or name):
            result = body()
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other jobs on the CPU slow every stage
        self.run.mark_done(name, result)
        return self.run.ledger()[name]  # as JSON reads it back, so a fresh and a resumed run see the same values

    def done(self, name: str) -> bool:
        return self.run.is_done(name)

    # ---- checkpoints ----------------------------------------------------------------------------------
    @property
    def paper(self) -> str:
        """The paper a checkpoint's name and its exported model config are named after."""
        return self.cfg.get("paper") or self.run.paper

    @property
    def checkpoints(self) -> Path:
        """<run>/checkpoints, relative to the working directory when inside it: a checkpoint's path is how
        its policy is named in the ledger, and a relative one survives moving the project."""
        d = Path(self.run.dir) / "checkpoints"
        rel = os.path.relpath(d)
        return Path(rel) if not rel.startswith("..") else d

    def _train_key(self, init: Policy, data: TrainingData, method: str | Callable, training: Any) -> str:
        init_weights = "base" if init.kind == "base" else load_checkpoint(init.path).name  # name carries a weights hash
        return fingerprint({"init": init.as_dict(), "init_weights": init_weights, "data": data.sha256,
                            "method": _method_name(method), "training": training})

    def train(self, init: Policy | Mapping, data: TrainingData, tag: str, method: str | Callable = "sft",
              training_cfg: Any = None, meta: Mapping[str, Any] | None = None) -> dict:
        """Fine-tune `init` on `data` with `method` ("sft", "dpo", or a trainer function) and save the result
        as <run>/checkpoints/<tag>; returns the step's summary, whose "policy" is the new checkpoint.

        A finished checkpoint at that path made from the same init weights, data and training config is
        reused (a resumed run does not retrain it); the training data is kept beside it as <tag>.data.jsonl."""
        init = Policy.of(init)
        tcfg = training_cfg if training_cfg is not None else self.cfg.training
        training = OmegaConf.to_container(OmegaConf.structured(training_config(tcfg)))
        key = self._train_key(init, data, method, training)
        data_file = data.save_jsonl(self.checkpoints / f"{tag}.data.jsonl")
        ckpt_dir = self.checkpoints / tag
        ckpt = load_checkpoint(ckpt_dir) if is_checkpoint(ckpt_dir) else None
        if ckpt is None or ckpt.meta.get("train_key") != key:  # none yet, or one made from other inputs: replaced
            ckpt = self._train_and_save(init, data, method, tcfg, training, key, ckpt_dir, tag, meta)
        # written for a reused checkpoint too: a run dir whose conf/ was lost still names every policy it holds
        export_model_config(ckpt, Path(self.run.dir) / "conf", f"{self.paper}_{tag}".replace(".", "_"))
        result = ckpt.meta["result"]
        return {
            "policy": Policy.checkpoint(ckpt.dir).as_dict(),
            "checkpoint": str(ckpt.dir),
            "model": ckpt.name,
            "data_file": portable(data_file),
            "steps": result["steps"],
            "train_seconds": result["seconds"],
            "loss_before": result["loss_before"],
            "loss_after": result["loss_after"],
            "train_loss": result["train_loss"],
        }

    def _train_and_save(self, init: Policy, data: TrainingData, method, tcfg, training: dict, key: str,
                        ckpt_dir: Path, tag: str, meta: Mapping[str, Any] | None):
        model = self.exp.take(init)  # one model in memory: the one trained in place, no longer the experiment's
        init_record = init.as_dict() if init.kind == "base" else {**init.as_dict(), "identity": load_checkpoint(init.path).name}
        with tempfile.TemporaryDirectory(prefix="trl-") as scratch:  # TRL's output_dir; nothing in it is kept
            result = _trainer(method)(model.model, model.tokenizer, data, tcfg, scratch)
        ckpt = save_checkpoint(
            result.model, model.tokenizer, ckpt_dir,
            name=f"{self.cfg.model.get('name') or 'model'}-{self.paper}-{tag}", chat_template=model.use_chat_template,
            meta=portable_tree({
                "train_key": key,
                "init": init_record,
                "method": _method_name(method),
                "base_model": OmegaConf.to_container(self.cfg.model, resolve=True),
                "training": training,
                "data": data.describe(),
                "result": result.summary(),
                "run": portable(self.run.dir),
                **dict(meta or {}),
            }),
            dtype=str(self.cfg.model.get("dtype") or "float32"),
        )
        del model, result
        gc.collect()
        return ckpt

    def close(self) -> None:
        self.exp.release()

    # ---- resume ---------------------------------------------------------------------------------------
    def _check_resume(self, digest: str) -> None:
        recorded = self.run.ledger().get("config")
        if recorded is None:
            self.run.mark_done("config", digest)
        elif recorded != digest:
            raise ConfigError(
                f"run_name={self.cfg.get('run_name')}: {portable(self.run.dir)} holds a run with a different config "
                "(ledger.json); choose another run_name, or delete that directory to start over"
            )
