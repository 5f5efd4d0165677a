"""Easy-to-Hard Generalization (Sun et al. 2024, arXiv 2403.09472), with Hase et al.'s Supervision Gap Recovered
(arXiv 2401.06751), as its method reads:

    split       difficulty from config: easy = levels 1-3, hard = levels 4-5 (MATH) / the ladder's low and high levels
    policy      SFT on easy problems only (the warm start restricted to easy levels; paper scale: the released
                level-1to3 SFT model)
    pool        N samples per hard test problem from that policy (the store)
    evaluators  reward models (PRM with exact per-step labels on the ladder, ORM) fitted on easy problems only,
                and the same fitted on every level (the upper bound); paper scale: released PRMs by hub id
    reranking   majority vote vs weighted vote vs best-of-N at N = 1 ... 64 (size-N subset expectations),
                easy-trained vs all-trained evaluator
    SGR         (easy - unsupervised) / (hard - unsupervised): weighted vote with the easy vs the all-levels RM,
                over majority vote, with a bootstrap CI; by hard level and by number of solution steps;
                optionally (policy_sgr) Hase et al.'s own: greedy accuracy of no SFT / easy SFT / all-levels SFT
    RL          GRPO (TRL; the paper's PPO is not in TRL) with the easy-trained PRM as the only reward, on questions
                of every level; hard accuracy before and after
"""
from __future__ import annotations

from omegaconf import DictConfig

from harness.cli import hydra_entry
from harness.pipeline.experiment import BASE, Policy, prompt_from_cfg, setup_experiment
from harness.pipeline.iterated import PolicyLoop
from harness.reporting.run import start_run
from harness.training.data import TrainingData
from replications.easy_to_hard import analysis, pipeline, report
from replications.easy_to_hard.config import check_config, rl_settings

CONFIG_KEYS = ("model", "dataset", "train_dataset", "prompt", "sampling", "reward_model", "training",
               "grader", "easy_to_hard")


def easy_to_hard(cfg: DictConfig) -> None:
    s = check_config(cfg)
    run = start_run(cfg, "easy_to_hard")
    exp = setup_experiment(cfg, run)  # the policy: SFT on easy levels only
    spec = prompt_from_cfg(cfg.prompt)
    test, test_split = pipeline.hard_test_set(exp, s)
    problems = {p.id: p for p in test.problems}

    with run.stage("sampling pool (hard test problems)"):
        pool = exp.sample_and_grade(spec, n=int(cfg.samples), problem_set=test, desc="hard test pool")
    if cfg.mode == "sample":
        return
    with run.stage("reward models (easy only vs all levels)"):
        if s.reward_models.source == "train":
            rms = pipeline.train_reward_models(exp, spec, cfg, s, set(problems))
        else:
            rms = pipeline.load_reward_models(exp, s)
    with run.stage("scoring the pool"):
        scored = pipeline.score_pool(rms, pool, {pid: p.question for pid, p in problems.items()}, s)
    run.save_csv("pool_scores.csv", scored.drop(columns=["text"], errors="ignore"))
    with run.stage("reranking curves"):
        rr = analysis.reranking(scored, rms.names(), s, int(cfg.samples))
        evaluators = pipeline.evaluator_metrics(rms, scored)
    with run.stage("supervision gap recovered"):
        sgr = analysis.supervision_gaps(rr, problems, rms.levels, s)

    policy_sgr = None
    if s.policy_sgr.enabled:
        with run.stage("policy SGR (no SFT / easy SFT / all-levels SFT, greedy)"):
            hard = pipeline.hard_set(exp, test_split, s.policy_sgr.per_level, "policy_sgr")
            greedy = pipeline.greedy_by_policy(exp, spec, cfg, s, hard)
            policy_sgr = analysis.policy_gaps(greedy, {p.id: p for p in hard.problems}, s)

    rl = None
    if s.rl.enabled:
        rl = reinforce(exp, spec, cfg, s, rms, test)

    with run.stage("report"):
        claims = analysis.check_claims(rr, sgr, rms.levels, rl, s, policy_sgr)
        path = report.write(run, cfg, s, test, test_split, rms, rr, evaluators, sgr, rl, claims, policy_sgr)
    print(f"report: {path}")


def reinforce(exp, spec, cfg: DictConfig, s, rms, test) -> dict:
    """RL against the easy-trained PRM (GRPO), then sampled pass@1 on the hard problems before and after."""
    rl_cfg = rl_settings(cfg)
    if not rl_cfg.stop:
        rl_cfg.stop = list(spec.stop)
    loop = PolicyLoop(exp, config_keys=CONFIG_KEYS, volatile=("easy_to_hard.rl.enabled",))
    reward_rm = pipeline.frozen_reward_model(cfg, rms.models[s.rl.reward][rms.primary])
    reward_fn = pipeline.rm_reward_fn(reward_rm, s.aggregation.best_of_k)
    train_set, _ = pipeline.reward_training_set(cfg, s, {p.id for p in test.problems})
    records = pipeline.rl_records(train_set, exp.prompts(spec, train_set.problems, BASE), s.rl.prompts)
    data = TrainingData(records, {"train": train_set.provenance(), "reward": s.rl.reward, "rm": rms.primary})
    trainer = pipeline.grpo_trainer(rl_cfg, reward_fn, reward_rm.identity)
    step = loop.stage("rl/grpo", lambda: loop.train(BASE, data, tag="grpo_easy_rm", method=trainer,
                                                    training_cfg=rl_cfg.training), "RL (GRPO, easy-trained RM)")
    n = s.rl.eval_samples
    with exp.run.stage("RL evaluation (hard test problems)"):
        before = exp.sample_and_grade(spec, n=n, problem_set=test, desc="before RL", policy=BASE)
        after = exp.sample_and_grade(spec, n=n, problem_set=test, desc="after RL", policy=Policy.of(step["policy"]))
    loop.close()
    out = analysis.rl_comparison(pipeline.pass_at_1(before), pipeline.pass_at_1(after), s)
    out.update(optimiser="GRPO (TRL GRPOTrainer via harness.training.rl)", step=step, samples=n,
               config={"num_generations": rl_cfg.num_generations, "prompts_per_step": rl_cfg.prompts_per_step,
                       "beta": rl_cfg.beta, "loss_type": rl_cfg.loss_type, "prompts": len(records),
                       "learning_rate": rl_cfg.training.learning_rate})
    return out


main = hydra_entry("easy_to_hard", easy_to_hard)

if __name__ == "__main__":
    main()
