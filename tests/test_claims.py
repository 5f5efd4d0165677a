"""claims.json (the report's verdicts, machine-readable) and the results/README.md front page built from them."""
import json

import pytest

from harness.errors import DataError
from harness.reporting import front_page
from harness.reporting.claims import CLAIMS_FILE, Claim, RunClaims, read_claims, write_claims
from harness.reporting.report import Report

CONFIG = "paper: monkeys\nrun_name: tiny-n4\nmodel:\n  name: tiny_random\ndataset:\n  name: ladder\n"


def _claims():
    return [
        Claim("Coverage grows with k", "holds", "pass@4 - pass@1 = 0.2 [0.1, 0.3]", 40, "30.0% [20.0, 40.0] (n=40)",
              "95.7% (Llama-3-8B-Instruct, k=10000; blog)"),
        Claim("The power law fits", "inconclusive", "no fit"),  # the three positional fields still suffice
    ]


def _write_report_in_run(run_dir, **metadata):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(CONFIG)
    rep = Report("T", **metadata)
    rep.finish(_claims(), {"sample": 1.0})
    return rep.write(run_dir / "report.md")


def test_report_writes_claims_json_beside_report_and_it_reads_back(tmp_path):
    report = _write_report_in_run(tmp_path / "run")
    path = report.parent / CLAIMS_FILE
    back = read_claims(path)
    assert back == RunClaims("monkeys", "tiny-n4", "tiny_random", "ladder", tuple(_claims()))
    raw = json.loads(path.read_text())
    assert raw["claims"][0] == {"claim": "Coverage grows with k", "verdict": "holds",
                                "evidence": "pass@4 - pass@1 = 0.2 [0.1, 0.3]", "n": 40,
                                "ours": "30.0% [20.0, 40.0] (n=40)", "published": "95.7% (Llama-3-8B-Instruct, k=10000; blog)"}
    assert raw["claims"][1]["n"] is None and raw["claims"][1]["verdict"] == "inconclusive"
    text = report.read_text()  # the report prints the verdicts the file holds
    assert "| Coverage grows with k | HOLDS | 40 | 30.0% [20.0, 40.0] (n=40) |" in text
    assert "| The power law fits | INCONCLUSIVE |" in text
    assert sorted(p.name for p in report.parent.iterdir()) == ["claims.json", "config.yaml", "report.md"]  # no tmp left


def test_report_metadata_given_explicitly_wins_over_the_config(tmp_path):
    report = _write_report_in_run(tmp_path / "run", dataset="gsm8k_train->gsm8k")
    back = read_claims(report.parent / CLAIMS_FILE)
    assert (back.paper, back.run, back.model, back.dataset) == ("monkeys", "tiny-n4", "tiny_random", "gsm8k_train->gsm8k")


def test_report_without_claims_section_writes_no_claims_json(tmp_path):
    Report("T").text("body").write(tmp_path / "report.md")
    assert not (tmp_path / CLAIMS_FILE).exists()


def test_claim_validates_verdict_n_and_text_fields():
    with pytest.raises(ValueError, match="maybe"):
        Claim("x", "maybe", "")
    with pytest.raises(ValueError, match="n"):
        Claim("x", "holds", "", n=-1)
    with pytest.raises(ValueError, match="n"):
        Claim("x", "holds", "", n=2.5)
    with pytest.raises(ValueError, match="ours"):
        Claim("x", "holds", "", ours=0.5)
    np = pytest.importorskip("numpy")
    assert Claim("x", "holds", "", n=np.int64(7)).to_json()["n"] == 7  # JSON-serialisable after numpy counts


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["claims"][1].update(verdict="maybe"), "claims[1].verdict"),
    (lambda d: d["claims"][0].update(verdict="HOLDS"), "claims[0].verdict"),
    (lambda d: d["claims"][0].update(n=-3), "claims[0].n"),
    (lambda d: d["claims"][0].update(n=True), "claims[0].n"),
    (lambda d: d["claims"][0].update(n="40"), "claims[0].n"),
    (lambda d: d["claims"][0].pop("evidence"), "claims[0].evidence"),
    (lambda d: d["claims"][0].update(ours=0.3), "claims[0].ours"),
    (lambda d: d["claims"][0].update(claim=""), "claims[0].claim"),
    (lambda d: d.pop("paper"), "paper"),
    (lambda d: d.update(model=3), "model"),
    (lambda d: d.update(claims={"a": 1}), "claims"),
])
def test_malformed_claims_json_is_a_one_line_error_naming_file_and_field(tmp_path, mutate, field):
    path = write_claims(tmp_path / CLAIMS_FILE, RunClaims("monkeys", "r", "m", "d", tuple(_claims())))
    raw = json.loads(path.read_text())
    mutate(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError) as e:
        read_claims(path)
    message = str(e.value)
    assert str(path) in message and f" {field} " in message and "\n" not in message


