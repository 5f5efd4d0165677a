"""Self-Rewarding's stages on the harness's iterated-policy loop (harness.pipeline.iterated.PolicyLoop):

    eval/m0, eval/sft              the base model M0 and the SFT baseline (IFT only) on held-out test problems
    eft                            SFT-baseline samples of the EFT problems, graded, rendered as judge prompts
                                   whose targets follow from the verdict (harness.reward.judge.verdict_score)
    train/m1                       M1 = SFT on IFT + EFT
    for t in 1..iterations:
        eval/m{t}, judge/m{t}      M_t on the test problems; M_t as a judge of fixed held-out candidates
        aift/{t}                   N candidates per new prompt from M_t; M_t judges each `judge_repeats` times
                                   (or the grader, judge=oracle); chosen = highest mean, rejected = lowest
        train/m{t+1}               DPO from M_t on the pairs
    eval/m{T+1}, judge/m{T+1}; judge/sft (the ablation: a judge without EFT data)

Every sample (candidates and judgements alike) is drawn through the store; a stage's summary lands in the ledger
and a rerun skips finished stages and reuses finished checkpoints (PolicyLoop).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from harness.config import SamplingConfig, validate
from harness.data.problems import Problem, ProblemSet, load_problems
from harness.data.prompts import PromptSpec, load_prompt
from harness.errors import ConfigError
from harness.pipeline.experiment import BASE, Experiment, Policy, setup_experiment
from harness.pipeline.recipe import Recipe
from harness.pipeline.iterated import PolicyLoop, StageFailure, derived_seed, sample_info
from harness.reporting.run import Run
from harness.reward.judge import Judge, ModelJudge, OracleJudge
from harness.sampling.base import SamplingParams
from harness.training import TrainingData, reference_records
from replications.self_rewarding import pairs as P
from replications.self_rewarding.config import EFT_BALANCE_FIELDS, SelfRewardingSettings, self_rewarding_settings, training_for

__all__ = ["SelfRewarding", "StageFailure", "setup"]

# What the ledger's results depend on; a resume with a different value of any of them is refused.
CONFIG_KEYS = ("model", "dataset", "train_dataset", "prompt", "sampling", "training", "self_rewarding", "grader")


@dataclass
class Slices:
    """Disjoint slices of the training problems: IFT (m1_init=base), EFT, and each iteration's AIFT prompts."""

    ift: list[Problem]
    eft: list[Problem]
    aift: list[list[Problem]]

    @classmethod
    def of(cls, problems: list[Problem], s: SelfRewardingSettings) -> "Slices":
        order = list(problems)
        random.Random(f"{s.seed}/slices").shuffle(order)
        sizes = [s.ift.problems if s.m1_init == "base" else 0, s.eft.problems] + [s.prompts_per_iteration] * s.iterations
        if sum(sizes) > len(order):
            raise ConfigError(f"config key 'train_dataset': {len(order)} problems, but the IFT/EFT/AIFT slices need "
                              f"{sum(sizes)} (self_rewarding.ift.problems, eft.problems, prompts_per_iteration x iterations)")
        cut, start = [], 0
        for size in sizes:
            cut.append(order[start:start + size])
            start += size
        return cls(cut[0], cut[1], cut[2:])


