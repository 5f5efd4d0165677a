"""Large Language Monkeys end to end: a tiny random model in seconds, the real SmolLM2 on a handful of problems,
and the command line's one-line errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.sampling import fast as fast_module

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").exists(), reason="no local GSM8K copy")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_monkeys(tmp_path, *overrides, timeout=900):
    env = {**os.environ, **OFFLINE, "LLMREP_STORE": str(tmp_path / "store")}
    cmd = [sys.executable, "-m", "replications.monkeys", f"hydra.run.dir={tmp_path / 'run'}", "progress=false",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


TINY = ["model=tiny_random", "samples=8", "dataset.limit=4", "sampling.max_new_tokens=12",
        "monkeys.greedy_baseline.enabled=false", "monkeys.ladder.model=tiny_random", "monkeys.ladder.levels=[1,2]",
        "monkeys.ladder.problems_per_level=2", "monkeys.ladder.samples=4", "monkeys.ladder.max_new_tokens=8"]
LADDER_SAMPLES = 2 * 2 * 4  # levels x problems per level x samples


@needs_data
def test_tiny_model_end_to_end_writes_figures_report_and_resumes(tmp_path):
    out = run_monkeys(tmp_path, *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    for name in ["report.md", "coverage.png", "coverage.csv", "selection.png", "selection.csv", "config.yaml",
                 "provenance.json", "per_problem.csv", "stages.json", "ladder_coverage.png", "ladder_coverage.csv",
                 "ladder_fit.csv", "ladder_per_problem.csv"]:
        assert (run / name).exists(), name
    cov = pd.read_csv(run / "coverage.csv")
    assert list(cov["k"]) == [1, 2, 4, 8]
    assert cov["coverage"].between(0, 1).all() and (cov["n_problems"] == 4).all()
    assert (cov["coverage"].diff().dropna() >= -1e-12).all()  # coverage never falls with k
    ladder = pd.read_csv(run / "ladder_coverage.csv")
    assert sorted(set(ladder["level"])) == [1, 2] and list(ladder[ladder["level"] == 1]["k"]) == [1, 2, 4]
    assert (ladder["n_problems"] == 2).all()
    report = (run / "report.md").read_text()
    assert "(n=4)" in report and "published" in report.lower()
    assert "per ladder level" in report and "every ladder level" in report
    draws = json.loads((run / "draws.json").read_text())
    assert draws and all(d["sampler"].startswith("hf (matmul_dtype float32") for d in draws.values())  # what drew them
    kernel = fast_module.resolve_matmul_kernel("auto")
    assert all(d["sampler"].endswith(f"matmul_kernel {kernel})") for d in draws.values())  # and with which products
    assert "hf (matmul_dtype float32" in report
    prov = json.loads((run / "provenance.json").read_text())
    assert len(prov["data"]["sha256"]) == 64
    assert prov["ladder_data"]["selected"] == 4 and prov["ladder_data"]["selection"]["per_level"] == 2
    store_files = list((tmp_path / "store").rglob("samples.*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in store_files) == 4 * 8 + LADDER_SAMPLES

    # asking for more samples draws only the difference; the first 8 are kept as they were
    before = {f: f.read_text() for f in store_files}
    out = run_monkeys(tmp_path, *[o if not o.startswith("samples=") else "samples=16" for o in TINY])
    assert out.returncode == 0, out.stderr[-3000:]
    for f, text in before.items():
        assert f.read_text().startswith(text)
    all_files = list((tmp_path / "store").rglob("samples.*.jsonl"))  # each process writes its own file
    assert sum(len(f.read_text().splitlines()) for f in all_files) == 4 * 16 + LADDER_SAMPLES


@pytest.mark.parametrize("override,named", [
    ("model=no_such_model", "model/no_such_model"),
    ("monkeys.ladder.model=no_such_model", "monkeys.ladder.model"),
    ("monkeys.ladder.levels=[1,9]", "monkeys.ladder.levels"),
    ("monkeys.ladder.dataset=gsm8k", "monkeys.ladder.dataset"),
    ("monkeys.ladder.samples=0", "monkeys.ladder.samples"),
    ("samplng.temperature=1", "samplng"),
    ("dataset=no_such_dataset", "dataset/no_such_dataset"),
])
def test_bad_config_is_one_line_naming_it(tmp_path, override, named):
    out = run_monkeys(tmp_path, override, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and named in lines[0]


def test_missing_data_root_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    out = run_monkeys(tmp_path, *TINY, f"data.root={missing}", timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip() and line.startswith("error:")]
    assert len(lines) == 1 and str(missing) in lines[0], out.stderr[-2000:]


def test_malformed_jsonl_row_is_one_line_naming_file_and_line(tmp_path):
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    good = json.dumps({"question": "1+1?", "answer": "2\n#### 2"})
    (root / "gsm8k" / "test.jsonl").write_text(good + "\n{not json\n")
    out = run_monkeys(tmp_path, *TINY, f"data.root={root}", timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "test.jsonl:2" in lines[0], out.stderr[-2000:]


@pytest.mark.slow
@needs_data
def test_real_smollm2_on_a_handful_of_problems(tmp_path):
    # the ladder part with the run's own model: the SFT warm start would be trained first (~15-25 min on 2
    # cores) in a checkout that has none cached, which is not a test's job (tests/test_warm_start.py covers it)
    out = run_monkeys(tmp_path, "samples=4", "dataset.limit=3", "sampling.max_new_tokens=96",
                      "monkeys.greedy_baseline.limit=2", "monkeys.greedy_baseline.max_new_tokens=64",
                      "monkeys.ladder.model=smollm2_135m", "monkeys.ladder.levels=[1,5]",
                      "monkeys.ladder.problems_per_level=2", "monkeys.ladder.samples=4", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    cov = pd.read_csv(run / "coverage.csv")
    assert list(cov["k"]) == [1, 2, 4] and (cov["n_problems"] == 3).all()
    assert {"coverage_strict", "coverage_lenient"} <= set(cov.columns)
    greedy = json.loads((run / "greedy_baseline.json").read_text())
    assert greedy["ours"]["n"] == 2 and greedy["lm_eval"]["n"] == 2
    ladder = pd.read_csv(run / "ladder_coverage.csv")
    assert sorted(set(ladder["level"])) == [1, 5] and (ladder["n_problems"] == 2).all()
    texts = [json.loads(line)["text"] for f in (tmp_path / "store").rglob("samples.*.jsonl")
             for line in f.read_text().splitlines()]
    assert len(texts) == 3 * 4 + 2 + 2 * 2 * 4 and sum(len(t) > 20 for t in texts) >= 10  # the real model writes text


class LengthRewardModel:
    """A stand-in reward model: prefers longer solutions (deterministic, no weights)."""

    name = "length"

    def __init__(self):
        self.calls = 0

    def score(self, questions, texts, aggregation=None):
        self.calls += len(texts)
        return [len(t) / 100.0 for t in texts]


def test_reward_model_scores_are_cached_and_drive_rm_selection(tmp_path):
    from omegaconf import OmegaConf

    from harness.data.problems import Problem
    from harness.grading.graded import reward_scores
    from harness.sampling.base import SamplingParams
    from harness.store.samples import SampleStore
    from replications.monkeys.analysis import analyse

    entry = SampleStore(tmp_path).entry("m@x", "sha", "p", "fp", SamplingParams())
    problems = [Problem(f"q{i}", f"question {i}", "1", "", "gsm8k", {}) for i in range(3)]
    # per problem: the longest sample is the correct one, so RM best-of-k beats majority vote
    rows = [{"problem_id": f"q{i}", "index": j, "text": "x" * (50 if j == 0 else 5), "correct": j == 0,
             "vote_answer": "1" if j == 0 else "2"} for i in range(3) for j in range(4)]
    graded = pd.DataFrame(rows)
    rm = LengthRewardModel()
    scored = reward_scores(entry, graded, problems, rm)
    assert rm.calls == 12 and list(scored["scores"][:2]) == [0.5, 0.05]
    again = reward_scores(entry, graded, problems, rm)
    assert rm.calls == 12 and again["scores"].equals(scored["scores"])  # read back from the store sidecar

    cfg = OmegaConf.load(ROOT / "conf" / "monkeys" / "default.yaml")
    res = analyse(scored, OmegaConf.create({"monkeys": cfg}))
    sel = res.selection.set_index(["method", "k"])["value"]
    assert set(res.selection["method"]) == {"majority_vote", "rm_best_of_k", "rm_weighted_vote"}
    assert sel[("rm_best_of_k", 4)] == pytest.approx(1.0)
    assert sel[("majority_vote", 4)] == pytest.approx(0.0)


def _graded(strict_and_lenient: bool):
    # 3 problems x 4 samples; lenient grading accepts one more sample per problem than strict
    rows = []
    for i in range(3):
        for j in range(4):
            row = {"problem_id": f"q{i}", "index": j, "text": "t", "vote_answer": str(j), "correct": j == 0}
            if strict_and_lenient:
                row.update(correct_strict=j == 0 and i == 0, correct_lenient=j in (0, 1))
            rows.append(row)
    return pd.DataFrame(rows)


def test_coverage_under_strict_and_lenient_grading_side_by_side():
    from omegaconf import OmegaConf

    from replications.monkeys.analysis import analyse, check_claims
    from replications.monkeys.report import coverage_frame

    cfg = OmegaConf.create({"monkeys": OmegaConf.load(ROOT / "conf" / "monkeys" / "default.yaml"),
                            "dataset": {"name": "gsm8k"}})
    res = analyse(_graded(True), cfg)
    assert set(res.coverage_by_verdict) == {"strict", "lenient"}
    cov = coverage_frame(res).set_index("k")
    assert cov.loc[1, "coverage"] == pytest.approx(0.25)  # the configured verdict
    assert cov.loc[1, "coverage_strict"] == pytest.approx(1 / 12)
    assert cov.loc[1, "coverage_lenient"] == pytest.approx(0.5)
    assert cov.loc[4, "coverage_lenient"] == 1.0 and cov.loc[4, "coverage_strict"] == pytest.approx(1 / 3)
    assert list(res.per_problem["c_strict"]) == [1, 0, 0]

    plain = analyse(_graded(False), cfg)
    assert plain.coverage_by_verdict == {} and "coverage_strict" not in coverage_frame(plain)
    claims = check_claims(plain, cfg)
    shown = " ".join(str(v) for c in claims for v in c.__dict__.values())
    assert "n=3" in shown and "Llama-3-8B-Instruct" in shown  # our numbers and the paper's, with its model


def test_fit_claim_thresholds_come_from_the_config():
    from omegaconf import OmegaConf

    from harness.selection.scaling_fit import FitResult
    from replications.monkeys.analysis import analyse, check_claims

    cfg = OmegaConf.create({"monkeys": OmegaConf.load(ROOT / "conf" / "monkeys" / "default.yaml")})
    res = analyse(_graded(False), cfg)
    res.fit = FitResult(**{**res.fit.__dict__, "r2_log": 0.9}) if res.fit else None
    if res.fit is None:
        pytest.skip("no fit on this toy data")
    status = {c.name: c.status for c in check_claims(res, cfg)}
    fit_claim = next(n for n in status if "power law" in n)
    assert status[fit_claim] == "inconclusive"  # between 0.8 and 0.95
    cfg.monkeys.claims.fit_r2_holds = 0.85
    assert {c.name: c.status for c in check_claims(res, cfg)}[fit_claim] == "holds"


def _ladder_draw(correct_by_level):
    """A LadderDraw whose problem p of level L has samples graded `correct_by_level[L][p]` (a list of bools)."""
    from harness.data.problems import Problem, ProblemSet
    from harness.pipeline.experiment import BASE
    from replications.monkeys.analysis import LadderDraw

    problems, rows = [], []
    for level, per_problem_ in correct_by_level.items():
        for i, verdicts in enumerate(per_problem_):
            pid = f"ladder/test/L{level}/{i}"
            problems.append(Problem(pid, "q", "1", "", "gsm8k", {"level": level}))
            rows += [{"problem_id": pid, "index": j, "text": "t", "vote_answer": "1", "correct": ok,
                      "correct_strict": ok, "correct_lenient": True} for j, ok in enumerate(verdicts)]
    problem_set = ProblemSet("ladder", "test", problems, "generated", "0" * 64)
    return LadderDraw(pd.DataFrame(rows), problem_set, BASE, "tiny", "m@x")


def _monkeys_cfg():
    from omegaconf import OmegaConf

    return OmegaConf.create({"monkeys": OmegaConf.load(ROOT / "conf" / "monkeys" / "default.yaml"),
                             "grader": {"mode": "strict"}})


def test_ladder_coverage_per_level_and_its_claim():
    from replications.monkeys.analysis import analyse_ladder, ladder_claim

    rising = [[True, False, False, False], [False, True, False, False], [False, False, False, True]]
    draw = _ladder_draw({1: [[True] * 4] * 3, 2: rising, 7: [[False] * 4] * 3})
    ladder = analyse_ladder(draw, _monkeys_cfg())
    cov = ladder.coverage_frame().set_index(["level", "k"])["coverage"]
    assert cov[(2, 1)] == pytest.approx(0.25) and cov[(2, 4)] == pytest.approx(1.0)
    assert cov[(1, 1)] == 1.0 and cov[(7, 4)] == 0.0
    assert list(ladder.per_problem.columns[:4]) == ["problem_id", "level", "n", "c"]
    assert list(ladder.per_problem["c_lenient"]) == [4] * 9
    by_level = {lv.level: lv for lv in ladder.levels}
    assert by_level[1].fit is None and "nothing left to fit" in by_level[1].fit_error  # ceiling: no law
    assert by_level[7].fit is None  # floor
    c = ladder_claim(ladder, " (strict grading)")
    # level 2 rises with CIs apart; levels 1 and 7 cannot move at this k, so they are named, not counted
    assert c.status == "holds" and "levels [1, 7]" in c.evidence and "strict grading" in c.name

    flat = [[True] * 4, [False] * 4]  # one problem always solved, one never: coverage does not rise
    ladder = analyse_ladder(_ladder_draw({2: rising, 3: flat}), _monkeys_cfg())
    assert ladder_claim(ladder).status == "fails"


def test_ladder_model_is_a_policy_of_the_run(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    import harness.training.warm_start as warm_start
    from harness.errors import ConfigError
    from harness.pipeline.experiment import BASE, Policy
    from replications.monkeys.analysis import ladder_policy

    trained = []
    monkeypatch.setattr(warm_start, "warm_start_checkpoint", lambda cfg: trained.append(cfg.name) or tmp_path)

    def cfg(ladder_model):
        return OmegaConf.create({"model": {"name": "tiny_random"}, "monkeys": {"ladder": {"model": ladder_model}}})

    assert ladder_policy(cfg("tiny_random")) == BASE and not trained
    assert ladder_policy(cfg("smollm2_135m_sft_tiny")) == Policy.checkpoint(tmp_path)
    assert trained == ["smollm2_135m_sft_tiny"]
    with pytest.raises(ConfigError, match="monkeys.ladder.model"):
        ladder_policy(cfg("pythia_70m"))  # a second base model is not a policy of this run
