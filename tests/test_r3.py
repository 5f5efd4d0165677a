"""R3: demonstrations cut into steps, stage prompts and schedules against hand-written cases, the outcome
reward's three values, and config checks."""
from collections import Counter

import pytest

from harness.errors import ConfigError, DataError
from harness.grading.grader import Grader
from replications.r3.curriculum import (
    Demonstration,
    cut_steps,
    given_steps,
    num_stages,
    schedule,
    split_steps,
    stage_states,
    start_state,
)
from replications.r3.reward import RewardValues, outcome_rewards

PROMPT = "Question: Ava has 3 pens. She buys 4 more, then doubles them. How many pens?\nAnswer:\n"
LADDER_SOLUTION = "3 + 4 = 7\n7 * 2 = 14\nThe answer is 14."


def _demo(solution, pid="p", prompt=PROMPT, answer="14"):
    return Demonstration(pid, prompt, tuple(cut_steps(solution)), answer)


# ---- cutting a demonstration into steps -------------------------------------------------------------

def test_answer_line_joins_the_last_step():
    assert cut_steps(LADDER_SOLUTION) == ["3 + 4 = 7", "7 * 2 = 14\nThe answer is 14."]


def test_blank_lines_and_trailing_spaces_are_not_steps():
    text = "\n  \n3 + 4 = 7   \n\n\n7 * 2 = 14\n\nThe answer is 14.\n\n"
    assert cut_steps(text) == ["3 + 4 = 7", "7 * 2 = 14\nThe answer is 14."]


def test_zero_and_one_step_demonstrations():
    assert cut_steps("") == []
    assert cut_steps("\n \n") == []
    assert cut_steps("3 + 4 = 7") == ["3 + 4 = 7"]
    # an answer line with no step before it is the only step
    assert cut_steps("The answer is 7.") == ["The answer is 7."]
    assert cut_steps("3 + 4 = 7\n#### 7") == ["3 + 4 = 7\n#### 7"]


def test_gsm8k_style_rationale_keeps_one_step_per_line():
    text = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    assert cut_steps(text) == ["Natalia sold 48/2 = 24 clips in May.",
                               "Natalia sold 48+24 = 72 clips altogether in April and May."]


def test_a_demonstration_must_be_text():
    with pytest.raises(DataError, match="must be text"):
        cut_steps(None)


# ---- stage prompts ------------------------------------------------------------------------------------

def test_stage_prompts_slide_from_the_end_to_the_start():
    demo = _demo("3 + 4 = 7\n\n7 * 2 = 14\n14 - 5 = 9\nThe answer is 9.", answer="9")
    assert demo.num_steps == 3
    s1, s2, s3, s4 = (start_state(demo, k) for k in (1, 2, 3, 4))
    assert s1.prompt == PROMPT + "3 + 4 = 7\n7 * 2 = 14\n" and s1.given == 2
    assert s2.prompt == PROMPT + "3 + 4 = 7\n" and s2.given == 1
    assert s3.prompt == PROMPT and s3.given == 0
    assert s4.prompt == PROMPT and s4.given == 0  # beyond its length: the question alone
    assert s1.answer == "9" and s1.num_steps == 3


def test_stage_prompt_of_zero_and_one_step_demonstrations_is_the_question_alone():
    for solution in ("", "3 + 4 = 7\nThe answer is 7."):
        demo = _demo(solution, answer="7")
        state = start_state(demo, 1)
        assert state.prompt == PROMPT and state.given == 0


def test_given_steps_and_bad_stage():
    assert [given_steps(4, k) for k in (1, 2, 3, 4, 5)] == [3, 2, 1, 0, 0]
    with pytest.raises(ConfigError, match="stage must be >= 1"):
        given_steps(3, 0)


def test_last_stage_is_the_question_alone_even_when_capped():
    demos = [_demo("a\nb\nc\nd\nThe answer is 1.", pid="long", answer="1"), _demo("a\nThe answer is 1.", pid="short", answer="1")]
    assert num_stages(demos) == 4
    assert num_stages(demos, cap=2) == 2
    assert [s.given for s in stage_states(demos, 1, last=2)] == [3, 0]
    assert [s.given for s in stage_states(demos, 2, last=2)] == [0, 0]


# ---- schedules ----------------------------------------------------------------------------------------

def _demos():
    return [_demo("x = 1\ny = 2\nz = 3\nThe answer is 3.", pid=f"p{i}", answer="3") for i in range(5)]


def test_reverse_schedule_visits_stages_in_order_with_equal_prompt_counts():
    blocks = schedule(_demos(), "reverse", total_steps=7, prompts_per_step=2, seed=0)
    assert [b.name for b in blocks] == ["stage1", "stage2", "stage3"]
    assert [b.steps for b in blocks] == [3, 2, 2]
    assert [len(b.states) for b in blocks] == [6, 4, 4]
    assert [{s.given for s in b.states} for b in blocks] == [{2}, {1}, {0}]
    seen = Counter(s.problem_id for b in blocks for s in b.states)
    assert max(seen.values()) - min(seen.values()) <= 1  # cycled through every problem before repeating


