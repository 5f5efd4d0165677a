"""Self-Rewarding: mean of judge repeats, chosen/rejected with ties dropped and unscored candidates left out,
EFT rendering, the judge's pairwise accuracy, head-to-head by the grader; configs compose and bad keys fail
as one line."""
import pandas as pd
import pytest

from harness.reward.judge import Judgement, parse_score
from replications.self_rewarding.pairs import (
    balance_by,
    candidates_from_graded,
    eft_records,
    head_to_head,
    mean_score,
    pair_records,
    pairwise_accuracy,
    score_distribution,
    score_table,
    select_pairs,
)


def _judged(rows):
    """rows: (problem_id, index, text, correct, [judge texts])."""
    cands = pd.DataFrame([{"problem_id": p, "index": i, "text": t, "correct": c} for p, i, t, c, _ in rows])
    return score_table(cands, [[Judgement(j) for j in js] for *_, js in rows], min_scored=3)


def test_mean_score_needs_enough_valid_repeats():
    assert mean_score([4.0, 5.0, 3.0], 3) == 4.0
    assert mean_score([4.0, None, 5.0], 3) is None
    assert mean_score([4.0, None, 5.0], 2) == 4.5
    assert mean_score([None, None, None], 1) is None


def test_pairs_highest_vs_lowest_mean_ties_dropped_unscored_left_out():
    s = lambda *xs: [f"Score: {x}" for x in xs]  # noqa: E731
    scored = _judged([
        # p1: means 4, 2, 4.33, 1 -> chosen #2, rejected #3
        ("p1", 0, "a0", True, s(4, 4, 4)), ("p1", 1, "a1", False, s(2, 2, 2)),
        ("p1", 2, "a2", True, s(5, 4, 4)), ("p1", 3, "a3", False, s(1, 1, 1)),
        # p2: every scored candidate ties at 3; #1 is unscored (one repeat unparsable) -> dropped as a tie
        ("p2", 0, "b0", True, s(3, 3, 3)), ("p2", 1, "b1", False, ["Score: 0", "no score", "Score: 0"]),
        ("p2", 2, "b2", False, s(3, 3, 3)),
        # p3: only one candidate has a valid score -> too few
        ("p3", 0, "c0", True, s(5, 5, 5)), ("p3", 1, "c1", False, ["Score: 9", "Score: 1", "Score: 1"]),
        # p4: equal maxima -> the lowest index is chosen; the two lowest also tie -> the lowest index rejected
        ("p4", 0, "d0", False, s(1, 1, 1)), ("p4", 1, "d1", True, s(5, 5, 5)), ("p4", 2, "d2", True, s(5, 5, 5)),
        ("p4", 3, "d3", False, s(1, 1, 1)),
        # p5: highest and lowest have the same text -> no gradient, dropped
        ("p5", 0, "same", True, s(5, 5, 5)), ("p5", 1, "same", False, s(0, 0, 0)),
    ])
    pairs, counts = select_pairs(scored)
    assert [(p["problem_id"], p["chosen_index"], p["rejected_index"]) for p in pairs] == [("p1", 2, 3), ("p4", 1, 0)]
    assert pairs[0]["chosen_score"] == pytest.approx(13 / 3) and pairs[0]["rejected_score"] == 1.0
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a2", "a3")
    assert counts == {"prompts": 5, "pairs": 2, "ties": 1, "too_few_scored": 1, "identical_texts": 1,
                      "unscored_candidates": 2, "unparsable_judgements": 2}
    records = pair_records(pairs, {"p1": "Q1", "p4": "Q4"})
    assert records[1]["prompt"] == "Q4" and {"prompt", "chosen", "rejected"} <= set(records[1])


def test_pairwise_accuracy_ties_and_unscored_are_misses():
    s = lambda *xs: [f"Score: {x}" for x in xs]  # noqa: E731
    scored = _judged([
        ("p1", 0, "a", True, s(5, 5, 5)), ("p1", 1, "b", False, s(1, 1, 1)), ("p1", 2, "c", False, s(5, 5, 5)),
        ("p2", 0, "d", True, s(2, 2, 2)), ("p2", 1, "e", False, ["x", "x", "x"]),
        ("p3", 0, "f", True, s(4, 4, 4)), ("p3", 1, "g", True, s(1, 1, 1)),  # no verdict difference: no pair
    ])
    acc = pairwise_accuracy(scored)
    assert (acc["pairs"], acc["correct_higher"], acc["ties"], acc["unscored"]) == (3, 1, 1, 1)
    assert acc["accuracy"] == pytest.approx(1 / 3) and acc["tie_rate"] == pytest.approx(1 / 3)
    dist = score_distribution(scored)
    assert dist == {"1": 6, "2": 3, "4": 3, "5": 6, "none": 3}


def test_head_to_head_by_the_grader():
    new = {"a": True, "b": True, "c": False, "d": False, "e": True}
    old = {"a": True, "b": False, "c": True, "d": False, "f": True}
    assert head_to_head(new, old) == {"n": 4, "win": 1, "tie": 2, "loss": 1, "win_rate": 0.25, "tie_rate": 0.5,
                                      "loss_rate": 0.25}


