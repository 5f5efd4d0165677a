"""R3's recipe on the harness's iterated-policy loop (harness.pipeline.iterated):

    eval/sft                        greedy pass@1 per level of the SFT policy on the test problems
    for arm in r3.arms              scratch: outcome-only RL from the question alone | reverse, mixed: R3
        policy = SFT
        for block in schedule(arm)  K blocks; every arm has the same problems and block sizes (curriculum.py)
            train/<arm>/<block>     GRPO on the block's start states from `policy`, reward 1 / 0.2 / 0
            policy = its checkpoint
        eval/<arm>                  greedy pass@1 per level of the arm's last policy

Each stage's summary lands in the run's ledger; a rerun of the same run skips finished stages, reuses
finished checkpoints (a kill inside a block retrains that block only) and draws no evaluation sample the
store holds. The KL penalty of every block is measured against the SFT policy, not the block's start.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig

from harness.data.problems import ProblemSet, load_problems
from harness.data.prompts import PromptSpec, load_prompt
from harness.errors import ConfigError
from harness.grading.grader import Grader
from harness.pipeline.experiment import BASE, Experiment, Policy, setup_experiment
from harness.pipeline.recipe import Recipe
from harness.pipeline.iterated import PolicyLoop, StageFailure, sample_info
from harness.reporting.run import Run
from harness.sampling.base import SamplingParams
from harness.training import TrainingData, load_checkpoint, training_config
from harness.training.rl import RLConfig, train_grpo, zero_variance_share
from replications.r3.config import R3Settings, r3_settings, reward_values, rl_settings
from replications.r3.curriculum import Demonstration, StageBlock, demonstrations, schedule
from replications.r3.reward import RewardValues, outcome_rewards

__all__ = ["R3", "StageFailure", "setup"]

# What the ledger's results depend on; a resume with a different value of any of them is refused.
CONFIG_KEYS = ("model", "dataset", "train_dataset", "prompt", "backend", "training", "r3", "grader")


@dataclass
class R3(Recipe):
    settings: R3Settings
    rl: RLConfig
    rewards: RewardValues
    train: ProblemSet
    test: ProblemSet
    spec: PromptSpec
    greedy_params: SamplingParams

    def run_all(self) -> dict:
        s, loop = self.settings, self.loop
        results: dict = {"evals": {}, "blocks": {}}
        results["evals"]["sft"] = loop.stage("eval/sft", lambda: self.evaluate(BASE, "sft"), "eval sft")
        for arm in s.arms:
            policy = BASE
            results["blocks"][arm] = []
            for block in schedule(self.demos, arm, s.steps, self.rl.prompts_per_step, s.seed, s.stages):
                step = loop.stage(f"train/{arm}/{block.name}", lambda: self.train_block(arm, block, policy),
                                  f"train {arm} {block.name} (GRPO)")
                results["blocks"][arm].append(step)
                policy = Policy.of(step["policy"])
            results["evals"][arm] = loop.stage(f"eval/{arm}", lambda: self.evaluate(policy, arm), f"eval {arm}")
        loop.close()
        return results

    # ---- the stages -----------------------------------------------------------------------------------
    def evaluate(self, policy: Policy, tag: str) -> dict:
        graded = self.exp.sample_and_grade(self.spec, 1, self.greedy_params, desc=f"eval {tag} greedy",
                                           policy=policy, problem_set=self.test)
        correct = {str(pid): int(c) for pid, c in graded.groupby("problem_id")["correct"].max().items()}
        return {"policy": policy.as_dict(), "model": self.exp.load(policy).identity, "greedy": correct,
                **sample_info(graded)}

    def train_block(self, arm: str, block: StageBlock, init: Policy) -> dict:
        records = [state.as_record() for state in block.states]
        data = TrainingData(records, {"arm": arm, "block": block.name, "stage": block.stage,
                                      "train": self.train.provenance()})
        reference = self.reference  # before the loop takes the model: it may load the SFT policy
        step = self.loop.train(init, data, tag=f"{arm}-{block.name}", method=self._trainer(reference),
                               training_cfg=self.loop.cfg.training)
        result = load_checkpoint(step["checkpoint"]).meta["result"]
        rows, log = result["rewards"], result["log"]
        summary = {k: v for k, v in step.items() if k not in ("loss_before", "loss_after", "train_loss")}
        return {
            **summary,
            "arm": arm,
            "block": block.name,
            "stage": block.stage,
            "prompts": len(records),
            "samples": len(rows),
            "given_steps_mean": statistics.fmean(r["given"] for r in records),
            "mean_reward": statistics.fmean(r["reward"] for r in rows) if rows else None,
            "correct_share": statistics.fmean(r["reward"] == self.rewards.correct for r in rows) if rows else None,
            "zero_variance_groups": zero_variance_share(rows),
            "log": log,
        }

    # ---- pieces -----------------------------------------------------------------------------------------
    @cached_property
    def demos(self) -> list[Demonstration]:
        return demonstrations(self.train.problems, self.exp.prompts(self.spec, self.train.problems, BASE))

    @cached_property
    def grader(self) -> Grader:
        g = self.loop.cfg.grader
        datasets = {p.dataset for p in self.train.problems}
        if len(datasets) != 1:
            raise ConfigError(f"train_dataset: problems of several grading conventions {sorted(datasets)}")
        return Grader(datasets.pop(), method=g.method, timeout=g.timeout, workers=g.workers)

    @cached_property
    def reference(self) -> str:
        """The SFT policy's folder, the KL penalty's reference (a base that is no folder is saved once)."""
        loaded = self.exp.load(BASE)
        if os.path.isdir(loaded.source):
            return loaded.source
        folder = Path(self.loop.checkpoints) / "reference"
        if not (folder / "config.json").is_file():
            loaded.model.save_pretrained(folder)
            loaded.tokenizer.save_pretrained(folder)
        return str(folder)

    def reward(self, completions: list[str], rows: list[dict], finish_reasons: list) -> list[float]:
        return outcome_rewards(self.grader, completions, [r["answer"] for r in rows], finish_reasons, self.rewards)

    def _trainer(self, reference: str):
        def grpo(model, tokenizer, data: TrainingData, training_cfg, scratch_dir):
            rl = dataclasses.replace(self.rl, training=training_config(training_cfg))
            return train_grpo(model, tokenizer, data.records, self.reward, rl, scratch_dir, reference=reference)

        return grpo


def setup(cfg: DictConfig, run: Run) -> R3:
    settings = r3_settings(cfg)
    rl = rl_settings(cfg, settings)
    spec = load_prompt(cfg.prompt)
    if not rl.stop:
        rl = dataclasses.replace(rl, stop=list(spec.stop))
    train = load_problems(cfg.train_dataset, cfg.data.root)
    test = load_problems(cfg.dataset, cfg.data.root)
    overlap = set(p.question.strip() for p in train) & set(p.question.strip() for p in test)
    if overlap:
        raise ConfigError(f"train_dataset/dataset: {len(overlap)} test questions are also training problems")
    run.record("data", {"train": train.provenance(), "test": test.provenance()})
    exp = setup_experiment(cfg, run, problems=test, load=False)
    loop = PolicyLoop(exp, CONFIG_KEYS, fail_at=settings.fail_at, volatile=("r3.fail_at",))
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=settings.eval.greedy_max_new_tokens,
                            stop=tuple(spec.stop), seed=0)
    return R3(loop=loop, settings=settings, rl=rl, rewards=reward_values(settings), train=train, test=test,
              spec=spec, greedy_params=greedy)
