"""Figures: every PNG is written beside the CSV of exactly the numbers it plots."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: runs on CI and SLURM nodes without a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def curve_plot(
    df: pd.DataFrame,
    x: str,
    y: str,
    path: str | Path,
    group: str | None = None,
    ci: tuple[str, str] | None = ("ci_low", "ci_high"),
    logx: bool = True,
    logy: bool = False,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    overlays: Sequence[tuple[pd.DataFrame, str]] = (),
    markers: pd.DataFrame | None = None,
) -> Path:
    """Line plot of y vs x, one line per `group`, with a shaded CI band.

    `overlays`: (frame with x,y columns, label) drawn dashed (e.g. a fitted curve).
    `markers`: frame with x, y, label columns drawn as labelled points (e.g. published numbers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    groups = [(None, df)] if group is None else list(df.groupby(group, sort=False))
    for name, g in groups:
        g = g.sort_values(x)
        (line,) = ax.plot(g[x], g[y], marker="o", markersize=3, label=None if name is None else str(name))
        if ci and ci[0] in g and ci[1] in g:
            ax.fill_between(g[x], g[ci[0]], g[ci[1]], alpha=0.2, color=line.get_color(), linewidth=0)
    for frame, label in overlays:
        frame = frame.sort_values(x)
        ax.plot(frame[x], frame[y], linestyle="--", linewidth=1.2, label=label)
    if markers is not None and len(markers):
        for _, row in markers.iterrows():
            ax.scatter([row[x]], [row[y]], marker="*", s=70, zorder=5, label=row["label"])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    csv_cols = [c for c in [group, x, y, *(ci or ())] if c and c in df.columns]
    df[csv_cols].to_csv(path.with_suffix(".csv"), index=False)
    return path
