"""What every replication does first: problems, model, prompts, store entry, sampler, from one config.

The policy (the configured base model or a checkpoint folder) and the problem set are parameters of
sampling, so papers whose policy changes between iterations (ReST, Self-Rewarding, R3, Easy-to-Hard)
sample through the same call as papers with one model; only one model is held in memory at a time.
"""
from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from omegaconf import DictConfig

from harness.config import ModelConfig, StoreConfig, sampling_params, validate
from harness.data.problems import Problem, ProblemSet, load_problems
from harness.data.prompts import PromptSpec, load_prompt, prompt_fingerprint, render
from harness.errors import ConfigError
from harness.grading.graded import grade_samples
from harness.models.loading import LoadedModel, load_model
from harness.reporting.paths import portable
from harness.reporting.run import Run
from harness.sampling.base import Sampler, SamplingParams
from harness.sampling import factory
from harness.store.samples import EntryKey, SampleStore, StoreEntry, draw_samples, fingerprint

POLICY_KINDS = ("base", "checkpoint")


@dataclass(frozen=True)
class Policy:
    """A reference to a model: the configured base model, or a checkpoint folder (harness.training.checkpoints).

    Its dict form ({"kind": "base"} / {"kind": "checkpoint", "path": ...}) is what ledgers record; the
    store keys samples on the loaded model's content identity, never on this reference.
    """

    kind: str = "base"
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS or (self.kind == "checkpoint") != bool(self.path):
            raise ConfigError(f"policy: {self.as_dict()} is not {{'kind': 'base'}} or {{'kind': 'checkpoint', 'path': ...}}")

    @classmethod
    def checkpoint(cls, path: Any) -> "Policy":
        return cls("checkpoint", str(path))

    @classmethod
    def of(cls, ref: "Policy | Mapping[str, Any] | None") -> "Policy":
        """A Policy from itself, its dict form (a ledger entry), or None (the base model)."""
        if ref is None or isinstance(ref, Policy):
            return ref or BASE
        return cls(ref.get("kind", "base"), ref.get("path"))

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind} if self.kind == "base" else {"kind": self.kind, "path": self.path}

    def model_config(self, base_cfg: Any) -> Any:
        if self.kind == "base":
            return base_cfg
        from harness.training.checkpoints import load_checkpoint

        return load_checkpoint(self.path).model_config


BASE = Policy()


@dataclass(frozen=True)
class EntryRef:
    """Which store entry a frame of samples came from; small, because pandas deep-copies `attrs` into every
    frame derived from it (a StoreEntry holds its whole sample frame)."""

    dir: Path
    key: EntryKey


def _identity_record(model: LoadedModel) -> dict:
    """How the model's identity was established, with no machine path in it."""
    if hasattr(model, "identity_record"):
        return model.identity_record()
    return {"identity": model.identity, "source": portable(model.source) if os.path.exists(model.source) else model.source}


def variant_prompt(spec: PromptSpec, fingerprint_of_spec: str, variant: Mapping[str, Any] | None) -> tuple[str, str]:
    """(prompt name, prompt fingerprint) of a store entry: a variant (e.g. {"separator": "\\n\\n"} for
    step-wise search, {"continuation": True} for rollouts from a prefix) changes what the entry's
    prompts are, so it is folded into the fingerprint and named for humans."""
    if not variant:
        return spec.name, fingerprint_of_spec
    name = spec.name + "".join(f"+{k}" for k in sorted(variant))
    return name, fingerprint({"prompt": fingerprint_of_spec, "variant": dict(variant)})