@dataclass
class SelfRewarding(Recipe):
    settings: SelfRewardingSettings
    train: ProblemSet
    test: ProblemSet
    test_problems: list[Problem]
    slices: Slices
    spec: PromptSpec
    candidate_params: SamplingParams
    judge_params: SamplingParams
    greedy_params: SamplingParams
    m0_exp: Optional[Experiment] = None  # the base model when the configured model is a warm start of it
    policies: dict = field(default_factory=dict)  # "sft", "m1", "m2"... -> Policy

    # ---- the algorithm box ----------------------------------------------------------------------------------
    def run_all(self) -> dict:
        s, loop = self.settings, self.loop
        out: dict = {"evals": {}, "judges": {}, "aift": {}, "train": {}}
        out["evals"]["m0"] = loop.stage("eval/m0", lambda: self.evaluate("m0"), "eval M0")
        sft = self.policies["sft"] = self.sft_baseline(out)
        out["evals"]["sft"] = loop.stage("eval/sft", lambda: self.evaluate("sft", sft), "eval SFT baseline")
        out["eft"] = loop.stage("eft", self.eft_summary, "EFT data (SFT-baseline samples, graded)")
        step = loop.stage("train/m1", lambda: self.train_m1(sft), "M1: SFT on IFT + EFT")
        out["train"]["m1"] = step
        policy = Policy.of(step["policy"])
        for t in range(1, s.iterations + 1):
            out["evals"][f"m{t}"] = loop.stage(f"eval/m{t}", lambda: self.evaluate(f"m{t}", policy), f"eval M{t}")
            out["judges"][f"m{t}"] = loop.stage(f"judge/m{t}", lambda: self.judge_quality(policy, f"m{t}"), f"M{t} as judge")
            out["aift"][str(t)] = loop.stage(f"aift/{t}", lambda: self.aift_summary(t, policy), f"AIFT {t}: candidates, judging, pairs")
            step = loop.stage(f"train/m{t + 1}", lambda: self.train_dpo(t, policy), f"M{t + 1}: DPO on AIFT(M{t})")
            out["train"][f"m{t + 1}"] = step
            policy = Policy.of(step["policy"])
        last = f"m{s.iterations + 1}"
        out["evals"][last] = loop.stage(f"eval/{last}", lambda: self.evaluate(last, policy), f"eval {last.upper()}")
        out["judges"][last] = loop.stage(f"judge/{last}", lambda: self.judge_quality(policy, last), f"{last.upper()} as judge")
        if s.eval.judge_sft_baseline:
            out["judges"]["sft"] = loop.stage("judge/sft", lambda: self.judge_quality(sft, "sft"), "SFT baseline as judge")
        out["levels"] = {p.id: p.metadata.get("level") for p in self.test_problems}
        loop.close()
        return out

    # ---- policies -------------------------------------------------------------------------------------------
    def sft_baseline(self, out: dict) -> Policy:
        """The configured model's warm start (IFT already done), or M0 fine-tuned on IFT here (m1_init=base)."""
        if self.m0_exp is not None:
            return BASE
        step = self.loop.stage("train/sft", lambda: self.loop.train(BASE, self.ift_data(), "sft", "sft",
                                                                       training_for(self.loop.cfg, "m1_training")),
                               "SFT baseline: SFT on IFT")
        out["train"]["sft"] = step
        return Policy.of(step["policy"])

    def _exp_for(self, label: str) -> Experiment:
        return self.m0_exp if label == "m0" and self.m0_exp is not None else self.exp

    # ---- evaluation -----------------------------------------------------------------------------------------
    def _sample(self, policy: Policy, problems: list[Problem], problem_set: ProblemSet, n: int, params: SamplingParams,
                desc: str, exp: Experiment | None = None):
        exp = exp or self.exp
        return exp.sample_and_grade(self.spec, n, params, problems=problems, desc=desc, policy=policy,
                                    problem_set=problem_set)

    def evaluate(self, label: str, policy: Policy = BASE) -> dict:
        """Greedy and sampled pass@1 of one policy on the test problems (per-problem, levels in the results)."""
        e, exp = self.settings.eval, self._exp_for(label)
        if exp is not self.exp:
            self.exp.release()  # one model in memory at a time
        greedy = self._sample(policy, self.test_problems, self.test, 1, self.greedy_params, f"eval {label} greedy", exp)
        out = {"policy": policy.as_dict(), "model": exp.load(policy).identity,
               "greedy": {pid: int(c) for pid, c in zip(greedy["problem_id"], greedy["correct"])},
               "greedy_info": sample_info(greedy)}
        if e.samples:
            sampled = self._sample(policy, self.test_problems, self.test, e.samples, self.candidate_params,
                                   f"eval {label} samples", exp)
            per = sampled.groupby("problem_id")["correct"].agg(["sum", "count"])
            out["samples"] = {pid: [int(c), int(n)] for pid, (c, n) in per.iterrows()}
            out["samples_info"] = sample_info(sampled)
        if exp is not self.exp:
            exp.release()
        return out

    def held_out_candidates(self):
        """Fixed candidates every judge is measured on: the SFT baseline's sampled test answers, graded."""
        sft = self.policies.get("sft", BASE)
        e = self.settings.eval
        sampled = self._sample(sft, self.test_problems, self.test, max(e.samples, e.judge_candidates),
                               self.candidate_params, "judge candidates (SFT-baseline test samples)")
        return sampled[sampled["index"] < self.settings.eval.judge_candidates].reset_index(drop=True)

    def judge_quality(self, policy: Policy, label: str) -> dict:
        """The policy as a reward model on held-out candidates: pairwise accuracy vs the grader, ties, scores."""
        candidates = self.held_out_candidates()
        judge = ModelJudge(self.exp, policy, self.spec, self.judge_params, desc=f"judge {label} held-out")
        scored = self._judge_table(judge, candidates, self.test_problems)
        return {"policy": policy.as_dict(), "candidates": len(scored), **P.pairwise_accuracy(scored),
                "score_distribution": P.score_distribution(scored),
                "unparsable_judgements": int(scored["unparsable"].sum()),
                "unscored_candidates": int(scored["mean_score"].isna().sum()), "judge_info": judge.info()}

    def _judge_table(self, judge: Judge, candidates, problems: list[Problem]):
        questions = {p.id: p.question for p in problems}
        cands = P.candidates_from_graded(candidates, questions)
        judgements = judge.judge(cands, self.settings.judge_repeats)
        return P.score_table(candidates, judgements, self.settings.min_scored_repeats)

    # ---- M1: IFT + EFT --------------------------------------------------------------------------------------
    def ift_data(self) -> TrainingData:
        """IFT: reference solutions. With a warm start, a seeded subset of its own training records (what the SFT
        baseline learnt, replayed so that EFT does not overwrite it); else of the IFT slice of train_dataset."""
        n = self.settings.ift.problems
        if self.m0_exp is not None:
            from harness.training.warm_start import plan

            records = plan(self.loop.cfg.model).data.records
            chosen = sorted(random.Random(f"{self.settings.seed}/ift").sample(range(len(records)), min(n, len(records))))
            return TrainingData([{**records[i], "source": "ift"} for i in chosen], {"ift": "warm start replay"})
        problems = self.slices.ift
        prompts = self.exp.prompts(self.spec, problems, BASE)
        return TrainingData([{**r, "source": "ift"} for r in reference_records(problems, prompts, lambda p: p.solution)],
                            {"ift": "reference solutions", "problems": len(problems)})

    def eft_data(self, sft: Policy) -> tuple[TrainingData, dict]:
        e = self.settings.eft
        graded = self._sample(sft, self.slices.eft, self.train, e.samples_per_problem, self.candidate_params, "eft samples")
        cands = P.candidates_from_graded(graded, {p.id: p.question for p in self.slices.eft})
        tokenizer = self.exp.load(sft).tokenizer
        raw = P.eft_records(cands, self.spec, tokenizer)
        seed = derived_seed(self.settings.seed, "eft")
        balance_field = EFT_BALANCE_FIELDS[e.balance]
        if balance_field is not None:
            kept = P.balance_by(raw, seed, e.max_examples, key=balance_field)
        else:
            chosen = sorted(random.Random(seed).sample(range(len(raw)), min(len(raw), e.max_examples or len(raw))))
            kept = [raw[i] for i in chosen]
        counts = {"samples": len(graded), "sample_accuracy": float(graded["correct"].mean()),
                  "targets_before_balance": P.score_counts(raw), "targets": P.score_counts(kept), "examples": len(kept),
                  **{f"samples_{k}": v for k, v in sample_info(graded).items()}}
        return TrainingData(kept, {"eft": counts}), counts

    def eft_summary(self) -> dict:
        return self.eft_data(self.policies.get("sft", BASE))[1]

    def train_m1(self, sft: Policy) -> dict:
        eft, counts = self.eft_data(sft)
        ift = self.ift_data()
        records = ift.records + eft.records
        random.Random(f"{self.settings.seed}/m1-order").shuffle(records)  # one stream of both tasks, not two blocks
        data = TrainingData(records, {"ift_examples": len(ift), "eft_examples": len(eft)})
        init = sft if self.settings.m1_init == "sft_baseline" else BASE
        step = self.loop.train(init, data, "m1", "sft", training_for(self.loop.cfg, "m1_training"))
        return {**step, "init": init.as_dict(), "ift_examples": len(ift), "eft_examples": len(eft)}

    # ---- AIFT: candidates, self-judging, pairs, DPO ---------------------------------------------------------
    def aift_pairs(self, t: int, policy: Policy):
        problems = self.slices.aift[t - 1]
        candidates = self._sample(policy, problems, self.train, self.settings.candidates, self.candidate_params,
                                  f"aift {t} candidates")
        judge: Judge = (OracleJudge() if self.settings.judge == "oracle"
                        else ModelJudge(self.exp, policy, self.spec, self.judge_params, desc=f"aift {t} judge"))
        scored = self._judge_table(judge, candidates, problems)
        pairs, counts = P.select_pairs(scored)
        return problems, candidates, scored, pairs, counts, judge

    def aift_summary(self, t: int, policy: Policy) -> dict:
        _, candidates, scored, pairs, counts, judge = self.aift_pairs(t, policy)
        chosen_right = sum(p.get("chosen_correct", False) for p in pairs)
        rejected_wrong = sum(not p.get("rejected_correct", True) for p in pairs)
        return {"policy": policy.as_dict(), **counts, "candidates": sample_info(candidates),
                "candidate_accuracy": float(candidates["correct"].mean()), "judge": judge.info(),
                "judge_on_candidates": P.pairwise_accuracy(scored), "score_distribution": P.score_distribution(scored),
                "pairs_chosen_correct": chosen_right, "pairs_rejected_incorrect": rejected_wrong}

    def train_dpo(self, t: int, policy: Policy) -> dict:
        problems, _, _, pairs, counts, _ = self.aift_pairs(t, policy)
        prompts = self.exp.prompts(self.spec, problems, policy)
        data = TrainingData(P.pair_records(pairs, prompts), {"iteration": t, **counts})
        if len(data) == 0:  # every prompt tied or unscored: the policy stays what it was (recorded, not hidden)
            return {"policy": policy.as_dict(), "checkpoint": None, "skipped": "no preference pairs", **counts}
        return {**self.loop.train(policy, data, f"m{t + 1}", "dpo", training_for(self.loop.cfg, "dpo_training")),
                "pairs": len(data)}


