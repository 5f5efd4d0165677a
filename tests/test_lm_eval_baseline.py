"""lm-eval greedy baseline on the local data files, offline, with the in-memory model."""

import pytest
from omegaconf import OmegaConf

from harness.data.problems import PROJECT_ROOT, dataset_config, load_problems
from harness.errors import ConfigError
from harness.grading.lm_eval_baseline import run_lm_eval

CONF = PROJECT_ROOT / "conf" / "model"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub access: set the variables, and the flags libraries already imported have read from them."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny():
    from harness.models.loading import load_model

    return load_model(OmegaConf.load(CONF / "tiny_random.yaml"))


@pytest.fixture(scope="module")
def gsm8k():
    return {p.id: p for p in load_problems(dataset_config("gsm8k"))}


def check_result(result, n):
    assert result.n == n == len(result.records) == len(result.problem_ids)
    assert result.metrics and all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert result.lm_eval_version == "0.4.13"
    for key, value in result.metrics.items():  # lm-eval's aggregate is the mean of the per-problem records
        assert value == pytest.approx(sum(r.correct[key] for r in result.records) / n)
        assert result.ci[key][0] <= value <= result.ci[key][1]


def test_gsm8k_cot_first_problems(tiny, gsm8k):
    result = run_lm_eval(tiny, "gsm8k_cot", None, limit=3, batch_size=3, max_gen_toks=4)
    check_result(result, 3)
    assert set(result.metrics) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert result.problem_ids == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert result.num_fewshot == {"gsm8k_cot": 8}
    assert result.max_gen_toks == 4
    assert result.chat_template is True  # tiny_random.yaml sets chat_template: true
    rec = result.records[0]
    assert rec.prompt.count("<|im_start|>user") == 9  # 8 exemplars as turns + the question
    assert gsm8k[rec.problem_id].question in rec.prompt
    assert rec.target == gsm8k[rec.problem_id].answer


def test_subset_by_ids_evaluates_exactly_those(tiny, gsm8k):
    ids = ["gsm8k/test/10", "gsm8k/test/3"]
    result = run_lm_eval(tiny, "gsm8k_cot", None, problem_ids=ids, batch_size=2, max_gen_toks=4, chat_template=False)
    check_result(result, 2)
    assert result.problem_ids == ids
    assert [r.problem_id for r in result.records] == ids
    assert [r.doc_id for r in result.records] == [10, 3]
    for rec in result.records:
        assert "<|im_start|>" not in rec.prompt
        assert rec.prompt.endswith(f"Q: {gsm8k[rec.problem_id].question}\nA:")
    assert result.chat_template is False


def test_minerva_math_subset_spans_subject_tasks(tiny):
    ids = ["test/precalculus/807.json", "test/algebra/1.json"]
    result = run_lm_eval(tiny, "minerva_math", None, problem_ids=ids, batch_size=2, max_gen_toks=4)
    check_result(result, 2)
    assert set(result.metrics) == {"exact_match,none", "math_verify,none"}
    assert [r.problem_id for r in result.records] == ids
    assert {r.lm_eval_task for r in result.records} == set(result.subtasks) == {
        "minerva_math_precalc",
        "minerva_math_algebra",
    }


def test_minerva_exact_match_compares_with_sympy():
    """lm-eval's minerva grader runs under our antlr4 4.9.3: equal values in different LaTeX match."""
    from lm_eval.tasks import TaskManager

    from harness.grading.lm_eval_baseline import _leaf_configs

    (cfg,), _ = _leaf_configs(TaskManager(), "minerva_math500")
    doc = {"problem": "p", "solution": "So $x=\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}"}
    said = "Final Answer: The final answer is $0.5$. I hope it is correct."
    assert cfg["process_results"](doc, [said])["exact_match"] == 1
    wrong = "Final Answer: The final answer is $0.25$. I hope it is correct."
    assert cfg["process_results"](doc, [wrong]) == {"exact_match": 0, "math_verify": 0}


def test_unknown_task_names_it():
    with pytest.raises(ConfigError, match="'gsm8k_plus'"):
        run_lm_eval(None, "gsm8k_plus", None)


def test_bad_subsets_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="'gsm8k/test/99999'"):
        run_lm_eval(tiny, "gsm8k_cot", None, problem_ids=["gsm8k/test/99999"])
    with pytest.raises(ConfigError, match="either limit or problem_ids"):
        run_lm_eval(tiny, "gsm8k_cot", None, limit=2, problem_ids=["gsm8k/test/0"])


@pytest.mark.slow
def test_smollm2_gsm8k_cot_two_problems(gsm8k):
    from harness.models.loading import load_model

    model = load_model(OmegaConf.load(CONF / "smollm2_135m.yaml"))
    result = run_lm_eval(model, "gsm8k_cot", None, limit=2, batch_size=2, max_gen_toks=64)
    check_result(result, 2)
    for rec in result.records:
        assert rec.response.strip()  # a real model writes something before a stop string
        assert "Q:" not in rec.response  # lm-eval cut at the task's stop string
