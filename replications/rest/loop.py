"""The Grow/Improve loop with a stage ledger, so a killed run resumes at the stage where it stopped.

    eval/0                      the base policy on the held-out test subset
    for i in 1..iterations:
        grow/i                  N samples per training problem from the current policy (sample store), graded
        improve/i.j             per threshold t_j: keep reward > t_j, cap, mix references, fine-tune
                                (ReST-EM: from the base model, one step | ReST: from the last policy, t_j rising)
        eval/i                  the new policy on the test subset: greedy pass@1, pass@k, maj@k

A stage's summary is written to the ledger (ledger.json in the run dir) when it finishes; a rerun of the
same run skips finished stages and reads their summaries back. Samples live in the sample store and
checkpoints appear atomically, so the stage in progress when the run died redoes only what it had not
finished (the store draws only missing samples).
"""
from __future__ import annotations

import gc
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.config import ModelConfig, SamplingConfig, StoreConfig, validate
from harness.data.problems import Problem, ProblemSet, load_problems
from harness.errors import ConfigError, HarnessError
from harness.grading.graded import grade_samples
from harness.models.loading import LoadedModel, load_model
from harness.data.prompts import PromptSpec, load_prompt, prompt_fingerprint, render
from harness.reporting.run import Run
from harness.sampling.base import SamplingParams
from harness.store.samples import SampleStore, draw_samples, fingerprint
from harness.training import export_model_config, load_checkpoint, save_checkpoint, train_sft, training_config
from replications.rest import evaluate, improve
from replications.rest.config import RestSettings, rest_settings

BASE = {"kind": "base"}


class StageFailure(HarnessError):
    """Raised by rest.fail_at (tests): the run stops as if it had been killed at that stage."""


def config_fingerprint(cfg: DictConfig) -> str:
    """What the ledger's results depend on; a resume with a different value is refused."""
    keys = ["model", "dataset", "train_dataset", "prompt", "sampling", "training", "rest", "grader"]
    body = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys if k in cfg}
    for volatile in ("fail_at",):
        body.get("rest", {}).pop(volatile, None)
    return fingerprint(body)