def test_eft_records_render_the_judge_prompt_with_a_target_score():
    from harness.data.prompts import load_prompt

    graded = pd.DataFrame([
        {"problem_id": "q1", "index": 0, "text": "2 + 3 = 5\nThe answer is 5.", "correct": True, "extracted": "5",
         "finish_reason": "stop"},
        {"problem_id": "q1", "index": 1, "text": "2 + 3 = 6\n6 - 1 = 5\nThe answer is 5.", "correct": True,
         "extracted": "5", "finish_reason": "stop"},
        {"problem_id": "q1", "index": 2, "text": "2 * 3 = 6\nThe answer is 6.", "correct": False, "extracted": "6",
         "finish_reason": "stop"},
        {"problem_id": "q1", "index": 3, "text": "2 + 3 = 5\n5 + 5 = 10\n10 + 10", "correct": False, "extracted": "10",
         "finish_reason": "length"},  # cut at the token limit: its last number is not an answer
    ])
    cands = candidates_from_graded(graded, {"q1": "Ava has 2 apples and buys 3. How many?"})
    records = eft_records(cands, load_prompt("ladder"))
    assert [r["target_score"] for r in records] == [5, 4, 1, 0]
    assert [r["target_verdict"] for r in records] == ["right", "right", "wrong", "wrong"]
    assert [parse_score(r["completion"]) for r in records] == [5.0, 4.0, 1.0, 0.0]
    first = records[0]
    assert first["prompt"].startswith("Question: Review the user's question")
    assert "User: Ava has 2 apples and buys 3. How many?\n<response>2 + 3 = 5\nThe answer is 5.</response>" in first["prompt"]
    assert first["prompt"].endswith("\nAnswer:\n") and first["source"] == "eft" and first["candidate"] == "q1#0"
    assert "(2 + 3 = 6)" in records[1]["completion"]


def test_balance_by_score_keeps_the_rarest_count_of_each():
    records = [{"target_score": s, "i": i} for i, s in enumerate([5, 5, 5, 5, 1, 1, 0, 5, 1])]
    kept = balance_by(records, seed=0)
    assert sorted(r["target_score"] for r in kept) == [0, 1, 5]
    assert kept == balance_by(records, seed=0)
    assert [r["i"] for r in kept] == sorted(r["i"] for r in kept)
    assert balance_by([], seed=0) == []
    many = [{"target_score": s} for s in [5] * 10 + [1] * 8 + [0] * 6]
    assert sorted(r["target_score"] for r in balance_by(many, seed=0, max_examples=6)) == [0, 0, 1, 1, 5, 5]
    assert len(balance_by(many, seed=0)) == 18


def test_balance_by_verdict_keeps_each_verdicts_scores_in_their_shares():
    # 12 right (10 of score 5, 2 of score 4) and 20 wrong: by score, the two 4s would cap everything at 2 each
    scores = [5] * 10 + [4] * 2 + [1] * 18 + [0] * 2
    records = [{"target_score": s, "target_verdict": "right" if s >= 4 else "wrong", "i": i} for i, s in enumerate(scores)]
    kept = balance_by(records, seed=0, key="target_verdict")
    assert [r["target_verdict"] for r in kept].count("right") == 12
    assert [r["target_verdict"] for r in kept].count("wrong") == 12
    assert len(balance_by(records, seed=0)) == 8  # by score: 4 scores x 2
    capped = balance_by(records, seed=0, max_examples=10, key="target_verdict")
    assert sorted(r["target_verdict"] for r in capped) == ["right"] * 5 + ["wrong"] * 5


# ---- configs ------------------------------------------------------------------------------------------------

def _compose(overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="self_rewarding", overrides=list(overrides))


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_every_preset_composes_and_validates(preset):
    from replications.self_rewarding.config import self_rewarding_settings, training_for

    cfg = _compose([f"self_rewarding={preset}"])
    s = self_rewarding_settings(cfg)
    assert (s.candidates, s.judge_repeats, s.iterations) == (4, 3, 2)  # the paper's N, repeats, M2 and M3
    assert (cfg.sampling.temperature, cfg.sampling.top_p) == (0.7, 0.9)
    assert training_for(cfg, "dpo_training").trl["beta"] == 0.1
    if preset == "paper":
        assert s.m1_init == "base" and cfg.backend.name == "vllm" and cfg.training.precision == "bf16"
        assert training_for(cfg, "dpo_training").learning_rate == 1e-6
        assert training_for(cfg, "m1_training").learning_rate == 5.5e-6
        assert (s.ift.problems, s.eft.problems) == (3200, 1630)
    else:
        assert s.m1_init == "sft_baseline" and cfg.model.name == "smollm2_135m_sft"