def test_claims_file_that_is_not_json_or_not_an_object_is_a_data_error(tmp_path):
    path = tmp_path / CLAIMS_FILE
    path.write_text('{"paper": "monkeys",')
    with pytest.raises(DataError, match="not valid JSON"):
        read_claims(path)
    path.write_text("[]")
    with pytest.raises(DataError, match="top level"):
        read_claims(path)


def _fake_results(root):
    """Two runs: monkeys with claims.json, a report and figures; rest with only a report (an older run)."""
    mk = root / "monkeys" / "tiny-n4"
    mk.mkdir(parents=True)
    (mk / "report.md").write_text("# monkeys\n")
    (mk / "selection.png").write_bytes(b"png")
    (mk / "coverage.png").write_bytes(b"png")
    write_claims(mk / CLAIMS_FILE, RunClaims("monkeys", "tiny-n4", "tiny_random", "ladder", tuple(_claims())))
    rest = root / "rest" / "old run"
    rest.mkdir(parents=True)
    (rest / "report.md").write_text("# rest\n")
    (rest / "config.yaml").write_text("paper: rest\nrun_name: old run\nmodel: {name: smollm2_135m}\ndataset: {name: gsm8k}\n")
    (root / "published").mkdir()
    (root / "published" / "monkeys.yaml").write_text("paper: 'Large Language Monkeys'\narxiv: '2407.21787'\n")
    (root / "published" / "README.md").write_text("not a run\n")
    (root / "store" / "x").mkdir(parents=True)
    (root / "store" / "x" / "report.md").write_text("not a run either\n")
    return root


def test_front_page_lists_every_claim_and_every_run_with_relative_links(tmp_path):
    root = _fake_results(tmp_path / "results")
    lines = front_page.render(root).splitlines()
    assert ("| monkeys | tiny_random | ladder | Coverage grows with k | HOLDS | 30.0% [20.0, 40.0] (n=40) | "
            "95.7% (Llama-3-8B-Instruct, k=10000; blog) | [report](monkeys/tiny-n4/report.md) |") in lines
    assert "| monkeys | tiny_random | ladder | The power law fits | INCONCLUSIVE |  |  | [report](monkeys/tiny-n4/report.md) |" in lines
    assert ("| rest | smollm2_135m | gsm8k | no claims.json (rerun to regenerate) |  |  |  | "
            "[report](rest/old%20run/report.md) |") in lines
    assert ("| [monkeys/tiny-n4](monkeys/tiny-n4/report.md) | monkeys | tiny_random | ladder | 1 holds, 1 inconclusive | "
            "[coverage](monkeys/tiny-n4/coverage.png), [selection](monkeys/tiny-n4/selection.png) |") in lines
    assert ("| [rest/old run](rest/old%20run/report.md) | rest | smollm2_135m | gsm8k | "
            "no claims.json (rerun to regenerate) |  |") in lines
    assert "2 runs, 2 claims checked (1 holds, 0 fails, 1 inconclusive); 1 runs without `claims.json`." in lines
    assert ("- `monkeys`: Large Language Monkeys (arXiv 2407.21787); published numbers: "
            "[published/monkeys.yaml](published/monkeys.yaml)") in lines
    text = "\n".join(lines)
    assert str(tmp_path) not in text and "store/x" not in text and "published/README" not in text
    claim_rows = [line for line in lines if line.startswith("| monkeys |") or line.startswith("| rest |")]
    assert len(claim_rows) == 3


def test_front_page_check_flags_a_stale_page_and_accepts_a_fresh_one(tmp_path, capsys):
    root = _fake_results(tmp_path / "results")
    assert front_page.main(["--root", str(root), "--check"]) == 1  # no page yet
    assert front_page.main(["--root", str(root)]) == 0
    first = (root / "README.md").read_text()
    assert front_page.main(["--root", str(root), "--check"]) == 0
    assert front_page.main(["--root", str(root)]) == 0 and (root / "README.md").read_text() == first  # deterministic
    write_claims(root / "monkeys" / "tiny-n4" / CLAIMS_FILE,
                 RunClaims("monkeys", "tiny-n4", "tiny_random", "ladder", (Claim("Coverage grows with k", "fails", "e"),)))
    assert front_page.main(["--root", str(root), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_front_page_reports_a_malformed_claims_file_as_one_line(tmp_path, capsys):
    root = _fake_results(tmp_path / "results")
    (root / "monkeys" / "tiny-n4" / CLAIMS_FILE).write_text('{"paper": "monkeys", "run": "r", "claims": [{"claim": "c"}]}')
    assert front_page.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "claims.json" in err and "claims[0].verdict" in err and "\n" not in err
    assert not (root / "README.md").exists()


def test_committed_front_page_matches_the_committed_runs():
    if not any(run.claims for run in front_page.find_runs(front_page.DEFAULT_ROOT)):
        pytest.skip("no committed run has a claims.json yet (rerun the replications to write them)")
    assert front_page.is_up_to_date(), "results/README.md is out of date: run python -m harness.reporting.front_page"
