"""A paper's claims checked on one run, and `claims.json`: the same verdicts the report prints, for scripts and CI.

claims.json (written beside report.md):

    {"paper": "monkeys", "run": "smollm2_135m-gsm8k-chat_boxed-n16", "model": "smollm2_135m", "dataset": "gsm8k",
     "claims": [{"claim": "...", "verdict": "holds" | "fails" | "inconclusive", "evidence": "...",
                 "n": 127 | null, "ours": "12.3% [9.1, 15.8] (n=127)" | null,
                 "published": "95.7% (Llama-3-8B-Instruct, k=10000; blog)" | null}, ...]}
"""
from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from harness.errors import DataError, read_json

VERDICTS = ("holds", "fails", "inconclusive")
CLAIMS_FILE = "claims.json"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and its verdict on this run; `status` is the verdict (its historical name)."""

    name: str
    status: str  # holds | fails | inconclusive
    evidence: str
    n: int | None = None  # problems (or samples) the verdict rests on
    ours: str | None = None  # our number with its CI, as printed (format_estimate)
    published: str | None = None  # the published number with its model and source

    def __post_init__(self):
        if self.status not in VERDICTS:
            raise ValueError(f"claim status must be one of {VERDICTS}, got {self.status!r}")
        if self.n is not None:
            try:  # numpy integers are welcome; floats and bools are a caller's mistake
                n = operator.index(self.n)
            except TypeError:
                raise ValueError(f"claim n must be an integer or None, got {self.n!r}") from None
            if isinstance(self.n, bool) or n < 0:
                raise ValueError(f"claim n must be a non-negative integer or None, got {self.n!r}")
            object.__setattr__(self, "n", int(n))
        for name in ("ours", "published"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"claim {name} must be text (format_estimate) or None, got {value!r}")

    @property
    def verdict(self) -> str:
        return self.status

    def to_json(self) -> dict:
        return {"claim": self.name, "verdict": self.status, "evidence": self.evidence, "n": self.n,
                "ours": self.ours, "published": self.published}


@dataclass(frozen=True)
class RunClaims:
    """The content of one claims.json: which run the verdicts belong to, and the verdicts."""

    paper: str
    run: str
    model: str | None
    dataset: str | None
    claims: tuple[Claim, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {"paper": self.paper, "run": self.run, "model": self.model, "dataset": self.dataset,
                "claims": [c.to_json() for c in self.claims]}

    def counts(self) -> dict[str, int]:
        return {v: sum(c.status == v for c in self.claims) for v in VERDICTS}


def run_metadata(run_dir: str | os.PathLike) -> dict[str, str | None]:
    """paper, run, model and dataset of a run directory, from its config.yaml (and provenance.json for the paper).

    A directory that is not a run (a report written elsewhere) falls back on its own names: paper = the parent
    folder, run = the folder, as results/<paper>/<run> is laid out.
    """
    directory = Path(run_dir)
    config = _load_mapping(directory / "config.yaml", yaml.safe_load)
    provenance = _load_mapping(directory / "provenance.json", json.loads)

    def name_of(group: Any) -> str | None:
        if isinstance(group, Mapping):
            group = group.get("name")
        return str(group) if group not in (None, "") else None

    resolved = directory.resolve()
    return {
        "paper": name_of(config.get("paper")) or name_of(provenance.get("paper")) or resolved.parent.name,
        "run": name_of(config.get("run_name")) or resolved.name,
        "model": name_of(config.get("model")),
        "dataset": name_of(config.get("dataset")),
    }


def _load_mapping(path: Path, parse) -> dict:
    """A best-effort read for metadata: the files are the run's own, and a missing field only blanks a cell."""
    try:
        loaded = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def write_claims(path: str | os.PathLike, run_claims: RunClaims) -> Path:
    """Write claims.json atomically (a reader never sees half a file, a crash leaves the old one)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(run_claims.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


def write_run_claims(run_dir: str | os.PathLike, claims: Sequence[Claim], **metadata: str | None) -> Path:
    """claims.json in `run_dir`; paper/run/model/dataset come from the run's config unless given here."""
    meta = run_metadata(run_dir)
    meta.update({k: v for k, v in metadata.items() if v is not None})
    return write_claims(Path(run_dir) / CLAIMS_FILE, RunClaims(claims=tuple(claims), **meta))


def read_claims(path: str | os.PathLike) -> RunClaims:
    """Read and validate a claims.json; anything malformed is a one-line DataError naming the file and field."""
    return parse_claims(read_json(path, "claims file"), str(Path(path)))


def parse_claims(raw: Any, source: str) -> RunClaims:
    def fail(where: str, message: str):
        raise DataError(f"{source}: {where} {message}")

    if not isinstance(raw, dict):
        fail("top level", f"must be an object with paper, run, model, dataset, claims; got {type(raw).__name__}")
    for key in ("paper", "run"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            fail(key, f"must be a non-empty string, got {raw.get(key)!r}")
    for key in ("model", "dataset"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            fail(key, f"must be a string or null, got {raw[key]!r}")
    if not isinstance(raw.get("claims"), list):
        fail("claims", f"must be a list, got {raw.get('claims')!r}")
    return RunClaims(raw["paper"], raw["run"], raw.get("model"), raw.get("dataset"),
                     tuple(_parse_claim(fail, f"claims[{i}]", item) for i, item in enumerate(raw["claims"])))


def _parse_claim(fail, where: str, item: Any) -> Claim:
    if not isinstance(item, dict):
        fail(where, f"must be an object, got {item!r}")
    if not isinstance(item.get("claim"), str) or not item["claim"].strip():
        fail(f"{where}.claim", f"must be a non-empty string, got {item.get('claim')!r}")
    if item.get("verdict") not in VERDICTS:
        fail(f"{where}.verdict", f"must be one of {', '.join(VERDICTS)}, got {item.get('verdict')!r}")
    if not isinstance(item.get("evidence"), str):
        fail(f"{where}.evidence", f"must be a string, got {item.get('evidence')!r}")
    n = item.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        fail(f"{where}.n", f"must be a non-negative integer or null, got {n!r}")
    for key in ("ours", "published"):
        if item.get(key) is not None and not isinstance(item[key], str):
            fail(f"{where}.{key}", f"must be a string or null, got {item[key]!r}")
    return Claim(item["claim"], item["verdict"], item["evidence"], n, item.get("ours"), item.get("published"))
