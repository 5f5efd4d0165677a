"""Compute-optimal recipe: subset-expectation voting against brute force, FLOPs of the sampling curves, the
claim checks on hand-made results, the configs compose (paper scale included), and a tiny end to end run."""
import itertools
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from harness.cli import CONF_DIR
from harness.selection.metrics import method_value
from replications.compute_optimal import analysis
from replications.compute_optimal.config import budgets, check_config

ROOT = Path(__file__).resolve().parents[1]


def _brute(metric, answers, correct, scores, k):
    """Mean over every size-k subset of the chosen answer's correctness (ties split evenly)."""
    total, count = 0.0, 0
    for subset in itertools.combinations(range(len(answers)), k):
        if metric == "rm_best_of_n":
            best = max(scores[i] for i in subset)
            top = [i for i in subset if scores[i] == best]
            total += np.mean([correct[i] for i in top])
        else:
            votes = defaultdict(float)
            for i in subset:
                if answers[i] is not None:
                    votes[answers[i]] += scores[i] if metric == "rm_weighted_vote" else 1.0
            if votes:
                most = max(votes.values())
                winners = [a for a, v in votes.items() if v == most]
                right = {answers[i] for i in range(len(answers)) if correct[i]}
                total += np.mean([a in right for a in winners])
        count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subset_expectations_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 7
    answers = [str(a) if a < 3 else None for a in rng.integers(0, 4, n)]
    correct = [a == "1" for a in answers]
    scores = [float(s) for s in rng.random(n).round(2)]
    for metric in ("majority_vote", "rm_weighted_vote", "rm_best_of_n"):
        for k in range(1, n + 1):
            got = method_value(metric, correct, k, answers, scores, 0, 1000)
            assert got == pytest.approx(_brute(metric, answers, correct, scores, k), abs=1e-9), (metric, k)


def test_weighted_vote_can_beat_majority_when_the_reward_knows():
    # three wrong samples agree on "7", two right ones say "5" and score high: weighted picks "5" at N=5
    answers, correct, scores = ["7", "7", "7", "5", "5"], [False] * 3 + [True] * 2, [0.1, 0.1, 0.1, 0.9, 0.9]
    assert method_value("majority_vote", correct, 5, answers, scores, 0, 100) == 0.0
    assert method_value("rm_weighted_vote", correct, 5, answers, scores, 0, 100) == 1.0


def _pool():
    rows = []
    for p, (prompt, gens) in enumerate([(100, [10, 20, 30, 40]), (50, [5, 5, 5, 5])]):
        for i, g in enumerate(gens):
            rows.append({"problem_id": f"p{p}", "index": i, "vote_answer": "1" if i % 2 else "2", "correct": bool(i % 2),
                         "score": 0.9 if i % 2 else 0.2, "num_tokens": g, "prompt_tokens": prompt,
                         "rm_question_tokens": 30, "rm_solution_tokens": g + 1})
    return pd.DataFrame(rows)


def test_sampling_flops_count_known_tokens():
    per = analysis.sampling_values(_pool(), [1, 2, 4], ["majority_vote", "rm_weighted_vote"], policy_params=1000,
                                   rm_params=10, prefix_reuse=True, seed=0, num_subsets=100)
    row = per[(per.problem_id == "p0") & (per.metric == "rm_weighted_vote") & (per.budget == 2)].iloc[0]
    # prompt once + 2 x mean 25 generated; RM: question once + 2 x mean 26 solution tokens
    assert row.policy_tokens == 150 and row.rm_tokens == 30 + 52
    assert row.flops == 2 * 1000 * 150 + 2 * 10 * 82
    assert row.flops_other == 2 * 1000 * (200 + 50) + 2 * 10 * (60 + 52)  # no reuse: prompts per sample
    mv = per[(per.problem_id == "p1") & (per.metric == "majority_vote") & (per.budget == 4)].iloc[0]
    assert mv.rm_tokens == 0 and mv.flops == 2 * 1000 * (50 + 20)
    assert per[(per.metric == "rm_weighted_vote") & (per.budget == 4)]["value"].tolist() == [1.0, 1.0]
    curves = analysis.curves(per, n_boot=200, seed=0)
    assert set(curves["curve"]) == {"sampling + majority vote", "sampling + weighted vote"}
    assert (curves["ci_low"] <= curves["accuracy"]).all() and (curves["accuracy"] <= curves["ci_high"]).all()


