"""harness.data.ladder: the generated difficulty ladder (determinism, disjoint splits, exact steps, configs)."""
from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest
from omegaconf import OmegaConf

from harness.data import ladder
from harness.data.ladder import LEVELS, LadderConfig, ladder_file, strict_answer, strict_correct, verify_steps
from harness.data.problems import DATASET_CONF_DIR, as_dataset_config, load_problems
from harness.data.prompts import load_prompt, render
from harness.errors import ConfigError, DataError

SMALL = {"seed": 0, "test_per_level": 30, "train_per_level": 60}


def dataset(tmp_path, name: str = "ladder", **over):
    base = OmegaConf.load(DATASET_CONF_DIR / f"{name}.yaml")
    gen = {**SMALL, "generated_root": str(tmp_path), **over.pop("ladder", {})}
    return as_dataset_config(OmegaConf.merge(base, {"ladder": gen}, over))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return {name: load_problems(dataset(root, name)) for name in ("ladder", "ladder_train")}


def test_same_config_gives_the_same_file_bytes(tmp_path):
    a = ladder_file(LadderConfig(**SMALL, generated_root=str(tmp_path / "a")), "test")
    b = ladder_file(LadderConfig(**SMALL, generated_root=str(tmp_path / "b")), "test")
    assert a.name == b.name
    assert a.read_bytes() == b.read_bytes()


def test_a_missing_file_is_regenerated_identically(tmp_path):
    first = load_problems(dataset(tmp_path))
    path = ladder_file(LadderConfig(**SMALL, generated_root=str(tmp_path)), "test")
    path.unlink()
    again = load_problems(dataset(tmp_path))
    assert again.sha256 == first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(path.parent.glob("*.partial"))


def test_file_name_follows_the_generator_config(tmp_path):
    names = {
        ladder_file(LadderConfig(**{**SMALL, **over}, generated_root=str(tmp_path)), "test").name
        for over in ({}, {"seed": 1}, {"test_per_level": 31})
    }
    assert len(names) == 3
    assert all(ladder.GENERATOR_VERSION in n for n in names)


def test_train_and_test_share_no_question(splits):
    test_q = [p.question for p in splits["ladder"]]
    train_q = [p.question for p in splits["ladder_train"]]
    assert len(set(test_q)) == len(test_q) and len(set(train_q)) == len(train_q)
    assert not set(test_q) & set(train_q)


def test_neighbouring_seeds_do_not_repeat_problems(tmp_path):
    a = load_problems(dataset(tmp_path, ladder={"seed": 0}))
    b = load_problems(dataset(tmp_path, ladder={"seed": 1}))
    assert not {p.question for p in a} & {p.question for p in b}


def test_every_step_recomputes_and_ends_in_the_answer(splits):
    for p in list(splits["ladder"]) + list(splits["ladder_train"]):
        steps = p.metadata["steps"]
        verify_steps(steps, p.answer)
        assert len(steps) == LEVELS[p.metadata["level"] - 1].operations
        assert p.solution == "\n".join(steps) + f"\nThe answer is {p.answer}."
        assert all(int(n) >= 1 for n in re.findall(r"\d+", " ".join(steps)))  # no zero or negative results


def test_verify_steps_catches_a_wrong_step():
    with pytest.raises(DataError, match="wrong"):
        verify_steps(["3 + 4 = 8"], "8")
    with pytest.raises(DataError, match="previous result"):
        verify_steps(["3 + 4 = 7", "6 * 2 = 12"], "12")


def test_every_level_uses_all_four_operations(splits):
    for level in LEVELS:
        steps = [s for p in splits["ladder"] if p.metadata["level"] == level.number for s in p.metadata["steps"]]
        assert set(Counter(s.split()[1] for s in steps)) == {"+", "-", "*", "/"}, level.number


def test_distractor_levels_state_numbers_the_solution_does_not_use(splits):
    for p in splits["ladder"]:
        level = LEVELS[p.metadata["level"] - 1]
        stated = len(re.findall(r"\d+", p.question))
        assert stated == 1 + level.operations + level.distractors, p.question


def test_levels_filter_and_counts(tmp_path):
    ps = load_problems(dataset(tmp_path, levels=[1, 3]))
    assert Counter(p.metadata["level"] for p in ps) == {1: SMALL["test_per_level"], 3: SMALL["test_per_level"]}
    train = load_problems(dataset(tmp_path, "ladder_train", levels=[2]))
    assert len(train) == SMALL["train_per_level"]
    assert ps.provenance()["sha256"] == ps.sha256 and ps.total == SMALL["test_per_level"] * len(LEVELS)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"ladder": {"sed": 1}}, "dataset.ladder.sed"),
        ({"ladder": {"test_per_level": 0}}, "dataset.ladder.test_per_level"),
        ({"levels": [1, 9]}, "dataset.levels"),
        ({"ladder": {"seed": "abc"}}, "dataset.ladder.seed"),
    ],
)
def test_bad_ladder_config_is_one_line_naming_the_key(tmp_path, over, key):
    with pytest.raises(ConfigError) as err:
        load_problems(dataset(tmp_path, **over))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_a_ladder_dataset_needs_its_generator_node():
    with pytest.raises(ConfigError, match="dataset.ladder"):
        as_dataset_config({"name": "x", "kind": "ladder"})


def test_strict_grading():
    assert strict_correct("2 + 3 = 5\nThe answer is 5.", "5")
    assert strict_correct("The answer is 4. No wait. The answer is 5.", "5")
    assert not strict_correct("The answer is 5. Then 5 + 1 = 6. The answer is 6.", "5")
    assert not strict_correct("2 + 3 = 5", "5")  # never said
    assert not strict_correct("The answer is 5.", "5", finish_reason="length")  # truncated = wrong
    assert strict_answer("The answer is 1,200.") == "1200"


def test_ladder_prompts_render_the_question_for_the_completion(splits):
    problem = splits["ladder"][0]
    text = render(load_prompt("ladder"), problem)
    assert text == f"Question: {problem.question}\nAnswer:\n"
    chat = load_prompt("ladder_chat")
    assert chat.style == "chat" and "The answer is N." in chat.system
