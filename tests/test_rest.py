"""ReST / ReST-EM: the Improve filter, the reference mix, config checks, and an interrupted run that resumes
at the stage where it stopped (tiny random model end to end)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from harness.cli import CONF_DIR
from harness.data.problems import Problem
from harness.errors import ConfigError
from replications.rest import improve
from replications.rest.config import rest_settings


def _compose(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="rest", overrides=list(overrides))


# ---- Improve: filter ------------------------------------------------------------------------------

@pytest.fixture
def graded():
    """Three problems: a (4 samples: 3 correct, two of them identical), b (2 samples, none correct), c (1 correct)."""
    rows = [
        ("a", 0, "x=1 \\boxed{1}", True, "1"),
        ("a", 1, "wrong \\boxed{2}", False, "2"),
        ("a", 2, "x=1 \\boxed{1}", True, "1"),
        ("a", 3, "so 1 \\boxed{1}", True, "1"),
        ("b", 0, "no answer", False, None),
        ("b", 1, "\\boxed{7}", False, "7"),
        ("c", 0, "\\boxed{3}", True, "3"),
    ]
    return pd.DataFrame(rows, columns=["problem_id", "index", "text", "correct", "extracted"])


def _kept(df):
    return list(zip(df["problem_id"], df["index"]))


def test_filter_keeps_exactly_the_correct_samples(graded):
    graded["reward"] = improve.rewards(graded, "correct").to_numpy()
    assert _kept(improve.select(graded, 0.5)) == [("a", 0), ("a", 2), ("a", 3), ("c", 0)]


def test_filter_caps_per_problem_in_index_order(graded):
    graded["reward"] = improve.rewards(graded, "correct").to_numpy()
    assert _kept(improve.select(graded, 0.5, max_per_problem=2)) == [("a", 0), ("a", 2), ("c", 0)]


def test_filter_dedupes_identical_solutions_before_the_cap(graded):
    graded["reward"] = improve.rewards(graded, "correct").to_numpy()
    assert _kept(improve.select(graded, 0.5, max_per_problem=2, dedupe=True)) == [("a", 0), ("a", 3), ("c", 0)]


def test_rising_thresholds_on_the_partial_reward(graded):
    graded["reward"] = improve.rewards(graded, "partial", partial_credit=0.2).to_numpy()
    assert list(graded["reward"]) == [1.0, 0.2, 1.0, 1.0, 0.0, 0.2, 1.0]
    # ReST's first Improve step (tau=0.1) keeps every answered sample, highest reward first per problem ...
    assert _kept(improve.select(graded, 0.1, max_per_problem=3)) == [("a", 0), ("a", 2), ("a", 3), ("b", 1), ("c", 0)]
    # ... the next (tau=0.5) only the correct ones; the threshold is strict (reward > tau).
    assert _kept(improve.select(graded, 0.5)) == [("a", 0), ("a", 2), ("a", 3), ("c", 0)]
    assert _kept(improve.select(graded, 1.0)) == []


def test_step_check_drops_a_right_answer_reached_through_a_wrong_step():
    rows = [("p", 0, "12 + 30 = 42\n42 * 2 = 84\nThe answer is 84.", True),
            ("p", 1, "12 + 30 = 40\n40 * 2 = 84\nThe answer is 84.", True),  # right answer, wrong line
            ("p", 2, "12 + 30 = 42\nThe answer is 42.", False),
            ("q", 0, "7 / 2 = 3\nThe answer is 3.", True)]  # exact arithmetic: 7 / 2 is not 3
    graded = pd.DataFrame(rows, columns=["problem_id", "index", "text", "correct"])
    graded["reward"] = improve.rewards(graded, "correct").to_numpy()
    assert _kept(improve.select(graded, 0.5)) == [("p", 0), ("p", 1), ("q", 0)]
    assert _kept(improve.select(graded, 0.5, step_check=True)) == [("p", 0)]
    data, kept = improve.training_data(graded, {"p": "P", "q": "Q"}, [], 0.5, None, False, 0.0, None, seed=0,
                                       step_check=True)
    assert len(data) == 1 and data.provenance["right_answer_wrong_steps"] == 2


def test_control_arm_has_a_reference_per_kept_sample():
    problems = [Problem(id=f"p{i}", question=f"q{i}", answer=str(i), solution=f"{i} + 0 = {i}\nThe answer is {i}.",
                        dataset="gsm8k") for i in range(3)]
    kept = pd.DataFrame({"problem_id": ["p0", "p0", "p2"], "index": [0, 3, 1], "text": ["a", "b", "c"]})
    data = improve.control_data(kept, {p.id: f"prompt {p.id}" for p in problems}, problems, "the_answer_is")
    assert [r["problem_id"] for r in data.records] == ["p0", "p0", "p2"]  # as many examples: equal optimizer steps
    assert data.records[2]["completion"] == "2 + 0 = 2\nThe answer is 2."  # the ladder's own answer sentence, once
    assert {r["source"] for r in data.records} == {"reference"}
    with pytest.raises(ConfigError, match="control"):
        improve.control_data(kept.assign(problem_id="zz"), {}, problems, None)


def test_control_claims_are_paired_over_the_same_problems():
    from replications.rest.analysis import Scores, check_claims

    n = 400
    base = np.zeros(n)
    base[:100] = 1  # 25%
    control = base.copy()
    control[100:120] = 1  # 30%
    first = base.copy()
    first[100:200] = 1  # 50%
    per_iter = {0: Scores(base, {}, {}, n), 1: Scores(first, {}, {}, n)}
    claims = {c.name: c for c in check_claims(per_iter, [1], 500, 0, control=Scores(control, {}, {}, n))}
    assert claims["Iteration 1 improves test accuracy over the base model"].status == "holds"
    assert claims["The equal-steps control (reference solutions of the same problems) improves over the base model"].status == "holds"
    vs_control = claims["Iteration 1 improves over the equal-steps reference control (self-generated vs reference data)"]
    assert vs_control.status == "holds" and vs_control.n == n
    worse = {c.name: c for c in check_claims({0: Scores(first, {}, {}, n), 1: Scores(base, {}, {}, n)}, [1], 500, 0)}
    assert worse["Iteration 1 improves test accuracy over the base model"].status == "fails"


# ---- Improve: reference mix ------------------------------------------------------------------------

def _problems(n):
    return [Problem(id=f"p{i}", question=f"q{i}", answer=str(i), solution=f"sol {i}", dataset="gsm8k") for i in range(n)]


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.25, 0.5])
def test_reference_mix_has_the_configured_ratio(fraction):
    problems = _problems(40)
    prompts = {p.id: f"prompt {p.id}" for p in problems}
    samples = pd.DataFrame({"problem_id": [f"p{i % 12}" for i in range(12)], "index": [0] * 12,
                            "text": [f"s{i}" for i in range(12)], "correct": [True] * 12, "extracted": ["1"] * 12})
    samples["reward"] = 1.0
    data, kept = improve.training_data(samples, prompts, problems, 0.5, None, False, fraction, "boxed", seed=0)
    counts = data.counts("source")
    refs = counts.get("reference", 0)
    assert counts["sample"] == len(kept) == 12
    assert refs / len(data) == pytest.approx(fraction)
    assert data.provenance["references"] == refs
    for r in data.records:
        if r["source"] == "reference":
            assert r["completion"].endswith(f"\\boxed{{{r['problem_id'][1:]}}}$.")  # the prompt's answer format
            assert r["prompt"] == prompts[r["problem_id"]]


def test_reference_mix_is_capped_by_the_problems_available():
    problems = _problems(3)
    samples = pd.DataFrame({"problem_id": ["p0"] * 4, "index": range(4), "text": list("abcd"), "correct": [True] * 4,
                            "extracted": ["0"] * 4, "reward": [1.0] * 4})
    data, _ = improve.training_data(samples, {p.id: p.id for p in problems}, problems, 0.5, None, False, 0.75, None, 0)
    assert data.provenance["references_wanted"] == 12 and data.provenance["references"] == 3


def test_reference_completion_formats():
    p = Problem(id="x", question="q", answer="42", solution="6*7=42", dataset="gsm8k")
    assert improve.reference_completion(p, "gsm8k_hashes").endswith("#### 42")
    assert improve.reference_completion(p, "the_answer_is").endswith("The answer is 42.")
    m = Problem(id="y", question="q", answer="\\frac12", solution="so $\\boxed{\\frac12}$", dataset="math")
    assert improve.reference_completion(m, "boxed") == m.solution


# ---- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,key", [
    ("rest.algorithm=ppo", "rest.algorithm"),
    ("rest.thresholds=[0.5,0.1]", "rest.thresholds"),
    ("rest.thresholds=[0.1,0.5]", "rest.thresholds"),  # ReST-EM has a single Improve step
    ("rest.reference_fraction=1.0", "rest.reference_fraction"),
    ("rest.eval.samples=4 rest.eval.ks=[1,64]", "rest.eval.ks"),
    ("+rest.training.learnin_rate=1e-5", "rest.training.learnin_rate"),
    ("rest.training.learning_rate=-1", "training.learning_rate"),
    ("rest.iterations=zero", "rest.iterations"),
])
def test_bad_rest_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        rest_settings(_compose(override.split()))


PRESETS = sorted(p.stem for p in (CONF_DIR / "rest").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates_under_rest(preset):
    """conf/rest/default.yaml is the one source of defaults: every preset gives every key under `rest`
    (a preset that put them elsewhere would fail here, not fall back to a schema default)."""
    cfg = _compose([f"rest={preset}"])
    s = rest_settings(cfg)
    assert s.name == preset
    assert not {"algorithm", "thresholds", "eval", "fail_at"} & set(cfg.keys())  # nothing leaked to the top level
    default = _compose([])
    assert set(cfg.rest.keys()) == set(default.rest.keys()) and set(cfg.rest.eval.keys()) == set(default.rest.eval.keys())


def test_the_schema_has_no_defaults_of_its_own():
    from dataclasses import fields

    from omegaconf import MISSING

    from replications.rest.config import EvalSettings, RestSettings

    for schema in (RestSettings, EvalSettings):
        assert [f.name for f in fields(schema) if f.default is not MISSING] == [], schema.__name__
    cfg = _compose([])
    OmegaConf.set_struct(cfg, False)
    del cfg.rest.eval["sampling"]
    with pytest.raises(ConfigError, match=r"rest\.eval\.sampling"):
        rest_settings(cfg)


def test_the_default_is_the_ladder_with_the_warm_start():
    from replications.rest.config import improve_training

    cfg = _compose([])
    s = rest_settings(cfg)
    assert (cfg.model.name, cfg.dataset.name, cfg.train_dataset.name, cfg.prompt.name) == (
        "smollm2_135m_sft", "ladder", "ladder_train", "ladder")
    assert cfg.grader.mode == "strict" and s.step_check and s.control and s.algorithm == "rest_em"
    assert not set(cfg.dataset.levels) & {1, 2, 3}  # the warm start trained on levels 1-3: ReST grows elsewhere
    assert cfg.dataset.ladder == cfg.train_dataset.ladder  # one generator config: train excludes every test question
    training = improve_training(cfg)
    assert training.learning_rate <= 1e-4 and training.name == cfg.training.name


def test_paper_scale_configs_compose():
    for name, model, dataset, train in [("paper_math", "mistral_7b", "math", "math_train"),
                                        ("paper_gsm8k", "mistral_7b", "gsm8k", "gsm8k_train")]:
        cfg = _compose([f"rest={name}"])
        s = rest_settings(cfg)
        assert (cfg.model.name, cfg.dataset.name, cfg.train_dataset.name) == (model, dataset, train)
        assert (s.algorithm, s.iterations, s.samples_per_problem, s.max_per_problem) == ("rest_em", 3, 32, 10)
        assert (cfg.sampling.temperature, cfg.sampling.top_k) == (0.7, 40)
        assert cfg.training.precision == "bf16" and cfg.dataset.limit is None
    old = _compose(["rest=gsm8k"])  # the former default, one override away
    s = rest_settings(old)
    assert (old.model.name, old.dataset.name, old.dataset.limit, old.train_dataset.limit) == ("smollm2_135m", "gsm8k", 40, 48)
    assert (s.iterations, s.samples_per_problem, s.step_check, s.control, s.training) == (2, 16, False, False, None)
    gul = rest_settings(_compose(["rest=rest_gulcehre"]))
    assert gul.algorithm == "rest" and gul.thresholds == [0.1, 0.5] and gul.reference_fraction > 0


# ---- the loop: an interrupted run resumes where it stopped ---------------------------------------------

TINY_RUN = [
    "model=tiny_random", "dataset.limit=2", "train_dataset.limit=3", "rest.samples_per_problem=2", "rest.iterations=2",
    "sampling.max_new_tokens=6", "rest.eval.samples=2", "rest.eval.ks=[1,2]", "rest.eval.greedy_max_new_tokens=6",
    "rest.eval.sampling.max_new_tokens=6",
    "rest.thresholds=[-1]",  # random weights answer nothing correctly: keep every sample so that training happens
    "training.epochs=1", "training.measure_loss=false", "progress=false", "grader.workers=1",
    "rest.training.warmup=0", "rest.training.lr_scheduler=constant",  # one optimizer step: warm-up would make it lr 0
]


@pytest.mark.slow
def test_interrupted_run_resumes_at_the_stage_where_it_stopped(tmp_path, monkeypatch):
    import harness.pipeline.iterated as iterated
    import harness.sampling.factory as factory
    from harness.reporting.run import start_run
    from harness.training import load_checkpoint
    from replications.rest import loop, report

    drawn, trained = [], []
    real_make, real_train = factory.make_sampler, iterated.train_sft

    def counting_make(backend, model):
        sampler = real_make(backend, model)
        real_sample = sampler.sample

        def sample(requests, params):
            for c in real_sample(requests, params):
                drawn.append((model.identity, c.key, c.index, params.temperature))
                yield c
        sampler.sample = sample
        return sampler

    def counting_train(*args, **kwargs):
        trained.append(str(args[4]))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(factory, "make_sampler", counting_make)
    monkeypatch.setattr(iterated, "train_sft", counting_train)
    monkeypatch.chdir(tmp_path)
    overrides = TINY_RUN + [f"store.root={tmp_path / 'store'}", "run_name=resume"]
    run_dir = tmp_path / "results" / "rest" / "resume"

    cfg = _compose(overrides + ["rest.fail_at=improve/2.1"])
    with pytest.raises(loop.StageFailure):
        loop.setup(cfg, start_run(cfg, "rest", run_dir)).run_all()
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert [k for k in ledger if k != "config"] == ["eval/0", "grow/1", "improve/1.1", "eval/1", "control/1",
                                                    "eval/control1", "grow/2"]
    assert len(trained) == 2  # iteration 1 and its control arm
    first_ckpt = Path("results/rest/resume/checkpoints/iter1")
    assert (first_ckpt / "training.json").is_file() and not Path("results/rest/resume/checkpoints/iter2").exists()
    stamp = (first_ckpt / "model.safetensors").stat().st_mtime_ns
    first_drawn = len(drawn)
    # test: 2 problems x (1 greedy + 2 sampled) per eval, 3 evals (base, iteration 1, control); grow: 3 x 2, twice
    assert first_drawn == 3 * (2 * 3) + 2 * (3 * 2)
    control = ledger["control/1"]
    assert control["init"] == {"kind": "base"} and control["examples"] == ledger["improve/1.1"]["kept_samples"]
    assert control["by_source"] == {"reference": control["examples"]}

    # A changed config may not reuse this run's ledger.
    changed = _compose(overrides + ["training.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="run_name"):
        loop.setup(changed, start_run(changed, "rest", run_dir))

    drawn.clear()
    cfg = _compose(overrides)
    steps = loop.setup(cfg, start_run(cfg, "rest", run_dir))
    results = steps.run_all()
    assert len(trained) == 3  # only iteration 2 was trained on resume
    assert (first_ckpt / "model.safetensors").stat().st_mtime_ns == stamp  # the finished checkpoint was not redone
    assert len(drawn) == 2 * 3  # only eval/2 sampled: grow/2's samples came from the store
    second = load_checkpoint(results["improves"]["2.1"]["checkpoint"]).load().identity
    assert {d[0] for d in drawn} == {second} and results["evals"][2]["model"] == second
    assert second not in (results["evals"][0]["model"], results["evals"][1]["model"])
    # ReST-EM: both iterations start from the base model; iteration 2's data was sampled by iteration 1's policy.
    assert results["improves"]["2.1"]["init"] == {"kind": "base"}
    assert results["grows"][2]["model"] == results["evals"][1]["model"] == load_checkpoint(first_ckpt).load().identity

    path = report.write(steps.run, steps, results, cfg)
    text = path.read_text()
    assert "Test accuracy per iteration" in text and "INCONCLUSIVE" in text.upper()
    assert "control (references, equal steps)" in text and "reference control" in text
    for name in ("accuracy_per_iteration.png", "accuracy_per_iteration.csv", "grow_coverage.png", "stage_costs.csv",
                 "control_arm.csv", "accuracy_per_level.csv"):
        assert (run_dir / name).is_file(), name
    acc = pd.read_csv(run_dir / "accuracy_per_iteration.csv")
    assert sorted(acc["iteration"].unique()) == [0, 1, 2]