def test_every_schedule_trains_on_the_same_number_of_prompts():
    counts = {kind: sum(len(b.states) for b in schedule(_demos(), kind, 6, 3, seed=1)) for kind in ("reverse", "mixed", "scratch")}
    assert counts == {"reverse": 18, "mixed": 18, "scratch": 18}


def test_schedules_share_problems_and_block_sizes_and_differ_in_start_states():
    plans = {kind: schedule(_demos(), kind, 7, 2, seed=3) for kind in ("reverse", "mixed", "scratch")}
    assert [b.name for b in plans["scratch"]] == ["scratch1", "scratch2", "scratch3"]
    for kind in ("mixed", "scratch"):
        assert [b.steps for b in plans[kind]] == [3, 2, 2]
        assert [[s.problem_id for s in b.states] for b in plans[kind]] == \
               [[s.problem_id for s in b.states] for b in plans["reverse"]]
    assert {s.given for b in plans["scratch"] for s in b.states} == {0}


def test_mixed_schedule_draws_every_stage_reproducibly():
    mixed = [s for b in schedule(_demos(), "mixed", 60, 4, seed=0) for s in b.states]
    assert {s.given for s in mixed} == {0, 1, 2}
    again = [s for b in schedule(_demos(), "mixed", 60, 4, seed=0) for s in b.states]
    assert [s.as_record() for s in again] == [s.as_record() for s in mixed]


def test_schedule_errors_name_the_key():
    with pytest.raises(ConfigError, match="r3.schedule"):
        schedule(_demos(), "forward", 5, 1, seed=0)
    with pytest.raises(ConfigError, match="r3.steps"):
        schedule(_demos(), "reverse", 2, 1, seed=0)  # 3 stages
    with pytest.raises(DataError, match="no training demonstrations"):
        schedule([], "reverse", 5, 1, seed=0)
    assert split_steps(5, 5) == [1] * 5


# ---- outcome reward -----------------------------------------------------------------------------------

def test_reward_values_from_the_grader():
    completions = [
        "7 * 2 = 14\nThe answer is 14.",  # correct
        "7 * 2 = 15\nThe answer is 15.",  # stated, wrong
        "7 * 2 = 14",  # no stated answer (the last number is right, but strict grading wants it stated)
        "7 * 2 = 14\nThe answer is 14.",  # cut off at the token limit: never stated its final answer
        "",
    ]
    finish = ["eos", "eos", "eos", "length", "eos"]
    with Grader("gsm8k") as grader:
        assert outcome_rewards(grader, completions, ["14"] * 5, finish, RewardValues()) == [1.0, 0.2, 0.0, 0.0, 0.0]
        custom = RewardValues(correct=2.0, wrong=0.5, none=-1.0)
        assert outcome_rewards(grader, completions[:3], ["14"] * 3, finish[:3], custom) == [2.0, 0.5, -1.0]


def test_reward_values_must_be_ordered():
    with pytest.raises(ConfigError, match="r3.reward"):
        RewardValues(correct=0.2, wrong=1.0).check()


# ---- demonstrations from problems ---------------------------------------------------------------------

def test_demonstrations_state_their_answer():
    from harness.data.problems import Problem
    from replications.r3.curriculum import demonstrations

    ladder = Problem("l/0", "q", "14", LADDER_SOLUTION, "gsm8k", {"level": 3})
    gsm8k = Problem("g/0", "q", "72", "Natalia sold 48/2 = 24 clips.\nShe sold 48+24 = 72 clips.", "gsm8k", {"level": None})
    empty = Problem("e/0", "q", "5", "", "gsm8k", {})
    demos = demonstrations([ladder, gsm8k, empty], {"l/0": "P1\n", "g/0": "P2\n", "e/0": "P3\n"})
    assert demos[0].steps == ("3 + 4 = 7", "7 * 2 = 14\nThe answer is 14.") and demos[0].level == 3
    assert demos[1].steps[-1] == "She sold 48+24 = 72 clips.\nThe answer is 72."
    assert demos[2].steps == ("The answer is 5.",)
    with pytest.raises(DataError, match="no rendered prompt"):
        demonstrations([ladder], {})


# ---- configs ------------------------------------------------------------------------------------------

def _compose(overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="r3", overrides=list(overrides))