def _per_problem(wv, mv, rebase=None, flops=None):
    rows = []
    for metric, table in (("rm_weighted_vote", wv), ("majority_vote", mv)):
        for (pid, budget), value in table.items():
            rows.append({"problem_id": pid, "strategy": "sampling", "metric": metric, "budget": budget,
                         "value": value, "flops": flops[budget] if flops else budget * 100.0})
    for (pid, width), (value, f) in (rebase or {}).items():
        rows.append({"problem_id": pid, "strategy": "rebase", "metric": "rm_weighted_vote", "budget": width,
                     "value": value, "flops": f})
    return pd.DataFrame(rows)


def test_claims_hold_fail_and_stay_inconclusive_on_hand_made_results():
    pids = [f"p{i}" for i in range(20)]
    better = {(p, b): 1.0 for p in pids for b in (1, 2, 4)}
    worse = {(p, b): 0.0 if b > 1 else 1.0 for p in pids for b in (1, 2, 4)}
    assert analysis.claim_weighted_vs_majority(_per_problem(better, worse), 200, 0).status == "holds"
    assert analysis.claim_weighted_vs_majority(_per_problem(worse, better), 200, 0).status == "fails"
    assert analysis.claim_weighted_vs_majority(_per_problem(better, better), 200, 0).status == "inconclusive"
    # REBASE at 150 FLOPs: all right, where sampling (interpolated between N=1 and N=2) is all wrong
    wv = {(p, b): 0.0 for p in pids for b in (1, 2, 4)}
    reb = {(p, 2): (1.0, 150.0) for p in pids}
    claim = analysis.claim_search_beats_sampling(_per_problem(wv, wv, reb), 200, 0)
    assert claim.status == "holds" and "interpolated" in claim.evidence
    reb = {(p, 2): (0.0, 150.0) for p in pids}
    wv_good = {(p, b): 1.0 for p in pids for b in (1, 2, 4)}
    assert analysis.claim_search_beats_sampling(_per_problem(wv_good, wv_good, reb), 200, 0).status == "fails"


def test_claims_carry_n_ours_and_the_published_number():
    pids = [f"p{i}" for i in range(20)]
    better = {(p, b): 1.0 for p in pids for b in (1, 2, 4)}
    worse = {(p, b): 0.0 if b > 1 else 1.0 for p in pids for b in (1, 2, 4)}
    context = analysis.PublishedContext("gsm8k", ("Mistral-7B",))
    c = analysis.claim_weighted_vs_majority(_per_problem(better, worse), 200, 0, context)
    shown = " ".join(str(v) for v in c.__dict__.values())
    assert "n=20" in shown and "Mistral-7B" in shown and "weighted vote 100.0%" in shown
    if hasattr(c, "n"):
        assert c.n == 20 and "Mistral-7B" in c.published


def test_saturation_window_comes_from_config():
    from omegaconf import OmegaConf

    assert OmegaConf.load(analysis.DEFAULT_CONFIG).claims.saturation_doublings == 2
    curve = pd.DataFrame({"curve": "c", "strategy": "sampling", "budget": [1, 2, 4], "accuracy": [0.1, 0.3, 0.31]})
    # one doubling each side: 1 -> 2 gains 0.2, 2 -> 4 gains 0.01; two doublings would need budget 16
    assert analysis.claim_saturation(curve, 0.5, 1).status == "holds"
    assert analysis.claim_saturation(curve, 0.5, 2).status == "inconclusive"


def test_saturation_claim():
    def curve(values):
        return pd.DataFrame({"curve": "c", "strategy": "sampling", "budget": [1, 2, 4, 8, 16],
                             "accuracy": values})
    assert analysis.claim_saturation(curve([0.1, 0.2, 0.3, 0.32, 0.33]), 0.5, 2).status == "holds"
    assert analysis.claim_saturation(curve([0.1, 0.12, 0.14, 0.3, 0.5]), 0.5, 2).status == "fails"
    assert analysis.claim_saturation(curve([0.1] * 5), 0.5, 2).status == "inconclusive"
    noisy = curve([0.1, 0.12, 0.14, 0.3, 0.5]).assign(ci_low=[0.0, 0.0, 0.0, 0.0, 0.1])
    assert analysis.claim_saturation(noisy, 0.5, 2).status == "inconclusive"  # the late rise is inside the CI
    clear = noisy.assign(ci_low=[0.0, 0.0, 0.0, 0.0, 0.45])
    assert analysis.claim_saturation(clear, 0.5, 2).status == "fails"


def _compose(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="compute_optimal", overrides=list(overrides))


