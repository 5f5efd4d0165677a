"""Easy-to-Hard (Sun et al. 2024) and Supervision Gap Recovered (Hase et al. 2024): difficulty splits, SGR,
exact ladder step labels, reward models trained on easy problems only, and the paper's configs."""
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.data.ladder import LadderConfig
from harness.data.problems import PROJECT_ROOT, Problem, load_problems
from harness.errors import ConfigError, DataError
from harness.reward import training as rm_training
from harness.reward.models import EmbeddedHeadRM, TruncatedBackbone, reward_model_config
from harness.reward.training import (
    TrainingConfig,
    exact_step_labels,
    exact_step_targets,
    labelled_solutions,
    train_on_problems,
)
from harness.selection.difficulty import (
    check_operations_covered,
    difficulty_spec,
    sgr_by_group,
    split_by_difficulty,
    supervision_gap_recovered,
)


def _problem(pid, level=None, steps=None, solution=""):
    meta = {"level": level}
    if steps is not None:
        meta["steps"] = steps
    return Problem(pid, f"question {pid}", "0", solution, "gsm8k", meta)


# ---- difficulty splits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("node,key", [
    ({"by": "colour", "easy": [1], "hard": [2]}, "difficulty.by"),
    ({"by": "level", "easy": [1, 2, 3], "hard": [3, 4]}, "difficulty"),
    ({"by": "level", "easy": [], "hard": [4]}, "difficulty.easy"),
    ({"by": "level", "easy": [1], "hard": ["four"]}, "difficulty.hard"),
    ({"by": "level", "easy": [1, 1], "hard": [4]}, "difficulty.easy"),
    ({"by": "level", "easy": [1], "hard": [4], "medium": [2]}, "difficulty.medium"),
])
def test_bad_difficulty_spec_is_one_line_naming_its_key(node, key):
    with pytest.raises(ConfigError) as err:
        difficulty_spec(node)
    message = str(err.value)
    assert f"'{key}" in message and "\n" not in message


def test_split_by_level_is_disjoint_and_honours_the_config():
    problems = [_problem(f"p{i}", level=1 + i % 6) for i in range(30)]
    split = split_by_difficulty(problems, difficulty_spec({"by": "level", "easy": [1, 2], "hard": [5, 6]}))
    assert {p.metadata["level"] for p in split.easy} == {1, 2}
    assert {p.metadata["level"] for p in split.hard} == {5, 6}
    assert not split.easy_ids & split.hard_ids
    assert len(split.easy) == len(split.hard) == 10 and split.left_out == 10  # levels 3 and 4: neither side
    other = split_by_difficulty(problems, difficulty_spec({"by": "level", "easy": [1, 2, 3], "hard": [4]}))
    assert len(other.easy) == 15 and len(other.hard) == 5


def test_split_by_steps_counts_reference_steps_or_solution_lines():
    ladder = [_problem("a", steps=["1 + 1 = 2"]), _problem("b", steps=["1 + 1 = 2", "2 * 3 = 6", "6 - 1 = 5"])]
    gsm = [_problem("c", solution="x = 1\n\ny = 2\nz = 3")]  # three non-empty lines: three steps
    split = split_by_difficulty(ladder + gsm, difficulty_spec({"by": "steps", "easy": [1, 2], "hard": [3]}))
    assert [p.id for p in split.easy] == ["a"] and [p.id for p in split.hard] == ["b", "c"]


def test_an_empty_side_and_problems_without_level_are_reported():
    problems = [_problem("a", level=1), _problem("b", level=None), _problem("c", level=4)]
    split = split_by_difficulty(problems, difficulty_spec({"by": "level", "easy": [1], "hard": [4]}))
    assert split.no_value == 1 and split.left_out == 1
    with pytest.raises(DataError, match=r"difficulty\.hard=\[5\]"):
        split_by_difficulty(problems, difficulty_spec({"by": "level", "easy": [1], "hard": [5]}), where="test set")


def test_easy_levels_must_show_every_operation_the_hard_ones_use():
    easy = [_problem("e1", level=1, steps=["2 + 3 = 5"]), _problem("e2", level=1, steps=["9 - 3 = 6"])]
    hard = [_problem("h1", level=4, steps=["2 + 3 = 5", "5 * 4 = 20"])]
    split = split_by_difficulty(easy + hard, difficulty_spec({"by": "level", "easy": [1], "hard": [4]}))
    with pytest.raises(ConfigError, match=r"'\*'"):
        check_operations_covered(split)