def test_default_and_paper_configs_compose_and_validate():
    from replications.r3.config import r3_settings, rl_settings

    cfg = _compose()
    s = r3_settings(cfg)
    rl = rl_settings(cfg, s)
    assert (cfg.model.name, cfg.dataset.name, cfg.train_dataset.name) == ("smollm2_135m_sft", "ladder", "ladder_train")
    assert s.arms == ["scratch", "reverse"] and (s.reward.correct, s.reward.wrong, s.reward.none) == (1.0, 0.2, 0.0)
    assert rl.training.learning_rate == cfg.training.learning_rate and rl.backend["name"] == cfg.backend.name
    paper = _compose(["r3=paper_gsm8k"])
    ps = r3_settings(paper)
    prl = rl_settings(paper, ps)
    assert (paper.dataset.name, paper.train_dataset.name, paper.train_dataset.levels) == ("gsm8k", "gsm8k_train", None)
    assert paper.training.learning_rate == 3.0e-7 and prl.beta == 0.05 and ps.arms == ["scratch", "reverse", "mixed"]
    assert paper.model.warm_start.training.learning_rate == 2.0e-5 and paper.model.warm_start.training.epochs == 3
    assert not {"arms", "steps", "rl"} & set(paper.keys())  # nothing leaked to the top level


def test_the_schema_has_no_defaults_of_its_own():
    from omegaconf import OmegaConf

    from replications.r3.config import R3Settings

    assert all(OmegaConf.is_missing(OmegaConf.structured(R3Settings), k) for k in R3Settings.__dataclass_fields__)


@pytest.mark.parametrize("override, key", [
    ("r3.arms=[scratch,forward]", "r3.arms"),
    ("r3.arms=[]", "r3.arms"),
    ("r3.steps=0", "r3.steps"),
    ("r3.stages=0", "r3.stages"),
    ("r3.reward.wrong=2.0", "r3.reward"),
    ("r3.rl.num_generations=1", "r3.rl.num_generations"),
    ("r3.rl.rollout=vllm", "r3.rl.rollout"),
    ("+r3.rl.group=4", "r3.rl.group"),
    ("r3.steps=many", "r3.steps"),
])
def test_bad_r3_config_is_a_one_line_error_naming_its_key(override, key):
    from replications.r3.config import r3_settings

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        r3_settings(_compose([override]))
    assert "\n" not in str(err.value)


# ---- the recipe end to end (tiny random model): resumes by stage ---------------------------------------

TINY_RUN = ["model=tiny_random", "dataset.levels=[1,2]", "dataset.ladder.test_per_level=2", "train_dataset.levels=[3]",
            "r3.steps=2", "r3.rl.prompts_per_step=2", "r3.rl.num_generations=2", "r3.rl.max_completion_length=8",
            "r3.eval.greedy_max_new_tokens=8", "training.learning_rate=1e-3", "progress=false", "grader.workers=1"]


@pytest.mark.slow
def test_recipe_end_to_end_resumes_at_the_stage_where_it_stopped(tmp_path, monkeypatch):
    import json

    import harness.training.rl as rl_module
    from harness.reporting.run import start_run
    from replications.r3 import loop, report

    trained = []
    real_train = rl_module.train_grpo

    def counting_train(model, tokenizer, records, *args, **kwargs):
        trained.append([r["given"] for r in records])
        return real_train(model, tokenizer, records, *args, **kwargs)

    monkeypatch.setattr(loop, "train_grpo", counting_train)
    monkeypatch.chdir(tmp_path)
    overrides = TINY_RUN + [f"store.root={tmp_path / 'store'}", "run_name=resume"]
    run_dir = tmp_path / "results" / "r3" / "resume"
    cfg = _compose(overrides + ["r3.fail_at=train/reverse/stage2"])
    with pytest.raises(loop.StageFailure):
        loop.setup(cfg, start_run(cfg, "r3", run_dir)).run_all()
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert [k for k in ledger if k != "config"] == [
        "eval/sft", "train/scratch/scratch1", "train/scratch/scratch2", "eval/scratch", "train/reverse/stage1"]
    # level-3 demonstrations have 2 steps: scratch gives none, stage 1 gives the first
    assert trained == [[0, 0], [0, 0], [1, 1]]

    cfg = _compose(overrides)
    recipe = loop.setup(cfg, start_run(cfg, "r3", run_dir))
    results = recipe.run_all()
    assert trained[3:] == [[0, 0]]  # only reverse/stage2 was trained on resume
    block = results["blocks"]["reverse"][1]
    assert block["samples"] == 4 and block["stage"] == 2 and 0 <= block["zero_variance_groups"] <= 1
    assert {"reward", "kl", "completion_length", "zero_variance_share"} <= set(block["log"][0])
    path = report.write(recipe.run, recipe, results, cfg)
    text = path.read_text()
    assert "GRPO" in text and "PPO" in text and "R3 beats outcome-only RL at equal training samples" in text
    for name in ("curve_reward.png", "curve_kl.png", "curve_completion_length.png", "training_curves.csv", "claims.json"):
        assert (run_dir / name).is_file(), name
