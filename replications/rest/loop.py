"""ReST's Grow/Improve recipe on the harness's iterated-policy loop (harness.pipeline.iterated):

    eval/0                      the base policy on the held-out test subset
    for i in 1..iterations:
        grow/i                  N samples per training problem from the current policy (sample store), graded
        improve/i.j             per threshold t_j: keep reward > t_j, cap, mix references, fine-tune
                                (ReST-EM: from the base model, one step | ReST: from the last policy, t_j rising)
        eval/i                  the new policy on the test subset: greedy pass@1, pass@k, maj@k
    control/1, eval/control1    (rest.control) iteration 1's Improve step on reference solutions of the same
                                problems, as many examples: what ReST's own samples add beyond more training

Each stage's summary lands in the run's ledger; a rerun of the same run skips finished stages, draws only
the samples the store lacks and reuses finished checkpoints (PolicyLoop).
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from harness.config import SamplingConfig, validate
from harness.data.problems import ProblemSet, load_problems
from harness.data.prompts import PromptSpec, load_prompt
from harness.errors import ConfigError
from harness.pipeline.experiment import BASE, Experiment, Policy, setup_experiment
from harness.pipeline.recipe import Recipe
from harness.pipeline.iterated import PolicyLoop, StageFailure, derived_seed, sample_info
from harness.reporting.run import Run
from harness.sampling.base import SamplingParams
from harness.training import training_config
from replications.rest import evaluate, improve
from replications.rest.config import RestSettings, improve_training, rest_settings

__all__ = ["Rest", "StageFailure", "setup"]

# What the ledger's results depend on; a resume with a different value of any of them is refused.
CONFIG_KEYS = ("model", "dataset", "train_dataset", "prompt", "sampling", "training", "rest", "grader")


@dataclass
class Rest(Recipe):
    settings: RestSettings
    train: ProblemSet
    test: ProblemSet
    spec: PromptSpec
    grow_params: SamplingParams
    greedy_params: SamplingParams
    eval_params: SamplingParams
    training: DictConfig  # of the Improve steps: the `training` group with rest.training's overrides

    def run_all(self) -> dict:
        s, loop = self.settings, self.loop
        results: dict = {"evals": {}, "grows": {}, "improves": {}}
        results["evals"][0] = loop.stage("eval/0", lambda: self.evaluate(BASE, "base"), "eval base")
        policy = BASE
        for i in range(1, s.iterations + 1):
            grown = loop.stage(f"grow/{i}", lambda: self.grow(policy, i), f"grow {i}")
            results["grows"][i] = grown
            init = BASE if s.algorithm == "rest_em" else policy
            for j, threshold in enumerate(s.thresholds, 1):
                step = loop.stage(f"improve/{i}.{j}", lambda: self.improve(i, j, threshold, init, grown),
                                  f"improve {i}.{j} (filter + fine-tune)")
                results["improves"][f"{i}.{j}"] = step
                init = Policy.of(step["policy"])  # ReST: the next Improve step continues from this one
            policy = init
            results["evals"][i] = loop.stage(f"eval/{i}", lambda: self.evaluate(policy, f"iter {i}"), f"eval {i}")
            if i == 1 and s.control:
                results["control"] = self.control_arm(grown, results["improves"][f"1.{len(s.thresholds)}"])
        loop.close()
        return results

    # ---- the stages -----------------------------------------------------------------------------------
    def _sample(self, policy: Policy, problem_set: ProblemSet, n: int, params: SamplingParams, desc: str):
        return self.exp.sample_and_grade(self.spec, n, params, desc=desc, policy=policy, problem_set=problem_set)

    def evaluate(self, policy: Policy, tag: str) -> dict:
        e = self.settings.eval
        out: dict = {"policy": policy.as_dict()}
        if e.greedy:
            graded = self._sample(policy, self.test, 1, self.greedy_params, f"eval {tag} greedy")
            out["greedy"] = evaluate.per_problem_correct(graded)
            out["greedy_info"] = sample_info(graded)
        if e.samples:
            graded = self._sample(policy, self.test, e.samples, self.eval_params, f"eval {tag} samples")
            out["samples"] = evaluate.per_problem_records(graded)
            out["samples_info"] = sample_info(graded)
        if e.train_accuracy:
            graded = self._sample(policy, self.train, 1, self.greedy_params, f"eval {tag} train greedy")
            out["train_greedy"] = evaluate.per_problem_correct(graded)
        out["model"] = self.exp.load(policy).identity
        return out

    def grow(self, policy: Policy, i: int) -> dict:
        graded = self._sample(policy, self.train, self.settings.samples_per_problem, self.grow_params, f"grow {i}")
        per = graded.groupby("problem_id")["correct"].agg(["sum", "count"])
        return {
            **sample_info(graded),
            "policy": policy.as_dict(),
            "problems": int(len(per)),
            "samples": int(len(graded)),
            "correct_samples": int(graded["correct"].sum()),
            "coverage": float((per["sum"] > 0).mean()),  # pass@N over the training problems
            "sample_accuracy": float(graded["correct"].mean()),
            "per_problem_correct": {pid: int(c) for pid, c in per["sum"].items()},
        }

    def _graded_grow(self, i: int, grown: dict):
        """Grow step i's graded samples (from the store) with their rewards, and the policy that drew them."""
        s = self.settings
        sampled_by = Policy.of(grown["policy"])
        graded = self._sample(sampled_by, self.train, s.samples_per_problem, self.grow_params, f"grow {i} (read)")
        graded["reward"] = improve.rewards(graded, s.reward, s.partial_credit).to_numpy()
        return graded, sampled_by

    def improve(self, i: int, j: int, threshold: float, init: Policy, grown: dict) -> dict:
        s = self.settings
        graded, sampled_by = self._graded_grow(i, grown)
        data, _ = improve.training_data(
            graded, self.exp.prompts(self.spec, self.train.problems, sampled_by), self.train.problems, threshold,
            s.max_per_problem, s.dedupe, s.reference_fraction, self.spec.answer_format,
            seed=derived_seed(s.seed, "improve", i, j),
            provenance={"store": grown["store"], "sampled_by": grown["model"], "iteration": i, "improve_step": j,
                        "reward": s.reward, "data": self.train.provenance()},
            step_check=s.step_check,
        )
        summary = {"threshold": threshold, "init": init.as_dict(), **data.describe()}
        summary.pop("data")  # the training problems' provenance: recorded once, in the run's provenance
        if len(data) == 0:  # nothing passed: the policy stays what it was (recorded, not hidden)
            return {**summary, "policy": init.as_dict(), "checkpoint": None, "skipped": "no training examples"}
        tag = f"iter{i}" if len(s.thresholds) == 1 else f"iter{i}.{j}"
        return {**summary, **self.loop.train(init, data, tag, method="sft", training_cfg=self.training)}

    def control_arm(self, grown: dict, step: dict) -> dict:
        """Iteration 1's Improve step again from the same init, on the reference solutions of the problems
        (and as many examples) its last Improve step kept samples of; then the same evaluation."""
        s, loop = self.settings, self.loop
        init = BASE  # iteration 1 starts from the base model under both algorithms

        def train() -> dict:
            graded, _ = self._graded_grow(1, grown)
            kept = improve.select(graded, s.thresholds[-1], s.max_per_problem, s.dedupe, s.step_check)
            if len(kept) == 0:
                return {"policy": init.as_dict(), "init": init.as_dict(), "checkpoint": None,
                        "skipped": "iteration 1 kept nothing"}
            data = improve.control_data(kept, self.exp.prompts(self.spec, self.train.problems, init),
                                        self.train.problems, self.spec.answer_format,
                                        provenance={"equal_steps_to": step.get("sha256"), "iteration": 1})
            summary = data.describe()
            summary.pop("data", None)
            return {**summary, "init": init.as_dict(),
                    **loop.train(init, data, "control1", method="sft", training_cfg=self.training)}

        trained = loop.stage("control/1", train, "control 1 (references, equal steps)")
        evaluated = loop.stage("eval/control1", lambda: self.evaluate(Policy.of(trained["policy"]), "control 1"),
                               "eval control 1")
        return {"improve": trained, "eval": evaluated}


def setup(cfg: DictConfig, run: Run) -> Rest:
    settings = rest_settings(cfg)
    training_config(cfg.training)
    grow_cfg = validate(cfg, SamplingConfig, "sampling")
    spec = load_prompt(cfg.prompt)
    train = load_problems(cfg.train_dataset, cfg.data.root)
    test = load_problems(cfg.dataset, cfg.data.root)
    overlap = set(p.question.strip() for p in train) & set(p.question.strip() for p in test)
    if overlap:
        raise ConfigError(f"train_dataset/dataset: {len(overlap)} test questions are also training problems")
    run.record("data", {"train": train.provenance(), "test": test.provenance()})
    exp = setup_experiment(cfg, run, problems=test, load=False)
    loop = PolicyLoop(exp, CONFIG_KEYS, fail_at=settings.fail_at, volatile=("rest.fail_at",))
    stop = tuple(spec.stop)
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=settings.eval.greedy_max_new_tokens,
                            stop=stop, seed=0)
    return Rest(loop=loop, settings=settings, train=train, test=test, spec=spec, grow_params=grow_cfg.params(stop),
                greedy_params=greedy, eval_params=settings.eval.sampling.params(stop), training=improve_training(cfg))