@dataclass
class Loop:
    cfg: DictConfig
    run: Run
    settings: RestSettings
    train: ProblemSet
    test: ProblemSet
    spec: PromptSpec
    store: SampleStore
    grow_params: SamplingParams
    greedy_params: SamplingParams
    eval_params: SamplingParams
    _policy_key: str | None = None
    _model: LoadedModel | None = None
    _sampler: Any = None
    _prompt_cache: dict = field(default_factory=dict)

    @property
    def checkpoints(self) -> Path:
        """<run>/checkpoints, relative to the working directory when inside it: the path is part of a
        checkpoint's model identity, so a project moved elsewhere still finds its samples."""
        d = Path(self.run.dir) / "checkpoints"
        rel = os.path.relpath(d)
        return Path(rel) if not rel.startswith("..") else d

    # ---- policies ---------------------------------------------------------------------------
    def policy(self, ref: dict) -> LoadedModel:
        """The loaded model a policy reference names (one model in memory at a time)."""
        key = "base" if ref["kind"] == "base" else ref["path"]
        if key != self._policy_key:
            self._release()
            self._model = load_model(self.cfg.model) if ref["kind"] == "base" else load_checkpoint(ref["path"]).load()
            self._policy_key = key
        return self._model

    def _release(self) -> None:
        self._model, self._sampler, self._policy_key = None, None, None
        gc.collect()

    def sampler(self, model: LoadedModel):
        if self._sampler is None:
            from harness.sampling.factory import make_sampler

            self._sampler = make_sampler(self.cfg.backend, model)
        return self._sampler

    # ---- sampling + grading -----------------------------------------------------------------
    def prompts(self, model: LoadedModel, problems: list[Problem]) -> dict[str, str]:
        # Rendered text depends on the tokenizer's chat template only: checkpoints keep the base tokenizer.
        out = {}
        for p in problems:
            if p.id not in self._prompt_cache:
                self._prompt_cache[p.id] = render(self.spec, p, model.tokenizer, data_root=self.cfg.data.root)
            out[p.id] = self._prompt_cache[p.id]
        return out

    def sample_and_grade(
        self, ref: dict, problem_set: ProblemSet, n: int, params: SamplingParams, desc: str
    ) -> tuple[pd.DataFrame, dict]:
        model = self.policy(ref)
        entry = self.store.entry(
            model.identity, problem_set.sha256, self.spec.name, prompt_fingerprint(self.spec, data_root=self.cfg.data.root),
            params,
        )
        prompts = self.prompts(model, problem_set.problems)
        samples = draw_samples(entry, self.sampler(model), prompts, n, params, progress=bool(self.cfg.progress), desc=desc)
        self.run.record_draw(desc, samples, samples.attrs.get("drawn_now", 0))
        g = self.cfg.grader
        graded = grade_samples(entry, samples, problem_set.problems, g.method, g.timeout, g.workers)
        info = {"store": str(entry.dir), "model": model.identity, "n": n, "params": params.as_dict(),
                "generated_tokens": int(samples["num_tokens"].sum())}
        return graded, info

    # ---- stages -----------------------------------------------------------------------------
    def stage(self, name: str, label: str, body: Callable[[], dict]) -> dict:
        """Run `body` unless the ledger has `name`; its summary goes to the ledger."""
        done = self.run.ledger()
        if name in done:
            return done[name]
        if self.settings.fail_at == name:
            raise StageFailure(f"rest.fail_at={name}: stopping before this stage (simulated interruption)")
        with self.run.stage(label):
            result = body()
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other jobs on the CPU slow every stage
        self.run.mark_done(name, result)
        return result

    def evaluate(self, ref: dict, tag: str) -> dict:
        s = self.settings.eval
        out: dict = {"policy": ref}
        if s.greedy:
            graded, info = self.sample_and_grade(ref, self.test, 1, self.greedy_params, f"eval {tag} greedy")
            out["greedy"] = evaluate.per_problem_correct(graded)
            out["greedy_info"] = info
        if s.samples:
            graded, info = self.sample_and_grade(ref, self.test, s.samples, self.eval_params, f"eval {tag} samples")
            out["samples"] = evaluate.per_problem_records(graded)
            out["samples_info"] = info
        if s.train_accuracy:
            graded, info = self.sample_and_grade(ref, self.train, 1, self.greedy_params, f"eval {tag} train greedy")
            out["train_greedy"] = evaluate.per_problem_correct(graded)
        out["model"] = self.policy(ref).identity
        return out

    def grow(self, ref: dict, i: int) -> dict:
        graded, info = self.sample_and_grade(
            ref, self.train, self.settings.samples_per_problem, self.grow_params, f"grow {i}"
        )
        per = graded.groupby("problem_id")["correct"].agg(["sum", "count"])
        return {
            **info,
            "policy": ref,
            "problems": int(len(per)),
            "samples": int(len(graded)),
            "correct_samples": int(graded["correct"].sum()),
            "coverage": float((per["sum"] > 0).mean()),  # pass@N over the training problems
            "sample_accuracy": float(graded["correct"].mean()),
            "per_problem_correct": {pid: int(c) for pid, c in per["sum"].items()},
        }

    def improve(self, i: int, j: int, threshold: float, init: dict, grown: dict) -> dict:
        s = self.settings
        ref = grown["policy"]
        graded, _ = self.sample_and_grade(ref, self.train, s.samples_per_problem, self.grow_params, f"grow {i} (read)")
        graded["reward"] = improve.rewards(graded, s.reward, s.partial_credit).to_numpy()
        prompts = self.prompts(self.policy(ref), self.train.problems)
        data, kept = improve.training_data(
            graded, prompts, self.train.problems, threshold, s.max_per_problem, s.dedupe, s.reference_fraction,
            self.spec.answer_format, seed=s.seed + 1000 * i + j,
            provenance={"store": grown["store"], "sampled_by": grown["model"], "iteration": i, "improve_step": j,
                        "reward": s.reward, "data": self.train.provenance()},
        )
        tag = f"iter{i}" if len(s.thresholds) == 1 else f"iter{i}.{j}"
        data_path = data.save_jsonl(self.checkpoints / f"{tag}.data.jsonl")
        summary = {"threshold": threshold, "init": init, "data_file": str(data_path), **data.describe()}
        summary.pop("data", None)
        if len(data) == 0:  # nothing passed: the policy stays what it was (recorded, not hidden)
            return {**summary, "policy": init, "checkpoint": None, "skipped": "no training examples"}
        self._release()  # one model in memory: the one about to be trained (in place)
        model = load_model(self.cfg.model) if init["kind"] == "base" else load_checkpoint(init["path"]).load()
        with tempfile.TemporaryDirectory(prefix="trl-") as scratch:  # TRL's output_dir; nothing in it is kept
            result = train_sft(model.model, model.tokenizer, data, self.cfg.training, scratch)
        base_name = self.cfg.model.get("name") or "model"
        ckpt_dir = self.checkpoints / tag
        ckpt = save_checkpoint(
            result.model, model.tokenizer, ckpt_dir,
            name=f"{base_name}-{self.cfg.paper}-{tag}", chat_template=model.use_chat_template,
            meta={
                "init": init if init["kind"] == "base" else {**init, "identity": load_checkpoint(init["path"]).name},
                "base_model": OmegaConf.to_container(self.cfg.model, resolve=True),
                "training": OmegaConf.to_container(OmegaConf.structured(training_config(self.cfg.training))),
                "data": data.describe(),
                "result": result.summary(),
                "run": str(self.run.dir),
            },
            dtype=str(self.cfg.model.get("dtype") or "float32"),
        )
        del model, result
        gc.collect()
        export_model_config(ckpt, Path(self.run.dir) / "conf", f"{self.cfg.paper}_{tag}".replace(".", "_"))
        meta = ckpt.meta["result"]
        return {
            **summary,
            "policy": {"kind": "checkpoint", "path": str(ckpt.dir)},
            "checkpoint": str(ckpt.dir),
            "model": ckpt.name,
            "steps": meta["steps"],
            "train_seconds": meta["seconds"],
            "loss_before": meta["loss_before"],
            "loss_after": meta["loss_after"],
            "train_loss": meta["train_loss"],
        }

    def run_all(self) -> dict:
        s = self.settings
        results: dict = {"evals": {}, "grows": {}, "improves": {}}
        results["evals"][0] = self.stage("eval/0", "eval base", lambda: self.evaluate(BASE, "base"))
        policy = BASE
        for i in range(1, s.iterations + 1):
            grown = self.stage(f"grow/{i}", f"grow {i}", lambda: self.grow(policy, i))
            results["grows"][i] = grown
            init = BASE if s.algorithm == "rest_em" else policy
            for j, threshold in enumerate(s.thresholds, 1):
                step = self.stage(f"improve/{i}.{j}", f"improve {i}.{j} (filter + fine-tune)",
                                  lambda: self.improve(i, j, threshold, init, grown))
                results["improves"][f"{i}.{j}"] = step
                init = step["policy"]  # ReST: the next Improve step continues from this one
            policy = init
            results["evals"][i] = self.stage(f"eval/{i}", f"eval {i}", lambda: self.evaluate(policy, f"iter {i}"))
        self._release()
        return results