@pytest.mark.parametrize("override, key", [
    ("self_rewarding.judge=gpt4", "self_rewarding.judge"),
    ("self_rewarding.m1_init=warm", "self_rewarding.m1_init"),
    ("self_rewarding.candidates=1", "self_rewarding.candidates"),
    ("self_rewarding.min_scored_repeats=4", "self_rewarding.min_scored_repeats"),
    ("self_rewarding.judge_sampling.top_p=0", "self_rewarding.judge_sampling.top_p"),
    ("+self_rewarding.colour=red", "self_rewarding.colour"),
    ("+self_rewarding.dpo_training.betta=0.1", "betta"),
    ("self_rewarding.dpo_training.learning_rate=-1", "learning_rate"),
    ("self_rewarding.eval.per_level=0", "self_rewarding.eval.per_level"),
    ("self_rewarding.eft.balance=true", "self_rewarding.eft.balance"),
])
def test_bad_config_key_is_one_line_naming_it(override, key):
    from harness.errors import ConfigError
    from replications.self_rewarding.config import self_rewarding_settings

    with pytest.raises(ConfigError) as err:
        self_rewarding_settings(_compose([override]))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_bad_key_on_the_command_line_exits_with_one_line(capsys, monkeypatch):
    import sys

    from replications.self_rewarding.__main__ import main

    monkeypatch.setattr(sys, "argv", ["self_rewarding", "self_rewarding.judgee=model"])
    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "judgee" in err and "\n" not in err


# ---- one full iteration end to end (tiny random model) ----------------------------------------------------

TINY_RUN = [
    "model=smollm2_135m_sft_tiny", "dataset.levels=[1,2]", "self_rewarding.eval.per_level=1",
    "self_rewarding.iterations=1", "self_rewarding.prompts_per_iteration=3", "self_rewarding.eft.problems=2",
    "self_rewarding.eft.samples_per_problem=2", "self_rewarding.eft.balance=none", "self_rewarding.ift.problems=2",
    "sampling.max_new_tokens=6", "self_rewarding.judge_sampling.max_new_tokens=6",
    "self_rewarding.eval.greedy_max_new_tokens=6", "self_rewarding.eval.samples=2",
    "self_rewarding.eval.judge_candidates=2", "self_rewarding.m1_training.epochs=1",
    "self_rewarding.dpo_training.epochs=1", "training.measure_loss=false", "progress=false", "grader.workers=1",
]


@pytest.mark.slow
def test_one_iteration_end_to_end_and_a_rerun_redoes_nothing(tmp_path, monkeypatch):
    """M0, SFT baseline, EFT, M1, one AIFT iteration with DPO, M2, judges, report; the random model writes no
    parsable score, so the loop's judge is replaced by one that scores candidates by their sample index (a
    stand-in that makes pairs: chosen = the highest index, rejected = index 0)."""
    import json

    import harness.pipeline.iterated as iterated
    from harness.reporting.run import start_run
    from harness.reward.judge import Judge, Judgement
    from replications.self_rewarding import loop, report

    class IndexJudge(Judge):
        name = "index"

        def judge(self, candidates, repeats=1):
            return [[Judgement(f"Score: {int(c.key.rsplit('#', 1)[1])}")] * repeats for c in candidates]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loop, "OracleJudge", IndexJudge)
    trained = []
    real_dpo, real_sft = iterated.train_dpo, iterated.train_sft
    monkeypatch.setattr(iterated, "train_dpo", lambda *a, **k: (trained.append("dpo"), real_dpo(*a, **k))[1])
    monkeypatch.setattr(iterated, "train_sft", lambda *a, **k: (trained.append("sft"), real_sft(*a, **k))[1])

    cfg = _compose([*TINY_RUN, "self_rewarding.judge=oracle", f"store.root={tmp_path / 'store'}"])
    run = start_run(cfg, "self_rewarding", tmp_path / "run")
    steps = loop.setup(cfg, run)
    results = steps.run_all()
    assert trained == ["sft", "dpo"]
    aift = results["aift"]["1"]
    assert (aift["prompts"], aift["pairs"], aift["ties"]) == (3, 3, 0)
    assert results["train"]["m2"]["model"].startswith(f"{cfg.model.name}-self_rewarding-m2-")
    assert results["evals"]["m2"]["model"] != results["evals"]["m1"]["model"] != results["evals"]["sft"]["model"]
    assert results["evals"]["m0"]["model"] != results["evals"]["sft"]["model"]  # M0: the model under the warm start
    # the real model judges (random weights: nothing parses), every judgement counted
    for label in ("m1", "m2", "sft"):
        j = results["judges"][label]
        assert j["candidates"] == 2 * 2 and j["unparsable_judgements"] == j["candidates"] * 3
        assert j["judge_info"]["drawn_now"] == j["candidates"] * 3 or j["judge_info"]["judged_texts"] < j["candidates"]
    assert results["eft"]["examples"] == 4 and results["train"]["m1"]["eft_examples"] == 4
    path = report.write(run, steps, results, cfg)
    text = path.read_text()
    assert "Head-to-head" in text and "Llama 2 70B" in text
    verdicts = json.loads((path.parent / "claims.json").read_text())["claims"]
    assert len(verdicts) == 3

    # a rerun of the same run: every stage from the ledger, nothing sampled or trained again
    trained.clear()
    again = loop.setup(cfg, start_run(cfg, "self_rewarding", tmp_path / "run")).run_all()
    assert trained == [] and again["aift"] == json.loads(json.dumps(results["aift"]))