def test_ladder_levels_split_cleanly_and_easy_levels_cover_all_operations(tmp_path):
    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "dataset" / "ladder.yaml")
    cfg.ladder = OmegaConf.structured(LadderConfig(test_per_level=30, train_per_level=1, generated_root=str(tmp_path)))
    problems = load_problems(cfg).problems
    split = split_by_difficulty(problems, difficulty_spec({"by": "level", "easy": [1, 2, 3], "hard": [4, 5, 6]}))
    assert not split.easy_ids & split.hard_ids
    assert {p.metadata["level"] for p in split.hard} == {4, 5, 6} and len(split.hard) == 90
    assert set(check_operations_covered(split)) == {"+", "-", "*", "/"}


# ---- Supervision Gap Recovered ------------------------------------------------------------------------


def test_sgr_hand_computed():
    unsup = np.array([0.0, 0.0, 1.0, 0.0, 0.2, 0.4])
    # easy recovers 0.3 and hard 0.6 on every problem: SGR = 0.5 exactly, in every bootstrap replicate too
    sgr = supervision_gap_recovered(unsup + 0.3, unsup + 0.6, unsup, epsilon=0.01, n_boot=200)
    assert sgr.defined and sgr.value == pytest.approx(0.5)
    assert sgr.ci_low == pytest.approx(0.5) and sgr.ci_high == pytest.approx(0.5)
    assert sgr.gap == pytest.approx(0.6) and sgr.n == 6


def test_sgr_ratio_of_means_with_an_interval_around_it():
    easy = np.array([1, 0, 1, 0] * 10, dtype=float)   # mean 0.5
    hard = np.array([1, 1, 1, 0] * 10, dtype=float)   # mean 0.75
    unsup = np.array([0, 0, 1, 0] * 10, dtype=float)  # mean 0.25
    sgr = supervision_gap_recovered(easy, hard, unsup, n_boot=2000, seed=1)
    assert sgr.value == pytest.approx((0.5 - 0.25) / (0.75 - 0.25))
    assert sgr.ci_low < 0.5 < sgr.ci_high and sgr.ci_low > 0
    worse = supervision_gap_recovered(unsup - 0.1, hard, unsup, n_boot=500)  # easy below unsupervised: negative
    assert worse.value == pytest.approx(-0.2)


def test_sgr_is_undefined_when_hard_does_not_beat_unsupervised():
    unsup = np.array([0.0, 1.0, 0.0, 1.0])
    flat = supervision_gap_recovered(unsup + 0.1, unsup, unsup, epsilon=0.02)
    assert not flat.defined and flat.value is None and "epsilon" in flat.reason and "undefined" in flat.text()
    # the mean gap (0.2) is above epsilon, but its CI includes 0: no meaningful ratio
    noisy = supervision_gap_recovered(np.zeros(5), np.array([1.0, 0, 1, 0, 0]), np.array([0, 1.0, 0, 0, 0]),
                                      epsilon=0.01, n_boot=500)
    assert not noisy.defined and "includes 0" in noisy.reason


def test_sgr_by_group_splits_problems():
    groups = [4, 4, 5, 5]
    out = sgr_by_group(groups, [0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], n_boot=100)
    assert out[4].value == pytest.approx(0.5) and out[5].value == pytest.approx(0.0) and out[4].n == 2


def test_sgr_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        supervision_gap_recovered([1.0, 0.0], [1.0], [0.0, 0.0])


# ---- exact ladder step labels -------------------------------------------------------------------------

REFERENCE = ["23 + 45 = 68", "68 * 2 = 136", "136 - 6 = 130"]


@pytest.mark.parametrize("steps,outcome,expected", [
    (REFERENCE + ["The answer is 130."], True, [1, 1, 1, 1]),
    (["23 + 45 = 68", "2 * 68 = 136", "136 - 6 = 130", "The answer is 130."], True, [1, 1, 1, 1]),  # commuted *
    (["23 + 45 = 69", "69 * 2 = 138", "138 - 6 = 132", "The answer is 132."], False, [0, 0, 0, 0]),  # bad sum
    (["23 + 45 = 68", "68 + 2 = 70", "70 - 6 = 64", "The answer is 64."], False, [1, 0, 0, 0]),  # wrong operation
    (["23 + 45 = 68", "68 * 3 = 204", "204 - 6 = 198", "The answer is 198."], False, [1, 0, 0, 0]),  # a distractor
    (["23 + 45 = 68", "70 * 2 = 140", "The answer is 140."], False, [1, 0, 0]),  # does not continue the chain
    (["23 + 45 = 68", "6 - 136 = -130", "The answer is 130."], True, [1, 0, 1]),  # last step: the grader's verdict
    (REFERENCE + ["130 + 0 = 130", "The answer is 130."], True, [1, 1, 1, 0, 1]),  # a step past the chain
    (["23 + 45 = 68", "68 * 2 = 136", "136 / 0 = 1", "The answer is 1."], False, [1, 1, 0, 0]),  # no crash
])
def test_exact_step_targets(steps, outcome, expected):
    assert exact_step_targets(steps, REFERENCE, outcome) == [float(x) for x in expected]


