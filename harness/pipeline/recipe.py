"""A paper whose policy changes, as one object: its algorithm box (`run_all`) over a `PolicyLoop`.

Every iterated paper (ReST, Self-Rewarding, R3, ...) is started the same way — a run directory, the recipe's
set-up, its stages, its report — so that sequence lives here once and a paper's `__main__` is one line:

    main = recipe_entry("rest", loop.setup, report.write)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from harness.cli import hydra_entry
from harness.pipeline.experiment import Experiment
from harness.pipeline.iterated import PolicyLoop
from harness.reporting.paths import portable
from harness.reporting.run import Run, start_run


@dataclass
class Recipe:
    """Base of a paper's recipe: subclasses add their settings and problem sets and write `run_all()`."""

    loop: PolicyLoop

    @property
    def run(self) -> Run:
        return self.loop.run

    @property
    def exp(self) -> Experiment:
        return self.loop.exp

    def run_all(self) -> dict:  # pragma: no cover - every recipe defines its own algorithm box
        raise NotImplementedError


def recipe_entry(paper: str, setup: Callable[[DictConfig, Run], Recipe],
                 write_report: Callable[[Run, Any, dict, DictConfig], Path]) -> Callable[[], None]:
    """The `main` of `python -m replications.<paper>`: set up, run every stage (resumable), write the report."""

    def task(cfg: DictConfig) -> None:
        run = start_run(cfg, paper)
        recipe = setup(cfg, run)
        results = recipe.run_all()
        with run.stage("report"):
            path = write_report(run, recipe, results, cfg)
        print(f"report: {portable(path)}")

    task.__name__ = task.__qualname__ = paper
    return hydra_entry(paper, task)
