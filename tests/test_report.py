"""Report formatting: every estimate carries n and its CI; claims validate their verdict."""
import math

import pandas as pd
import pytest

from harness.reporting.plots import curve_plot
from harness.reporting.report import Claim, Report, format_estimate, markdown_table


def test_format_estimate_carries_ci_and_n():
    assert format_estimate(0.123, 0.091, 0.158, 100) == "12.3% [9.1, 15.8] (n=100)"
    assert format_estimate(2.5, 2.0, 3.0, 7, percent=False) == "2.5 [2, 3] (n=7)"
    assert format_estimate(float("nan")) == "n/a"


def test_claim_rejects_unknown_verdict():
    with pytest.raises(ValueError):
        Claim("x", "maybe", "")


def test_report_claim_is_the_claims_module_claim_and_keeps_positional_form():
    from harness.reporting import claims

    assert Claim is claims.Claim
    c = Claim("x", "fails", "why", 12)
    assert (c.name, c.status, c.verdict, c.evidence, c.n, c.ours, c.published) == ("x", "fails", "fails", "why", 12, None, None)


def test_claims_section_shows_our_and_published_numbers_only_when_given(tmp_path):
    rep = Report("T")
    rep.claim("c1", "holds", "because", n=50, ours="40.0% [30.0, 50.0] (n=50)", published="58.0% (PaLM 2-S; Fig. 2)")
    rep.claim("c2", "fails", "not so")
    rep.claims_section()
    lines = rep.render().splitlines()
    assert "| claim | verdict | n | ours (95% CI) | published | evidence |" in lines
    assert "| c1 | HOLDS | 50 | 40.0% [30.0, 50.0] (n=50) | 58.0% (PaLM 2-S; Fig. 2) | because |" in lines
    assert "| c2 | FAILS |  |  |  | not so |" in lines


def test_markdown_table_escapes_and_blanks_missing():
    text = markdown_table(pd.DataFrame({"a": ["x|y", None], "b": [0.5, math.nan]}))
    assert text.splitlines()[2] == "| x\\|y | 0.5 |"
    assert text.splitlines()[3] == "|  |  |"


def test_report_writes_sections_and_claims(tmp_path):
    rep = Report("T")
    rep.heading("H").text("body").table(pd.DataFrame({"k": [1]}))
    rep.claim("c1", "holds", "because")
    rep.claims_section()
    out = rep.write(tmp_path / "r.md").read_text()
    assert out.startswith("# T") and "## H" in out and "| c1 | HOLDS | because |" in out


def test_curve_plot_writes_png_and_the_csv_behind_it(tmp_path):
    df = pd.DataFrame({"k": [1, 2, 4], "coverage": [0.1, 0.2, 0.3], "ci_low": [0.0, 0.1, 0.2],
                       "ci_high": [0.2, 0.3, 0.4]})
    png = curve_plot(df, "k", "coverage", tmp_path / "c.png")
    assert png.stat().st_size > 1000
    back = pd.read_csv(tmp_path / "c.csv")
    assert list(back["coverage"]) == [0.1, 0.2, 0.3]
