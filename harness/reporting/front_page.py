"""results/README.md: one page with every paper's claims, as checked by the committed runs, linking to their reports.

    python -m harness.reporting.front_page            # regenerate results/README.md
    python -m harness.reporting.front_page --check    # exit 1 if results/README.md is out of date

The page is made only from the files in the run directories (claims.json, config.yaml, *.png) and the
published-number files' titles, sorted, with relative links: the same runs give the same bytes on every machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import yaml

from harness.errors import HarnessError
from harness.reporting.claims import CLAIMS_FILE, VERDICTS, RunClaims, read_claims, run_metadata
from harness.reporting.paths import PROJECT_ROOT
from harness.reporting.report import markdown_table

DEFAULT_ROOT = PROJECT_ROOT / "results"
PAGE = "README.md"
NO_CLAIMS = f"no {CLAIMS_FILE} (rerun to regenerate)"
REGENERATE = "python -m harness.reporting.front_page"
_NOT_RUNS = ("published", "store", "checkpoints")  # folders of results/ that hold no run


@dataclass(frozen=True)
class RunEntry:
    relative: str  # the run directory relative to the page, posix
    paper: str
    run: str
    model: str | None
    dataset: str | None
    has_report: bool
    figures: tuple[str, ...]  # *.png of the run directory, relative to it
    claims: RunClaims | None  # None: the run has no claims.json


def _committed_files(root: Path) -> set[str] | None:
    """Files under `root` that git tracks (relative to root), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "."], cwd=root, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {name for name in out.stdout.decode().split("\0") if name}


def find_runs(root: Path, committed_only: bool = True) -> list[RunEntry]:
    """Every run directory under `root` (one holding report.md or claims.json), sorted by its path.

    The front page is about the committed runs: in a git checkout a run counts once its report or claims
    are tracked, so scratch runs lying in results/ neither appear nor make `--check` fail."""
    root = Path(root)
    tracked = _committed_files(root) if committed_only else None
    found = []
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        # pruned, not filtered afterwards: the sample store under results/ can hold many large files
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and not (here == root and d in _NOT_RUNS)]
        if here != root and ("report.md" in files or CLAIMS_FILE in files):
            relative = here.relative_to(root).as_posix()
            if tracked is None or f"{relative}/report.md" in tracked or f"{relative}/{CLAIMS_FILE}" in tracked:
                found.append(relative)
    return [_entry(root, root / relative) for relative in sorted(found)]


def _entry(root: Path, directory: Path) -> RunEntry:
    claims_path = directory / CLAIMS_FILE
    claims = read_claims(claims_path) if claims_path.exists() else None
    meta = (
        {"paper": claims.paper, "run": claims.run, "model": claims.model, "dataset": claims.dataset}
        if claims else run_metadata(directory)
    )
    figures = tuple(sorted(p.relative_to(directory).as_posix() for p in directory.glob("*.png")))
    return RunEntry(directory.relative_to(root).as_posix(), meta["paper"], meta["run"], meta["model"], meta["dataset"],
                    (directory / "report.md").exists(), figures, claims)


def _link(text: str, target: str) -> str:
    return f"[{text}]({quote(target, safe='/')})"


def _paper_title(root: Path, paper: str) -> str | None:
    """'Title (arXiv id)' from results/published/<paper>.yaml, where there is one."""
    try:
        raw = yaml.safe_load((root / "published" / f"{paper}.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict) or not raw.get("paper"):
        return None
    return f"{raw['paper']} (arXiv {raw['arxiv']})" if raw.get("arxiv") else str(raw["paper"])


def claims_table(runs: list[RunEntry]) -> pd.DataFrame:
    rows = []
    for r in runs:
        report = _link("report", f"{r.relative}/report.md") if r.has_report else ""
        base = {"paper": r.paper, "model": r.model, "dataset": r.dataset}
        if r.claims is None:
            rows.append({**base, "claim": NO_CLAIMS, "verdict": "", "ours (95% CI)": "", "published": "", "run": report})
        for c in r.claims.claims if r.claims else ():
            rows.append({**base, "claim": c.name, "verdict": c.status.upper(), "ours (95% CI)": c.ours,
                         "published": c.published, "run": report})
    return pd.DataFrame(rows, columns=["paper", "model", "dataset", "claim", "verdict", "ours (95% CI)", "published",
                                       "run"], dtype=object)


def runs_table(runs: list[RunEntry]) -> pd.DataFrame:
    rows = []
    for r in runs:
        if r.claims is None:
            verdicts = NO_CLAIMS
        else:
            counts = r.claims.counts()
            verdicts = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v]) or "no claims"
        rows.append({
            "run": _link(r.relative, f"{r.relative}/report.md") if r.has_report else r.relative,
            "paper": r.paper, "model": r.model, "dataset": r.dataset, "verdicts": verdicts,
            "figures": ", ".join(_link(Path(f).stem, f"{r.relative}/{f}") for f in r.figures),
        })
    return pd.DataFrame(rows, columns=["run", "paper", "model", "dataset", "verdicts", "figures"], dtype=object)


def render(root: str | Path = DEFAULT_ROOT) -> str:
    """The front page's text for the runs under `root` (links relative to `root`, where the page lives)."""
    root = Path(root)
    runs = find_runs(root)
    checked = [c for r in runs if r.claims for c in r.claims.claims]
    missing = sum(r.claims is None for r in runs)
    tally = ", ".join(f"{sum(c.status == v for c in checked)} {v}" for v in VERDICTS)
    parts = [
        "# What this suite has replicated\n",
        f"Generated by `{REGENERATE}` from each run's `{CLAIMS_FILE}` (the verdicts its report prints); "
        "do not edit by hand. Published numbers are the papers' own, for their models: beside ours, never instead.\n",
        f"{len(runs)} runs, {len(checked)} claims checked ({tally}); {missing} runs without `{CLAIMS_FILE}`.\n",
        "## Claims\n",
        markdown_table(claims_table(runs)) + "\n",
        "## Runs\n",
        markdown_table(runs_table(runs)) + "\n",
    ]
    titles = [(p, _paper_title(root, p)) for p in sorted({r.paper for r in runs})]
    if any(t for _, t in titles):
        parts += ["## Papers\n", "\n".join(
            f"- `{p}`: {t}; published numbers: {_link(f'published/{p}.yaml', f'published/{p}.yaml')}"
            for p, t in titles if t) + "\n"]
    return "\n".join(parts)


def write(root: str | Path = DEFAULT_ROOT) -> Path:
    root = Path(root)
    page = root / PAGE
    tmp = page.with_name(f".{PAGE}.tmp")
    tmp.write_text(render(root), encoding="utf-8")
    tmp.replace(page)
    return page


def is_up_to_date(root: str | Path = DEFAULT_ROOT) -> bool:
    page = Path(root) / PAGE
    return page.exists() and page.read_text(encoding="utf-8") == render(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE.removeprefix("python -m "), description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the results folder (default: results/)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if <root>/{PAGE} is out of date")
    args = parser.parse_args(argv)
    try:
        if args.check:
            if is_up_to_date(args.root):
                return 0
            print(f"{Path(args.root) / PAGE} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"wrote {write(args.root)}")
        return 0
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
