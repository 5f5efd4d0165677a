"""Several runs (e.g. a model-size sweep) on one figure: error vs FLOPs, one curve per (model, strategy).

    python -m replications.compute_optimal.compare results/compute_optimal/multirun/<date>/*  [--out DIR]
        [--curves "sampling + weighted vote" "REBASE + weighted vote"]

Reads each run's curves.csv and config.yaml (for the model name); writes compare_error_vs_flops.png and the CSV
behind it (and the lower envelope: the compute-optimal model at each budget) to --out (default: the first run's
parent folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from harness.errors import DataError
from harness.reporting.plots import curve_plot


def load_runs(dirs: list[Path], curves: list[str]) -> pd.DataFrame:
    frames = []
    for d in dirs:
        path, cfg_path = d / "curves.csv", d / "config.yaml"
        if not path.is_file() or not cfg_path.is_file():
            raise DataError(f"{d}: not a compute_optimal run folder (needs curves.csv and config.yaml)")
        model = OmegaConf.load(cfg_path).model.name
        df = pd.read_csv(path)
        df = df[df["curve"].isin(curves)] if curves else df
        frames.append(df.assign(model=model, series=lambda x: model + ": " + x["curve"]))
    return pd.concat(frames, ignore_index=True)


def envelope(df: pd.DataFrame) -> pd.DataFrame:
    """At each point's FLOPs, which series has the lowest error among points at or below that budget."""
    rows = []
    for x in sorted(df["flops"].unique()):
        best = df[df["flops"] <= x].sort_values("error_rate").iloc[0]
        rows.append({"flops": x, "error_rate": best["error_rate"], "best": best["series"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--curves", nargs="*", default=["sampling + weighted vote", "REBASE + weighted vote"])
    args = ap.parse_args(argv)
    try:
        df = load_runs(args.runs, args.curves)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0].parent
    path = curve_plot(df, "flops", "error_rate", out / "compare_error_vs_flops.png", group="series",
                      ci=("error_ci_low", "error_ci_high"), title="Error vs inference FLOPs per model and strategy",
                      xlabel="inference FLOPs per problem", ylabel="test error rate")
    envelope(df).to_csv(out / "compare_envelope.csv", index=False)
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