def test_exact_step_labels_need_reference_steps():
    graded = pd.DataFrame([{"problem_id": "p", "index": 0, "text": "1 + 1 = 2\nThe answer is 2.", "correct": True}])
    sols = labelled_solutions(graded, {"p": "q"}, "\n")
    with pytest.raises(DataError, match="'p' has no reference steps"):
        exact_step_labels(sols, {})
    stats = exact_step_labels(sols, {"p": ["1 + 1 = 2"]})
    assert sols[0].step_targets == [1.0, 1.0] and stats["labelled_intermediate_steps"] == 1


# ---- reward models trained on easy problems only ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from harness.models.loading import load_model

    return load_model(OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "tiny_random.yaml"))


def _ladder_pool(levels=(1, 2, 4, 5), per_level=3, samples=3):
    rng = np.random.default_rng(0)
    rows, questions, refs, levels_of = [], {}, {}, {}
    for level in levels:
        for j in range(per_level):
            pid = f"ladder/train/L{level}/{j}"
            a, b = int(rng.integers(10, 50)), int(rng.integers(2, 9))
            ref = [f"{a} + {b} = {a + b}"] + [f"{a + b} * 2 = {2 * (a + b)}"] * (level > 2)
            questions[pid], refs[pid], levels_of[pid] = f"L{level} {a} plus {b}?", ref, level
            for i in range(samples):
                c = a + b + (i % 2)
                text = "\n".join([f"{a} + {b} = {c}"] + [f"{c} * 2 = {2 * c}"] * (level > 2) + [f"The answer is {c}."])
                rows.append({"problem_id": pid, "index": i, "text": text, "correct": i % 2 == 0})
    return pd.DataFrame(rows), questions, refs, levels_of


def test_reward_model_trained_on_easy_only_never_sees_hard_problems(tiny, tmp_path, monkeypatch):
    graded, questions, refs, levels_of = _ladder_pool()
    easy_ids = {pid for pid, lv in levels_of.items() if lv <= 3}
    hard_ids = set(levels_of) - easy_ids
    rm_cfg = reward_model_config({"name": "easy_prm", "kind": "embedded", "level": "prm", "step_separator": "\n",
                                  "backbone": "tiny_random", "layers": 1, "features": ["last"]})
    sols = labelled_solutions(graded, questions, "\n")
    exact_step_labels(sols, refs)
    seen: list[str] = []
    real_rows = rm_training.training_rows

    def recording_rows(features, solutions, level):  # what the head is really fitted on
        seen.extend(s.problem_id for s in solutions)
        return real_rows(features, solutions, level)

    monkeypatch.setattr(rm_training, "training_rows", recording_rows)
    trained = train_on_problems(rm_cfg, TruncatedBackbone(tiny, 1), sols, sorted(easy_ids),
                                TrainingConfig(C=1.0), provenance={"source": "test"}, subset_name="easy")
    assert seen and set(seen) <= easy_ids and not set(seen) & hard_ids
    assert set(trained.problem_ids) == easy_ids
    assert trained.label_stats["solutions"] == sum(1 for s in sols if s.problem_id in easy_ids)
    saved = EmbeddedHeadRM.load(trained.model.save(tmp_path / "rm"), tiny)
    recorded = saved.provenance["trained_on_problems"]
    assert set(recorded["ids"]) == easy_ids and recorded["count"] == len(easy_ids)
    assert saved.provenance["cross_fitted"] is False and saved.provenance["subset"] == "easy"
    # the hard problems can still be scored by it (that is what it is for)
    hard_sol = next(s for s in sols if s.problem_id in hard_ids)
    assert len(saved.score_steps([hard_sol.question], [hard_sol.steps])[0].step_scores) == len(hard_sol.steps)