@pytest.mark.parametrize("overrides", [
    [],
    ["compute_optimal=gsm8k"],
    ["compute_optimal=gsm8k", "reward_model=embedded_orm"],
    ["compute_optimal=paper_gsm8k_pythia"],
    ["compute_optimal=paper_gsm8k_pythia", "model=pythia_12b"],
    ["compute_optimal=paper_gsm8k_mistral"],
    ["compute_optimal=paper_math500_llemma"],
    ["compute_optimal=paper_math500_llemma", "model=llemma_34b_metamath", "samples=64"],
    ["reward_model=embedded_orm"],
    ["reward_model=math_shepherd_mistral_7b"],
])
def test_configs_compose_and_validate(overrides):
    cfg = _compose(overrides)
    co = check_config(cfg)
    assert budgets(co, int(cfg.samples))[-1] == int(cfg.samples)
    if "compute_optimal=paper_math500_llemma" in overrides:
        assert cfg.dataset.name == "math500" and cfg.reward_model.hub_id == "tkitsers/Llemma-reward-model"
        assert cfg.sampling.temperature == 1.0 and 256 in co.search.widths


def test_default_is_the_ladder_with_the_warm_start_and_exact_step_labels():
    from harness.reward.models import reward_model_config
    from harness.reward.training import training_config

    cfg = _compose()
    check_config(cfg)
    assert (cfg.model.name, cfg.dataset.name, cfg.prompt.name) == ("smollm2_135m_sft", "ladder", "ladder")
    assert cfg.dataset.levels and min(cfg.dataset.levels) > 1
    rm = reward_model_config(cfg.reward_model)
    assert rm.backbone == cfg.model.name and rm.step_separator == "\n"
    assert training_config(rm.training).step_labels.method == "exact"
    # the policy's prompt and the reward model's input render the question the same way
    assert rm.input_template == cfg.prompt.template and not rm.use_chat_template
    assert cfg.compute_optimal.search.answer_pattern == "The answer is"


def test_gsm8k_preset_is_the_previous_default():
    cfg = _compose(["compute_optimal=gsm8k"])
    co = check_config(cfg)
    assert (cfg.model.name, cfg.dataset.name, cfg.prompt.name, cfg.reward_model.name) == (
        "smollm2_135m", "gsm8k", "chat_boxed", "embedded_prm")
    assert cfg.dataset.levels is None and cfg.dataset.limit == 12 and int(cfg.samples) == 32
    assert cfg.sampling.max_new_tokens == 256 and cfg.sampling.temperature == 0.6
    assert list(co.search.methods) == ["rebase", "beam"] and co.search.answer_pattern is None
    assert co.search.max_tokens == 256 and co.search.max_step_tokens == 128 and co.search.max_depth == 12


@pytest.mark.parametrize("preset", ["paper_gsm8k_pythia", "paper_gsm8k_mistral", "paper_math500_llemma"])
def test_paper_presets_leave_the_ladder_levels_behind(preset):
    # the default selects ladder levels; a preset on GSM8K / MATH keeping them would select no problem at all
    assert _compose([f"compute_optimal={preset}"]).dataset.levels is None


def test_reference_steps_give_exact_labels_to_ladder_solutions():
    from harness.data.problems import Problem
    from harness.reward.training import LabelledSolution, exact_step_labels
    from replications.compute_optimal.reward import reference_steps

    problems = [Problem("L/0", "q", "26", "", "gsm8k", {"level": 3, "steps": ["10 + 3 = 13", "13 * 2 = 26"]}),
                Problem("G/0", "q", "1", "", "gsm8k", {})]
    refs = reference_steps(problems)
    assert refs == {"L/0": ["10 + 3 = 13", "13 * 2 = 26"]}
    right = LabelledSolution("L/0", 0, "q", ["10 + 3 = 13", "13 * 2 = 26", "The answer is 26."], True, [None] * 3)
    slip = LabelledSolution("L/0", 1, "q", ["10 + 3 = 14", "14 * 2 = 28", "The answer is 28."], False, [None] * 3)
    exact_step_labels([right, slip], refs)
    assert right.step_targets == [1.0, 1.0, 1.0] and slip.step_targets == [0.0, 0.0, 0.0]
    from harness.errors import DataError

    with pytest.raises(DataError, match="G/0"):
        exact_step_labels([LabelledSolution("G/0", 0, "q", ["a", "b"], False, [None] * 2)], refs)