def setup(cfg: DictConfig, run: Run) -> Loop:
    validate(cfg, ModelConfig, "model")
    settings = rest_settings(cfg)
    training_config(cfg.training)
    store_cfg = validate(cfg, StoreConfig, "store")
    grow_cfg = validate(cfg, SamplingConfig, "sampling")
    spec = load_prompt(cfg.prompt)
    train = load_problems(cfg.train_dataset, cfg.data.root)
    test = load_problems(cfg.dataset, cfg.data.root)
    overlap = set(p.question.strip() for p in train) & set(p.question.strip() for p in test)
    if overlap:
        raise ConfigError(f"train_dataset/dataset: {len(overlap)} test questions are also training problems")
    run.record("data", {"train": train.provenance(), "test": test.provenance()})
    _check_resume(cfg, run)
    stop = tuple(spec.stop)
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=settings.eval.greedy_max_new_tokens,
                            stop=stop, seed=0)
    return Loop(
        cfg=cfg, run=run, settings=settings, train=train, test=test, spec=spec,
        store=SampleStore(store_cfg.root, shard=store_cfg.shard),
        grow_params=grow_cfg.params(stop), greedy_params=greedy, eval_params=settings.eval.sampling.params(stop),
    )


def _check_resume(cfg: DictConfig, run: Run) -> None:
    digest = config_fingerprint(cfg)
    ledger = run.ledger()
    recorded = ledger.get("config")
    if recorded is None:
        run.mark_done("config", digest)
    elif recorded != digest:
        raise ConfigError(
            f"run_name={cfg.run_name}: {run.dir} holds a run with a different config (ledger.json); "
            "choose another run_name, or delete that directory to start over"
        )