def test_training_on_a_subset_with_no_solutions_is_a_data_error(tiny):
    graded, questions, _, _ = _ladder_pool(levels=(1,), per_level=1, samples=1)
    rm_cfg = reward_model_config({"name": "x", "kind": "embedded", "level": "orm", "step_separator": "\n",
                                  "backbone": "tiny_random", "layers": 1})
    with pytest.raises(DataError, match="none of the 1 graded solutions"):
        train_on_problems(rm_cfg, TruncatedBackbone(tiny, 1), labelled_solutions(graded, questions, "\n"),
                          ["nope"], TrainingConfig())


# ---- configs -----------------------------------------------------------------------------------------------


def _compose(overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="easy_to_hard", overrides=list(overrides))


@pytest.mark.parametrize("preset,easy,hard,source", [("default", [1, 2, 3], [4, 5, 6], "train"),
                                                     ("paper_math", [1, 2, 3], [4, 5], "load")])
def test_configs_compose_and_validate(preset, easy, hard, source):
    from replications.easy_to_hard.config import check_config

    s = check_config(_compose([f"easy_to_hard={preset}"]))
    assert (s.difficulty.easy, s.difficulty.hard, s.reward_models.source) == (easy, hard, source)


def test_the_difficulty_split_is_a_config_override():
    from replications.easy_to_hard.config import check_config

    s = check_config(_compose(["easy_to_hard.difficulty.by=steps", "easy_to_hard.difficulty.easy=[1,2]",
                               "easy_to_hard.difficulty.hard=[3,4,5]"]))
    assert s.difficulty.by == "steps" and s.difficulty.hard == [3, 4, 5]


@pytest.mark.parametrize("override,key", [
    ("easy_to_hard.difficulty.hard=[3,4]", "easy_to_hard.difficulty"),            # level 3 on both sides
    ("easy_to_hard.difficulty.by=colour", "easy_to_hard.difficulty.by"),
    ("easy_to_hard.sgr.method=median", "easy_to_hard.sgr.method"),
    ("easy_to_hard.sgr.k=65", "easy_to_hard.sgr.k"),
    ("easy_to_hard.reward_training.levels=[prm,vibes]", "easy_to_hard.reward_training.levels"),
    ("easy_to_hard.aggregation.best_of_k=max", "easy_to_hard.aggregation.best_of_k"),
    ("easy_to_hard.rl.reward=hard", "easy_to_hard.rl.reward"),
    ("easy_to_hard.rl.grpo.num_generations=1", "easy_to_hard.rl.grpo.num_generations"),
    ("easy_to_hard.difficulty.easy=[1,2]", "model.warm_start"),  # the policy's SFT saw level 3, now hard-side
])
def test_bad_config_is_one_line_naming_its_key(override, key):
    from replications.easy_to_hard.config import check_config

    with pytest.raises(ConfigError) as err:
        check_config(_compose([override]))
    assert f"'{key}" in str(err.value) and "\n" not in str(err.value)


def test_bad_override_exits_with_one_line(monkeypatch, capsys):
    import sys

    from replications.easy_to_hard.__main__ import main

    monkeypatch.setattr(sys, "argv", ["easy_to_hard", "easy_to_hard.sgr.epsilom=0.1"])
    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "epsilom" in err and "\n" not in err


# ---- end to end (tiny random model) ------------------------------------------------------------------------