def _curves_frame(values_by_budget, strategy="sampling", metric="rm_weighted_vote"):
    rows = [{"problem_id": f"p{i}", "strategy": strategy, "metric": metric, "budget": b, "value": v,
             "flops": 100.0 * b} for b, values in values_by_budget.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_error_falls_with_flops_claim():
    n = 30
    rises = _curves_frame({1: [0.0] * n, 4: [1.0] * (n // 2) + [0.0] * (n - n // 2)})
    c = analysis.claim_error_falls_with_flops(rises, 500, 0)
    assert c.status == "holds" and c.n == n and "the CIs separate" in c.evidence
    flat = _curves_frame({1: [0.5] * n, 4: [0.5] * n})
    assert analysis.claim_error_falls_with_flops(flat, 500, 0).status == "inconclusive"
    falls = _curves_frame({1: [1.0] * n, 4: [0.0] * n})
    assert analysis.claim_error_falls_with_flops(falls, 500, 0).status == "fails"
    # one strategy that gains is enough, whatever the others do
    both = pd.concat([flat, rises.assign(strategy="rebase")], ignore_index=True)
    c = analysis.claim_error_falls_with_flops(both, 500, 0)
    assert c.status == "holds" and "REBASE" in c.ours
    assert analysis.claim_error_falls_with_flops(_curves_frame({1: [0.0] * n}), 500, 0).status == "inconclusive"


def test_bad_values_are_named():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="search.methods"):
        check_config(_compose(["compute_optimal.search.methods=[mcts]"]))
    with pytest.raises(ConfigError, match="budgets"):
        check_config(_compose(["compute_optimal.budgets=[128]"]))


@pytest.mark.slow
def test_tiny_model_end_to_end(tmp_path):
    # the default's ladder, prompt and exact-label PRM, with the tiny random model in place of the warm start
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMREP_STORE": str(tmp_path / "store"),
           "LLMREP_GENERATED_ROOT": str(tmp_path / "generated")}
    cmd = [sys.executable, "-m", "replications.compute_optimal", f"hydra.run.dir={tmp_path / 'run'}", "progress=false",
           "model=tiny_random", "samples=4", "dataset.limit=3", "sampling.max_new_tokens=16",
           "compute_optimal.search.methods=[rebase,beam]",
           "compute_optimal.greedy.max_new_tokens=16", "compute_optimal.search.widths=[2]",
           "compute_optimal.search.max_step_tokens=6", "compute_optimal.search.max_tokens=16",
           "reward_model.backbone=tiny_random", "reward_model.layers=2"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    for name in ["report.md", "error_vs_flops.png", "error_vs_flops.csv", "curves.csv", "per_problem.csv",
                 "reward_model/head.npz", "reward_model/reward_model.json", "search/rebase_w2.jsonl"]:
        assert (run / name).exists(), name
    cur = pd.read_csv(run / "curves.csv")
    assert {"greedy", "sampling + weighted vote", "REBASE + weighted vote", "beam search + weighted vote"} <= set(cur.curve)
    assert (cur["flops"] > 0).all() and cur["accuracy"].between(0, 1).all()
    report = (run / "report.md").read_text()
    assert "(n=3)" in report and "published" in report.lower()
    claims = report.split("The paper's claims, checked on this run", 1)[1]
    assert claims.count("INCONCLUSIVE") + claims.count("HOLDS") + claims.count("FAILS") >= 5
    assert "exact checks of every line" in report


def test_compare_puts_several_models_on_one_figure(tmp_path):
    from replications.compute_optimal import compare

    for name, errors in (("small", [0.7, 0.6, 0.55]), ("large", [0.6, 0.45, 0.3])):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(f"model:\n  name: {name}\n")
        scale = 1.0 if name == "small" else 10.0
        pd.DataFrame({"curve": "sampling + weighted vote", "flops": [scale * f for f in (1e9, 2e9, 4e9)],
                      "error_rate": errors, "error_ci_low": errors, "error_ci_high": errors}).to_csv(d / "curves.csv")
    assert compare.main([str(tmp_path / "small"), str(tmp_path / "large"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "compare_error_vs_flops.png").exists()
    env = pd.read_csv(tmp_path / "compare_envelope.csv")
    # the small model is compute-optimal at small budgets, the large one once its error drops below
    assert env.iloc[0]["best"] == "small: sampling + weighted vote"
    assert env.iloc[-1]["best"] == "large: sampling + weighted vote"
    assert compare.main([str(tmp_path / "nowhere")]) == 2