@dataclass
class Experiment:
    """The loaded pieces of a run; `sample_and_grade` is the repeated-sampling step every paper shares.

    `problems` is the run's default problem set and `policy` its default policy (the base model); both can
    be given per call. `model` and `sampler` are those of the current policy.
    """

    cfg: DictConfig
    run: Run
    problems: ProblemSet
    store: SampleStore
    policy: Policy = BASE
    _loaded: LoadedModel | None = field(default=None, repr=False)
    _loaded_policy: Policy | None = field(default=None, repr=False)
    _sampler: Sampler | None = field(default=None, repr=False)
    _prompt_cache: dict = field(default_factory=dict, repr=False)
    _fingerprints: dict = field(default_factory=dict, repr=False)

    # ---- policies: one model in memory at a time ----------------------------------------------------
    def load(self, policy: Policy | Mapping | None = None) -> LoadedModel:
        """The loaded model of `policy` (default: the current one); switching releases the previous model."""
        policy = Policy.of(policy) if policy is not None else self.policy
        if self._loaded is None or policy != self._loaded_policy:
            self.release()
            self._loaded = load_model(policy.model_config(self.cfg.model))
            self._loaded_policy = policy
            model = self._loaded
            label = "model" if policy.kind == "base" else f"policy:{portable(policy.path)}"
            self.run.record(label, {"name": model.name, "num_parameters": model.num_parameters, **_identity_record(model)})
        return self._loaded

    def release(self) -> None:
        """Drop the loaded model and its sampler (before loading another, or training one in place)."""
        self._loaded, self._loaded_policy, self._sampler = None, None, None
        gc.collect()

    def take(self, policy: Policy | Mapping | None = None) -> LoadedModel:
        """The loaded model of `policy`, handed over: the experiment no longer holds it (to train it in place)."""
        model = self.load(policy)
        self.release()
        return model

    def use(self, policy: Policy | Mapping | None) -> LoadedModel:
        """Make `policy` the default of later calls and load it."""
        self.policy = Policy.of(policy)
        return self.load(self.policy)

    @property
    def model(self) -> LoadedModel:
        return self.load(self.policy)

    def sampler_for(self, policy: Policy | Mapping | None = None) -> Sampler:
        model = self.load(policy)
        if self._sampler is None:
            self._sampler = factory.make_sampler(self.cfg.backend, model)
        return self._sampler

    @property
    def sampler(self) -> Sampler:
        return self.sampler_for(self.policy)

    # ---- prompts and store entries ----------------------------------------------------------------
    def prompt_fingerprint(self, spec: PromptSpec) -> str:
        key = fingerprint(asdict(spec))  # the exemplar pool it may read is hashed once per spec
        if key not in self._fingerprints:
            self._fingerprints[key] = prompt_fingerprint(spec, data_root=self.cfg.data.root)
        return self._fingerprints[key]

    def prompts(self, spec: PromptSpec, problems: list[Problem] | None = None,
                policy: Policy | Mapping | None = None) -> dict[str, str]:
        """Rendered prompts; cached per tokenizer chat template, which is all a policy changes in them."""
        model = self.load(policy)
        template = (model.use_chat_template, getattr(model.tokenizer, "chat_template", None))
        fp, root = self.prompt_fingerprint(spec), self.cfg.data.root
        out = {}
        for p in problems or self.problems.problems:
            key = (fp, template, p.dataset, p.id)
            if key not in self._prompt_cache:
                self._prompt_cache[key] = render(spec, p, model.tokenizer, data_root=root)
            out[p.id] = self._prompt_cache[key]
        return out

    def entry(self, spec: PromptSpec, params: SamplingParams, policy: Policy | Mapping | None = None,
              problem_set: ProblemSet | None = None, variant: Mapping[str, Any] | None = None,
              data_key: str | None = None) -> StoreEntry:
        """The store entry of (policy's weights, problem set, prompt + variant, sampling params).

        `data_key` stands in for the problem set's sha256 when the prompts are not a problem set's (a judge's
        prompts are keyed by the hash of each judged text instead)."""
        name, fp = variant_prompt(spec, self.prompt_fingerprint(spec), variant)
        data = data_key or (problem_set or self.problems).sha256
        model = self.load(policy)
        numerics = getattr(self.sampler_for(policy), "numerics", {})  # a bf16 sampler's samples are not an fp32 sampler's
        return self.store.entry(model.identity, data, name, fp, params, numerics, label=model.name)

    def record_entry(self, label: str, entry: StoreEntry) -> None:
        self.run.record(f"store:{label}", {"dir": portable(entry.dir), **entry.key.as_dict()})

    def draw(self, entry: StoreEntry, prompts: Mapping[str, str], n: int, params: SamplingParams,
             policy: Policy | Mapping | None = None, desc: str = "sampling") -> pd.DataFrame:
        """n samples per prompt from `entry`, drawing with `policy` only what the store lacks.

        The entry must be one of `policy` (from `entry(..., policy=policy)`): its key names the weights."""
        sampler = self.sampler_for(policy)
        if entry.key.model != self.load(policy).identity:
            raise ConfigError(f"store entry {portable(entry.dir)} belongs to '{entry.key.model}', "
                              f"not to the policy sampling now ('{self.load(policy).identity}')")
        samples = draw_samples(entry, sampler, prompts, n, params, progress=bool(self.cfg.progress), desc=desc)
        name = getattr(sampler, "name", type(sampler).__name__)
        # the kernel rounds differently but draws the same samples' distribution: named here, not in the store's key
        described = {**getattr(sampler, "numerics", {}), "matmul_kernel": getattr(sampler, "kernels", None)}
        numerics = ", ".join(f"{k} {v}" for k, v in described.items() if v is not None)
        self.run.record_draw(desc, samples, samples.attrs.get("drawn_now", 0), f"{name} ({numerics})" if numerics else name)
        return samples

    def sample_and_grade(
        self,
        spec: PromptSpec,
        n: int,
        params: SamplingParams | None = None,
        problems: list[Problem] | None = None,
        desc: str = "sampling",
        policy: Policy | Mapping | None = None,
        problem_set: ProblemSet | None = None,
        variant: Mapping[str, Any] | None = None,
    ) -> pd.DataFrame:
        """n graded samples per problem of `problem_set` (or its subset `problems`) from `policy`, drawing
        only what the store does not hold yet. Defaults: the run's sampling params, problems and policy.
        `.attrs` carries the store entry (`entry`, an EntryRef) and how many samples were drawn now (`drawn_now`)."""
        params = params or sampling_params(self.cfg, tuple(spec.stop))
        problem_set = problem_set or self.problems
        problems = problems or problem_set.problems
        entry = self.entry(spec, params, policy, problem_set, variant)
        self.record_entry(desc, entry)
        samples = self.draw(entry, self.prompts(spec, problems, policy), n, params, policy, desc)
        if self.cfg.mode == "sample":
            return samples
        grader = self.cfg.grader
        graded = grade_samples(entry, samples, problems, grader.method, grader.timeout, grader.workers)
        graded.attrs.update(samples.attrs, entry=EntryRef(entry.dir, entry.key))
        return graded


def setup_experiment(cfg: DictConfig, run: Run, problems: ProblemSet | None = None, load: bool = True) -> Experiment:
    """The experiment of `cfg`: its `dataset` problems (or `problems`), store, and the base model (loaded
    now unless `load` is false: a resumed loop may never need it)."""
    validate(cfg, ModelConfig, "model")
    store_cfg = validate(cfg, StoreConfig, "store")
    if problems is None:
        problems = load_problems(cfg.dataset, cfg.data.root)
        run.record("data", problems.provenance())
    exp = Experiment(cfg, run, problems, SampleStore(store_cfg.root, shard=store_cfg.shard))
    if load:
        exp.load(BASE)
    return exp


def prompt_from_cfg(cfg: Any) -> PromptSpec:
    """A PromptSpec from a composed `cfg.prompt` node or a conf/prompt name."""
    return load_prompt(cfg)