TINY_RUN = [
    "model=smollm2_135m_sft_tiny", "samples=4", "sampling.max_new_tokens=8", "easy_to_hard.test.per_level=2",
    "easy_to_hard.reward_training.per_level=2", "easy_to_hard.reward_training.samples=2",
    "easy_to_hard.rl.prompts=2", "easy_to_hard.rl.eval_samples=2", "easy_to_hard.rl.grpo.num_generations=2",
    "easy_to_hard.rl.grpo.prompts_per_step=1", "easy_to_hard.rl.grpo.max_completion_length=8",
    "easy_to_hard.rl.grpo.backend.batch_size=4", "easy_to_hard.bootstrap.num_resamples=50",
    "easy_to_hard.selection.num_subsets=20", "reward_model.layers=1", "progress=false", "grader.workers=1",
    "dataset.ladder.test_per_level=4", "train_dataset.ladder.test_per_level=4", "train_dataset.ladder.train_per_level=4",
    "easy_to_hard.policy_sgr.enabled=true", "easy_to_hard.policy_sgr.per_level=1", "easy_to_hard.policy_sgr.max_new_tokens=8",
]


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    """Pool on hard test problems, RMs on easy vs all train problems, curves, SGR, GRPO, report; the random
    model answers nothing right, so only the plumbing and the easy-only provenance can be asserted."""
    import json

    from harness.reporting.run import start_run
    from replications.easy_to_hard.__main__ import easy_to_hard

    monkeypatch.chdir(tmp_path)
    cfg = _compose([*TINY_RUN, f"store.root={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}",
                    f"dataset.ladder.generated_root={tmp_path / 'gen'}",
                    f"train_dataset.ladder.generated_root={tmp_path / 'gen'}"])
    monkeypatch.setattr("replications.easy_to_hard.__main__.start_run",
                        lambda c, paper: start_run(c, paper, tmp_path / "run"))
    easy_to_hard(cfg)
    run = tmp_path / "run"
    report = (run / "report.md").read_text()
    assert "Supervision Gap Recovered" in report and "GRPO" in report
    curves = pd.read_csv(run / "curves.csv")
    assert set(curves["k"]) == {1, 2, 4} and (curves["n_problems"] == 6).all()  # 2 per hard level 4-6
    assert {"majority", "weighted_vote/easy_prm", "weighted_vote/all_prm", "best_of_k/easy_orm"} <= set(curves["series"])
    easy = json.loads((run / "reward_models" / "easy_prm" / "reward_model.json").read_text())["provenance"]
    every = json.loads((run / "reward_models" / "all_prm" / "reward_model.json").read_text())["provenance"]
    easy_ids, all_ids = set(easy["trained_on_problems"]["ids"]), set(every["trained_on_problems"]["ids"])
    assert easy_ids and all(f"/L{lv}/" not in pid for pid in easy_ids for lv in (4, 5, 6, 7))
    assert easy_ids < all_ids and any("/L5/" in pid for pid in all_ids)
    claims = json.loads((run / "claims.json").read_text())["claims"]
    assert len(claims) == 4 and any("Hase" in c["claim"] for c in claims)
    # Hase et al.'s setting: the all-levels warm start is a separate checkpoint trained on hard levels too
    policy = pd.read_csv(run / "sgr_policy.csv")
    assert policy.loc[0, "n"] == 3 and "level" in set(policy["group"])
    provenance = json.loads((run / "provenance.json").read_text())
    assert {"policy_sgr/all:model", "policy_sgr/unsupervised:model"} <= set(provenance)


def test_reranking_sgr_and_claims_on_a_hand_made_pool():
    """40 hard problems x 4 samples: one right answer against three copies of one wrong one, so majority vote is
    always wrong; the all-levels RM ranks the right sample first everywhere, the easy one on 36 of 40 problems:
    weighted vote beats majority and SGR = 36/40 = 0.9."""
    from replications.easy_to_hard import analysis
    from replications.easy_to_hard.config import check_config

    s = check_config(_compose(["samples=4", "easy_to_hard.reward_training.levels=[prm]"]))
    rows = []
    for i in range(40):
        for j in range(4):
            right = j == 0
            easy_ok = i < 36
            rows.append({"problem_id": f"p{i:02d}", "index": j, "correct": right, "vote_answer": "1" if right else "2",
                         "easy_prm_weighted_vote": (0.9 if right else 0.1) if easy_ok else (0.1 if right else 0.9),
                         "all_prm_weighted_vote": 0.9 if right else 0.1})
    scored = pd.DataFrame(rows)
    scored["easy_prm_best_of_k"] = scored["easy_prm_weighted_vote"]
    scored["all_prm_best_of_k"] = scored["all_prm_weighted_vote"]
    rr = analysis.reranking(scored, [("easy", "prm"), ("all", "prm")], s, 4)
    assert rr.ks == [1, 2, 4]
    assert rr.at("majority", 4).sum() == 0 and rr.at("pass@k", 4).sum() == 40
    assert rr.at("weighted_vote/easy_prm", 4).sum() == pytest.approx(36)
    problems = {f"p{i:02d}": _problem(f"p{i:02d}", level=4 + i % 2, steps=["1 + 1 = 2"] * (3 + i % 2))
                for i in range(40)}
    sgr = analysis.supervision_gaps(rr, problems, ["prm"], s)
    overall = sgr[sgr["group"] == "all hard"].iloc[0]
    assert overall["sgr"] == pytest.approx(0.9) and overall["ci_low"] > 0.5
    assert set(sgr["group"]) == {"all hard", "level", "steps"}
    claims = analysis.check_claims(rr, sgr, ["prm"], None, s)
    assert [c.status for c in claims] == ["holds", "holds", "inconclusive"]
    assert "Llemma-7B" in claims[0].published
