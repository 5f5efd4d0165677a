"""Markdown reports: tables with n and CIs, figures, published numbers side by side, and claim checks."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from harness.reporting.claims import VERDICTS, Claim, write_run_claims

CLAIM_STATUSES = VERDICTS  # the older name, kept for callers
__all__ = ["CLAIM_STATUSES", "Claim", "Report", "format_estimate", "markdown_table", "print_claims"]


def format_estimate(
    mean: float, low: float | None = None, high: float | None = None, n: int | None = None, percent: bool = True
) -> str:
    """'12.3% [9.1, 15.8] (n=100)': every printed estimate carries its sample size and its CI."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.4g}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low * scale:.1f}, {high * scale:.1f}]" if percent else f" [{low:.4g}, {high:.4g}]"
    if n is not None:
        text += f" (n={n})"
    return text


def markdown_table(df: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """A GitHub markdown table (pandas' to_markdown needs the optional `tabulate` package)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return float_format.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


class Report:
    def __init__(self, title: str, *, paper: str | None = None, run: str | None = None, model: str | None = None,
                 dataset: str | None = None):
        """paper / run / model / dataset label claims.json; left None, they are read from the run's config.yaml."""
        self.title = title
        self.parts: list[str] = [f"# {title}\n"]
        self.claims: list[Claim] = []
        self.metadata = {"paper": paper, "run": run, "model": model, "dataset": dataset}
        self.has_claims_section = False

    def heading(self, text: str, level: int = 2) -> "Report":
        self.parts.append(f"{'#' * level} {text}\n")
        return self

    def text(self, text: str) -> "Report":
        self.parts.append(text.rstrip() + "\n")
        return self

    def bullets(self, items: Iterable[str]) -> "Report":
        self.parts.append("\n".join(f"- {i}" for i in items) + "\n")
        return self

    def table(self, df: pd.DataFrame, caption: str | None = None) -> "Report":
        if caption:
            self.parts.append(f"*{caption}*\n")
        self.parts.append(markdown_table(df) + "\n")
        return self

    def figure(self, path: str | Path, caption: str, relative_to: Path | None = None) -> "Report":
        p = Path(path)
        shown = p.relative_to(relative_to) if relative_to and p.is_absolute() else p.name
        self.parts.append(f"![{caption}]({shown})\n\n*{caption}*\n")
        return self

    def claim(self, name: str, status: str, evidence: str, n: int | None = None, ours: str | None = None,
              published: str | None = None) -> Claim:
        c = Claim(name, status, evidence, n, ours, published)
        self.claims.append(c)
        return c

    def claims_section(self) -> "Report":
        """The claims table; the report's write() then also writes the same verdicts to claims.json."""
        self.heading("The paper's claims, checked on this run")
        optional = [("n", "n"), ("ours", "ours (95% CI)"), ("published", "published")]
        shown = [(attr, label) for attr, label in optional if any(getattr(c, attr) is not None for c in self.claims)]
        rows = pd.DataFrame(
            [(c.name, c.status.upper(), *(getattr(c, attr) for attr, _ in shown), c.evidence) for c in self.claims],
            columns=["claim", "verdict", *(label for _, label in shown), "evidence"], dtype=object)
        self.has_claims_section = True
        return self.table(rows)

    def finish(self, claims: Sequence[Claim], timings: dict[str, float], draws: dict[str, dict] | None = None) -> "Report":
        """The closing sections every replication has: the claims checked, then the cost of the run.

        claims.json is written by `write`, beside report.md: only there is the run directory known.
        """
        self.claims.extend(claims)
        self.claims_section()
        print_claims(claims)
        self.heading("Cost of this run")
        self.table(pd.DataFrame(list(timings.items()), columns=["stage", "wall seconds"]))
        self.text(f"Total: {sum(timings.values()):.0f} s of wall time in the stages above (this machine).")
        if draws:
            rows = pd.DataFrame([{"sampling step": k, **v} for k, v in draws.items()])
            self.table(rows, "Samples per sampling step: used by the analysis, drawn by this invocation (drawn_now), reused from "
                             "the sample store; tokens generated by the samples used; the sampler that draws them, with its numerics")
        return self

    def render(self) -> str:
        return "\n".join(self.parts)

    def write(self, path: str | Path) -> Path:
        """Write the report and, when it has a claims section, claims.json beside it with the same verdicts."""
        p = Path(path)
        p.write_text(self.render(), encoding="utf-8")
        if self.has_claims_section:
            write_run_claims(p.parent, self.claims, **self.metadata)
        return p


def print_claims(claims: Sequence[Claim]) -> None:
    for c in claims:
        print(f"[{c.status.upper():>12}] {c.name}: {c.evidence}")
