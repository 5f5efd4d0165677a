"""What every replication does first: problems, model, prompts, store entry, sampler, from one config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from harness.config import ModelConfig, StoreConfig, sampling_params, validate
from harness.data.problems import Problem, ProblemSet, load_problems
from harness.grading.graded import grade_samples
from harness.models.loading import LoadedModel, load_model
from harness.data.prompts import PromptSpec, load_prompt, prompt_fingerprint, render
from harness.reporting.run import Run
from harness.sampling.base import Sampler, SamplingParams
from harness.sampling.factory import make_sampler
from harness.store.samples import SampleStore, StoreEntry, draw_samples


@dataclass
class Experiment:
    """The loaded pieces of a run; `sample_and_grade` is the repeated-sampling step every paper shares."""

    cfg: DictConfig
    run: Run
    problems: ProblemSet
    model: LoadedModel
    store: SampleStore
    _sampler: Sampler | None = field(default=None, repr=False)

    @property
    def sampler(self) -> Sampler:
        if self._sampler is None:
            self._sampler = make_sampler(self.cfg.backend, self.model)
        return self._sampler

    def prompts(self, spec: PromptSpec, problems: list[Problem] | None = None) -> dict[str, str]:
        root = self.cfg.data.root
        return {p.id: render(spec, p, self.model.tokenizer, data_root=root) for p in problems or self.problems.problems}

    def entry(self, spec: PromptSpec, params: SamplingParams) -> StoreEntry:
        return self.store.entry(
            self.model.identity,
            self.problems.sha256,
            spec.name,
            prompt_fingerprint(spec, data_root=self.cfg.data.root),
            params,
        )

    def sample_and_grade(
        self,
        spec: PromptSpec,
        n: int,
        params: SamplingParams | None = None,
        problems: list[Problem] | None = None,
        desc: str = "sampling",
    ) -> pd.DataFrame:
        """n graded samples per problem, drawing only what the store does not hold yet."""
        params = params or sampling_params(self.cfg, tuple(spec.stop))
        problems = problems or self.problems.problems
        entry = self.entry(spec, params)
        self.run.record(f"store:{desc}", {"dir": str(entry.dir), **entry.key.as_dict()})
        prompts = self.prompts(spec, problems)
        samples = draw_samples(entry, self.sampler, prompts, n, params, progress=bool(self.cfg.progress), desc=desc)
        self.run.record_draw(desc, samples, samples.attrs.get("drawn_now", 0))
        if self.cfg.mode == "sample":
            return samples
        grader = self.cfg.grader
        return grade_samples(entry, samples, problems, grader.method, grader.timeout, grader.workers)


def setup_experiment(cfg: DictConfig, run: Run) -> Experiment:
    validate(cfg, ModelConfig, "model")
    store_cfg = validate(cfg, StoreConfig, "store")
    problems = load_problems(cfg.dataset, cfg.data.root)
    run.record("data", problems.provenance())
    model = load_model(cfg.model)
    run.record("model", {"name": model.name, "source": model.source, "num_parameters": model.num_parameters})
    return Experiment(cfg, run, problems, model, SampleStore(store_cfg.root, shard=store_cfg.shard))


def prompt_from_cfg(cfg: Any) -> PromptSpec:
    """A PromptSpec from a composed `cfg.prompt` node or a conf/prompt name."""
    return load_prompt(cfg)
