"""Inference Scaling Laws (Wu et al., 2024, arXiv 2408.00724), as its method reads:

    pool        draw n samples per problem once (the store); grade them
    RM          a process reward model scores every step (here: trained from the pool, cross-fitted by problem)
    sampling    majority vote, RM-weighted vote, best-of-N at N = 1, 2, 4, ... as expectations over size-N subsets
    search      REBASE (and step-level beam search): grow a tree step by step, splitting the remaining width
                among nodes by softmax(reward / T), until `width` solutions are finished
    FLOPs       2 x params x tokens processed, policy + reward model, for every point of every curve
    claims      weighted vote >= majority vote; REBASE beats sampling at equal FLOPs; all strategies saturate
"""
from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig

from harness.cli import hydra_entry
from harness.config import sampling_params
from harness.grading.grader import Grader, normalize_for_vote
from harness.pipeline.experiment import prompt_from_cfg, setup_experiment
from harness.reporting.run import start_run
from harness.sampling.base import SamplingParams
from harness.selection.tree_search import SearchConfig, SearchProblem, StepGenerator, run_search, step_params
from replications.compute_optimal import analysis, report, reward
from replications.compute_optimal.config import budgets, check_config


def _search_config(co, method: str, width: int, separator: str) -> SearchConfig:
    s = co.search
    return SearchConfig(method=method, width=width, softmax_temperature=s.softmax_temperature,
                        truncate_ratio=s.truncate_ratio, beam_width=s.beam_width, max_depth=s.max_depth,
                        max_step_tokens=s.max_step_tokens, max_tokens=s.max_tokens, step_separator=separator,
                        answer_pattern=s.answer_pattern)


def _grade_leaves(results, problems, grader: Grader) -> dict[str, pd.DataFrame]:
    dataset = problems[0].dataset
    by_id = {p.id: p for p in problems}
    texts, refs, owners = [], [], []
    for r in results:
        for s in r.solutions:
            texts.append(s["text"])
            refs.append(by_id[r.problem_id].answer)
            owners.append(r.problem_id)
    grades = grader.grade_many(texts, refs) if texts else []
    out = {r.problem_id: [] for r in results}
    i = 0
    for r in results:
        for s in r.solutions:
            g = grades[i]
            out[r.problem_id].append({**s, "correct": bool(g.correct), "extracted": g.extracted,
                                      "vote_answer": normalize_for_vote(g.extracted, dataset)})
            i += 1
    cols = ["text", "step_scores", "finish_reason", "tokens", "path", "correct", "extracted", "vote_answer"]
    return {pid: pd.DataFrame(rows, columns=cols) for pid, rows in out.items()}


def compute_optimal(cfg: DictConfig) -> None:
    co = check_config(cfg)
    run = start_run(cfg, "compute_optimal")
    exp = setup_experiment(cfg, run)
    spec = prompt_from_cfg(cfg.prompt)
    params = sampling_params(cfg, tuple(spec.stop))
    problems = exp.problems.problems
    questions = {p.id: p.question for p in problems}
    policy_params = float(exp.model.num_parameters)

    with run.stage("sampling pool"):
        graded = exp.sample_and_grade(spec, n=int(cfg.samples), params=params, desc="pool")
    if cfg.mode == "sample":
        return
    per_problem = []
    if co.greedy.enabled:
        with run.stage("greedy"):
            g_params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=co.greedy.max_new_tokens,
                                      stop=params.stop, seed=params.seed)
            greedy = exp.sample_and_grade(spec, n=1, params=g_params, desc="greedy")
            per_problem.append(analysis.greedy_values(greedy, policy_params))

    with run.stage("reward model"):
        rrm = reward.build(exp, spec, graded, cfg, params)
    with run.stage("scoring the pool"):
        pool = reward.score_pool(rrm, graded, questions)
    run.save_csv("pool_scores.csv", pool[["problem_id", "index", "correct", "vote_answer", "score", "num_tokens",
                                          "prompt_tokens", "rm_question_tokens", "rm_solution_tokens"]])
    rm_params = float(rrm.flops_parameters)
    grid = budgets(co, int(cfg.samples))
    with run.stage("voting and best-of-N"):
        per_problem.append(analysis.sampling_values(
            pool, grid, co.sampling_methods, policy_params, rm_params, co.flops.prefix_reuse,
            co.selection.seed, co.selection.num_subsets))

    search_stats = []
    if co.search.methods and co.search.widths:
        separator = rrm_separator(cfg)
        subset = problems[: co.search.problems] if co.search.problems else problems
        prompts = exp.prompts(spec, subset)
        sproblems = [SearchProblem(p.id, prompts[p.id], p.question) for p in subset]
        probe = _search_config(co, co.search.methods[0], 1, separator)
        sparams = step_params(params, probe)
        entry = exp.entry(spec, sparams, variant={"separator": separator})
        exp.record_entry("search_steps", entry)
        gen = StepGenerator(exp.sampler, sparams, entry)
        grader = Grader(problems[0].dataset, method=cfg.grader.method, timeout=cfg.grader.timeout,
                        workers=cfg.grader.workers)
        for method in co.search.methods:
            for width in sorted(co.search.widths):
                with run.stage(f"{method} width {width}"):
                    scfg = _search_config(co, method, width, separator)
                    results = run_search(sproblems, scfg, gen, rrm.for_problem, exp.sampler.count_tokens,
                                         progress=bool(cfg.progress))
                    leaves = _grade_leaves(results, subset, grader)
                    per_problem.append(analysis.search_values(
                        method, width, results, leaves, co.search.aggregations, rrm_aggregation(cfg),
                        policy_params, rm_params, co.flops.prefix_reuse))
                    search_stats.append({"method": method, "width": width,
                                         "nodes": sum(r.num_nodes for r in results),
                                         "solutions": sum(len(r.solutions) for r in results),
                                         "max_depth": max(r.depth for r in results),
                                         "steps_drawn_total": gen.drawn, "steps_reused_total": gen.reused})
                    pd.concat([df.assign(problem_id=pid) for pid, df in leaves.items()], ignore_index=True).to_json(
                        run.path(f"search/{method}_w{width}.jsonl"), orient="records", lines=True, force_ascii=False)
        grader.close()

    with run.stage("analysis"):
        per = pd.concat(per_problem, ignore_index=True)
        cur = analysis.curves(per, co.bootstrap.num_resamples, co.bootstrap.seed)
        context = analysis.PublishedContext(problems[0].dataset, tuple(co.published.models))
        claims = analysis.check_claims(per, cur, co.bootstrap.num_resamples, co.bootstrap.seed,
                                       co.claims.saturation_ratio, co.search.methods,
                                       co.claims.saturation_doublings, context)
    with run.stage("report"):
        path = report.write(run, exp, spec, cfg, co, per, cur, claims, rrm, search_stats, policy_params, rm_params)
    print(f"report: {path}")


def rrm_separator(cfg: DictConfig) -> str:
    from harness.reward.models import reward_model_config

    return reward_model_config(cfg.reward_model).step_separator


def rrm_aggregation(cfg: DictConfig) -> str:
    from harness.reward.models import reward_model_config

    return reward_model_config(cfg.reward_model).aggregation


main = hydra_entry("compute_optimal", compute_optimal)

if __name__ == "__main__":
    main()