def _greedy(max_new_tokens: int, stop: tuple[str, ...]) -> SamplingParams:
    return SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, stop=stop, seed=0)


def setup(cfg: DictConfig, run: Run) -> SelfRewarding:
    from harness.training.warm_start import base_model_config, first_per_level, trained_problem_ids

    s = self_rewarding_settings(cfg)
    spec = load_prompt(cfg.prompt)
    train = load_problems(cfg.train_dataset, cfg.data.root)
    seen = trained_problem_ids(cfg.model)  # the paper's AIFT prompts are new to the SFT model: so are ours
    new_prompts = [p for p in train.problems if p.id not in seen]
    test = load_problems(cfg.dataset, cfg.data.root)
    overlap = {p.question.strip() for p in train} & {p.question.strip() for p in test}
    if overlap:
        raise ConfigError(f"train_dataset/dataset: {len(overlap)} test questions are also training problems")
    has_warm_start = bool(cfg.model.get("warm_start"))
    if has_warm_start and s.m1_init == "base":
        raise ConfigError("config key 'self_rewarding.m1_init': 'base' trains M1 from M0, but model "
                          f"'{cfg.model.name}' is a warm start (its SFT is done): use m1_init=sft_baseline")
    if not has_warm_start and s.m1_init == "sft_baseline":
        raise ConfigError(f"config key 'self_rewarding.m1_init': 'sft_baseline' needs a model with a warm_start "
                          f"('{cfg.model.name}' has none): use m1_init=base or model=smollm2_135m_sft")
    run.record("data", {"train": train.provenance(), "test": test.provenance(),
                        "train_left_out_as_warm_start_data": len(train.problems) - len(new_prompts)})
    exp = setup_experiment(cfg, run, problems=test, load=False)
    loop = PolicyLoop(exp, CONFIG_KEYS, fail_at=s.fail_at, volatile=("self_rewarding.fail_at",))
    m0_exp = None
    if has_warm_start:  # M0 is the model under the warm start: its own experiment over the same store and run
        m0_cfg = OmegaConf.merge(cfg, {})
        OmegaConf.set_struct(m0_cfg, False)
        m0_cfg.model = base_model_config(cfg.model)
        m0_exp = setup_experiment(m0_cfg, run, problems=test, load=False)
    stop = tuple(spec.stop)
    return SelfRewarding(
        loop=loop, settings=s, train=train, test=test, test_problems=first_per_level(test.problems, s.eval.per_level),
        slices=Slices.of(new_prompts, s), spec=spec,
        candidate_params=validate(cfg, SamplingConfig, "sampling").params(stop),
        judge_params=s.judge_sampling.params(stop), greedy_params=_greedy(s.eval.greedy_max_new_tokens, stop),
        m0_exp=m0_exp,
    )
