"""Large Language Monkeys end to end: a tiny random model in seconds, the real SmolLM2 on a handful of problems,
and the command line's one-line errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
        "monkeys.greedy_baseline.enabled=false"]


@needs_data
def test_tiny_model_end_to_end_writes_figures_report_and_resumes(tmp_path):
    out = run_monkeys(tmp_path, *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    for name in ["report.md", "coverage.png", "coverage.csv", "selection.png", "selection.csv", "config.yaml",
                 "provenance.json", "per_problem.csv", "stages.json"]:
        assert (run / name).exists(), name
    cov = pd.read_csv(run / "coverage.csv")
    assert list(cov["k"]) == [1, 2, 4, 8]
    assert cov["coverage"].between(0, 1).all() and (cov["n_problems"] == 4).all()
    assert (cov["coverage"].diff().dropna() >= -1e-12).all()  # coverage never falls with k
    report = (run / "report.md").read_text()
    assert "(n=4)" in report and "published" in report.lower()
    prov = json.loads((run / "provenance.json").read_text())
    assert len(prov["data"]["sha256"]) == 64
    store_files = list((tmp_path / "store").rglob("samples.*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in store_files) == 4 * 8

    # asking for more samples draws only the difference; the first 8 are kept as they were
    before = {f: f.read_text() for f in store_files}
    out = run_monkeys(tmp_path, *[o if not o.startswith("samples=") else "samples=16" for o in TINY])
    assert out.returncode == 0, out.stderr[-3000:]
    for f, text in before.items():
        assert f.read_text().startswith(text)
    all_files = list((tmp_path / "store").rglob("samples.*.jsonl"))  # each process writes its own file
    assert sum(len(f.read_text().splitlines()) for f in all_files) == 4 * 16


@pytest.mark.parametrize("override,named", [
    ("model=no_such_model", "model/no_such_model"),
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
    out = run_monkeys(tmp_path, "samples=4", "dataset.limit=3", "sampling.max_new_tokens=96",
                      "monkeys.greedy_baseline.limit=2", "monkeys.greedy_baseline.max_new_tokens=64")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    cov = pd.read_csv(run / "coverage.csv")
    assert list(cov["k"]) == [1, 2, 4] and (cov["n_problems"] == 3).all()
    greedy = json.loads((run / "greedy_baseline.json").read_text())
    assert greedy["ours"]["n"] == 2 and greedy["lm_eval"]["n"] == 2
    texts = [json.loads(line)["text"] for f in (tmp_path / "store").rglob("samples.*.jsonl")
             for line in f.read_text().splitlines()]
    assert len(texts) == 3 * 4 + 2 and sum(len(t) > 20 for t in texts) >= 10  # the real model writes text


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
