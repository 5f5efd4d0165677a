"""harness.reward.judge: the paper's rubric prompt, score parsing on hand-written judgements, the grader's verdict
as a rubric score, the oracle judge, and the model judge drawing through the store (tiny random model)."""
import pytest

from harness.reward.judge import (
    JUDGE_TEMPLATE,
    Candidate,
    OracleJudge,
    judge_input,
    parse_score,
    render_judge_prompt,
    target_judgement,
    verdict_score,
    wrong_statements,
)


@pytest.mark.parametrize("text, score", [
    ("The response is good.\nScore: 4", 4.0),
    ("score: 3", 3.0),
    ("SCORE:5", 5.0),
    ("Score: 0", 0.0),
    ("Score: 4.5.", 4.5),
    ("Score: 2 points", 2.0),
    ("Score: **3**", 3.0),
    ("Score: 4/5", 4.0),                          # points out of five
    ("First Score: 2, then on reflection Score: 5", 5.0),  # the last one counts
    ("Total score: 1\n", 1.0),
])
def test_parse_score_reads_the_last_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", [
    "",
    "I would give it four points.",
    "Score: 6",                      # out of [0, 5]
    "Score: -1",
    "Score: 10/10",
    "Score: 3\nOn reflection, Score:",   # the last "Score:" has no number: an earlier one does not stand in
    "Score: <total points>",
    "Score: five",
    "Score: 3\nScore: 7",            # the last is out of range
    "Underscore: 3",                 # not the word "score"
    "Scored: 3",
])
def test_parse_score_rejects_what_is_not_a_score(text):
    assert parse_score(text) is None


def test_judge_prompt_is_the_papers_rubric_with_the_texts_in_place():
    text = render_judge_prompt("How many apples? {x}", " 2 + 3 = 5\nThe answer is 5. ")
    assert text.startswith("Review the user's question and the corresponding response using the additive 5-point")
    assert "User: How many apples? {x}\n<response>2 + 3 = 5\nThe answer is 5.</response>" in text
    assert 'Conclude with the score using the format: "Score: <total points>"' in text
    assert text.count("point") == JUDGE_TEMPLATE.count("point")
    assert "{question}" not in text and "{response}" not in text


def test_wrong_statements_checks_arithmetic_exactly():
    assert wrong_statements("23 + 45 = 68\n68 * 2 = 136\n136 / 4 = 34") == []
    assert wrong_statements("23 + 45 = 67\n68 - 8 = 60") == ["23 + 45 = 67"]
    assert wrong_statements("0.5 * 4 = 2 and 7 / 0 = 1") == ["7 / 0 = 1"]
    assert wrong_statements("no arithmetic here") == []


@pytest.mark.parametrize("correct, answered, response, score", [
    (True, True, "2 + 3 = 5\nThe answer is 5.", 5),
    (True, True, "2 + 3 = 6\n6 - 1 = 5\nThe answer is 5.", 4),   # right answer, a wrong step
    (False, True, "2 + 3 = 5\nThe answer is 6.", 1),
    (False, False, "2 + 3 = 5 and then", 0),
])
def test_verdict_score(correct, answered, response, score):
    assert verdict_score(correct, answered, response) == score
    judgement = target_judgement(correct, answered, response, "5")
    assert parse_score(judgement) == score
    assert "\n\n" not in judgement and len(judgement.split()) <= 100


def test_oracle_judge_scores_by_the_grader():
    cands = [Candidate("p#0", "q", "2 + 3 = 5\nThe answer is 5.", True, True, "5"),
             Candidate("p#1", "q", "The answer is 7.", False, True, "7"),
             Candidate("p#2", "q", "2 + 3 =", False, False, None)]
    out = OracleJudge().judge(cands, repeats=3)
    assert [[j.score for j in js] for js in out] == [[5.0] * 3, [1.0] * 3, [0.0] * 3]


def test_oracle_judge_needs_a_verdict():
    from harness.errors import DataError

    with pytest.raises(DataError, match="p#0"):
        OracleJudge().judge([Candidate("p#0", "q", "r")])


def test_judge_input_uses_the_task_format_without_exemplars():
    from harness.data.prompts import load_prompt

    text = judge_input(load_prompt("ladder"), "Ava has 2 apples.", "2 + 1 = 3")
    assert text.startswith("Question: Review the user's question")
    assert text.endswith("systematically attribute points based on the outlined criteria.\nAnswer:\n")
    fewshot = load_prompt("gsm8k_fewshot")
    assert judge_input(fewshot, "q", "r").count("Review the user's question") == 1


def test_model_judge_draws_through_the_store_and_resumes(tmp_path):
    """Judgements are store samples keyed by the judged text: a second call draws nothing."""
    from omegaconf import OmegaConf

    from harness.cli import CONF_DIR
    from harness.data.prompts import load_prompt
    from harness.pipeline.experiment import BASE, Experiment
    from harness.reporting.run import Run
    from harness.reward.judge import ModelJudge
    from harness.sampling.base import SamplingParams
    from harness.store.samples import SampleStore

    cfg = OmegaConf.create({"model": OmegaConf.load(CONF_DIR / "model" / "tiny_random.yaml"),
                            "backend": OmegaConf.load(CONF_DIR / "backend" / "hf.yaml"), "progress": False,
                            "data": {"root": None}})
    run = Run(tmp_path / "run", "test")
    exp = Experiment(cfg, run, problems=None, store=SampleStore(tmp_path / "store"))
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6, stop=(), seed=0)
    judge = ModelJudge(exp, BASE, load_prompt("ladder"), params)
    cands = [Candidate(f"p#{i}", "Ava has 2 apples.", f"2 + {i} = {2 + i}") for i in range(3)]
    cands.append(Candidate("p#3", "Ava has 2 apples.", "2 + 0 = 2"))  # the same text as p#0
    first = judge.judge(cands, repeats=2)
    assert [len(js) for js in first] == [2, 2, 2, 2]
    assert first[3] == first[0]
    assert judge.info()["drawn_now"] == 6 and judge.info()["judged_texts"] == 3
    again = judge.judge(cands, repeats=2)
    assert again == first and judge.info()["drawn_now"] == 0
