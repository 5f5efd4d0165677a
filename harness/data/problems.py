"""Problems of GSM8K and MATH (local JSONL files under the data root, or the Hugging Face hub) and of the
generated difficulty ladder (harness.data.ladder: materialised on first use, outside the read-only data root).

A dataset config (conf/dataset/<name>.yaml) names a file relative to the data root and a hub
fallback, or (kind: ladder) the generator's config. Subset selection is deterministic and happens in one fixed order, so that every shard of
a multirun job agrees on the subset before taking its own stride of it:

    level/subject filters -> seeded shuffle (if seed is set) -> offset/limit -> shard stride
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.config import validate
from harness.data.ladder import LadderConfig, check_config, check_levels, ladder_file
from harness.errors import ConfigError, DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding pyproject.toml
DATASET_CONF_DIR = PROJECT_ROOT / "conf" / "dataset"
DATA_ROOT_ENV = "LLMREP_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"  # relative to PROJECT_ROOT
KINDS = ("gsm8k", "math", "ladder")  # ladder: generated here (harness.data.ladder), no data-root file


@dataclass(frozen=True)
class Problem:
    id: str  # stable across runs: "gsm8k/test/17", or MATH's unique_id "test/algebra/1.json"
    question: str
    answer: str  # reference final answer (GSM8K: commas removed; MATH: last \boxed{} content, raw LaTeX)
    solution: str  # reference solution text (GSM8K: rationale without <<calc>> annotations)
    dataset: str  # "gsm8k" | "math": which grader/answer convention applies
    metadata: dict = field(default_factory=dict, compare=False)  # split, index, level, subject, ...

    def __hash__(self) -> int:  # metadata is a dict, so the generated hash would fail
        return hash((self.dataset, self.id))


@dataclass
class ProblemSet:
    name: str
    split: str
    problems: list[Problem]
    source: str  # the file path, or "hf://<id>/<config>/<split>"
    sha256: str  # of the file bytes; for hub data, of the rows' canonical JSON
    total: int = 0  # rows in the source before subset selection
    selection: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self):
        return iter(self.problems)

    def __getitem__(self, i: int) -> Problem:
        return self.problems[i]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.problems]

    def provenance(self) -> dict:
        ids_hash = hashlib.sha256("\n".join(self.ids).encode()).hexdigest()
        return {
            "dataset": self.name,
            "split": self.split,
            "source": self.source,
            "sha256": self.sha256,
            "rows": self.total,
            "selected": len(self.problems),
            "selection": self.selection,
            "ids_sha256": ids_hash,  # identifies the exact subset and its order
        }


@dataclass
class HubConfig:
    id: Optional[str] = None
    config: Any = None  # a config name, or a list of them (hendrycks_math has one per subject)
    split: Optional[str] = None


@dataclass
class ShardConfig:
    index: int = 0
    count: int = 1


@dataclass
class DatasetConfig:
    name: str = "dataset"
    kind: str = "gsm8k"
    split: str = "test"
    file: Optional[str] = None  # relative to the data root
    hub: HubConfig = field(default_factory=HubConfig)
    limit: Optional[int] = None
    offset: int = 0
    seed: Optional[int] = None
    levels: Optional[list[int]] = None
    subjects: Optional[list[str]] = None
    shard: ShardConfig = field(default_factory=ShardConfig)
    ladder: Optional[LadderConfig] = None  # kind=ladder: the generator's config


# ---------------------------------------------------------------------------------------------
# configs and data root


def dataset_config(name: str) -> DatasetConfig:
    """The typed config of conf/dataset/<name>.yaml."""
    path = DATASET_CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in DATASET_CONF_DIR.glob("*.yaml")))
        raise ConfigError(f"dataset '{name}': no config {path} (known: {known})")
    return as_dataset_config(OmegaConf.load(path))


def as_dataset_config(cfg: Any) -> DatasetConfig:
    if isinstance(cfg, DatasetConfig):
        return cfg
    if is_dataclass(cfg):
        cfg = asdict(cfg)
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    out = validate(OmegaConf.create({"dataset": node}), DatasetConfig, "dataset")
    if out.kind not in KINDS:
        raise ConfigError(f"config key 'dataset.kind': '{out.kind}' is not one of {', '.join(KINDS)}")
    if out.kind == "ladder":
        if out.ladder is None:
            raise ConfigError(f"config key 'dataset.ladder': dataset '{out.name}' has kind ladder but no generator config")
        check_config(out.ladder)
        check_levels(out.levels)
    return out


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """Explicit argument > $LLMREP_DATA_ROOT > ../shared/data beside the project."""
    if data_root not in (None, ""):
        return Path(os.path.expanduser(str(data_root))).resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(os.path.expanduser(env)).resolve()
    return (PROJECT_ROOT / DEFAULT_DATA_ROOT).resolve()


# ---------------------------------------------------------------------------------------------
# rows -> problems

_CALC = re.compile(r"<<[^<>]*>>")


def _require_str(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def gsm8k_problem(row: dict, split: str, index: int, where: str) -> Problem:
    question = _require_str(row, "question", where)
    raw = _require_str(row, "answer", where)
    if "####" not in raw:
        raise DataError(f"{where}: field 'answer' has no '####' final answer")
    rationale, final = raw.rsplit("####", 1)
    answer = final.strip().replace(",", "")
    if not answer:
        raise DataError(f"{where}: field 'answer' has an empty final answer after '####'")
    return Problem(
        id=f"gsm8k/{split}/{index}",
        question=question,
        answer=answer,
        solution=_CALC.sub("", rationale).strip(),
        dataset="gsm8k",
        metadata={"split": split, "index": index, "level": None, "subject": "", "raw_answer": raw},
    )


def math_problem(row: dict, split: str, index: int, where: str) -> Problem:
    problem = _require_str(row, "problem", where)
    solution = _require_str(row, "solution", where)
    answer = _require_str(row, "answer", where)  # may be "" (two train solutions box nothing)
    uid = _require_str(row, "unique_id", where)
    subject = _require_str(row, "subject", where)
    level = row.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise DataError(f"{where}: field 'level' must be an int or null, got {level!r}")
    meta: dict = {"split": split, "index": index, "level": level, "subject": subject}
    parts = uid.split("/")
    meta["subject_id"] = parts[-2] if len(parts) >= 3 else subject_id(subject)
    if "level_raw" in row:
        meta["level_raw"] = row["level_raw"]
    return Problem(id=uid, question=problem, answer=answer, solution=solution, dataset="math", metadata=meta)


def ladder_problem(row: dict, split: str, index: int, where: str) -> Problem:
    """A generated ladder row: GSM8K's fields (graded as GSM8K) plus its own id, level and step lines."""
    base = gsm8k_problem(row, split, index, where)
    level = row.get("level")
    if isinstance(level, bool) or not isinstance(level, int):
        raise DataError(f"{where}: field 'level' must be an int, got {level!r}")
    steps = row.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DataError(f"{where}: field 'steps' must be a list of strings")
    meta = {**base.metadata, "level": level, "steps": steps}
    return Problem(id=_require_str(row, "id", where), question=base.question, answer=base.answer,
                   solution=base.solution, dataset="gsm8k", metadata=meta)


_PARSERS = {"gsm8k": gsm8k_problem, "math": math_problem, "ladder": ladder_problem}


def subject_id(subject: str) -> str:
    """'Counting & Probability' -> 'counting_and_probability' (MATH's directory names)."""
    return re.sub(r"[^a-z0-9]+", "_", subject.lower().replace("&", "and")).strip("_")


def read_jsonl(path: Path, kind: str, split: str) -> tuple[list[Problem], bytes]:
    data = path.read_bytes()
    parse = _PARSERS[kind]
    problems: list[Problem] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte offset {err.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        problems.append(parse(row, split, len(problems), where))
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(f"{path}: duplicate problem id '{p.id}'")
        seen.add(p.id)
    return problems, data


_FILE_CACHE: dict[tuple, tuple[list[Problem], str]] = {}


def _load_file(path: Path, kind: str, split: str) -> tuple[list[Problem], str]:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, kind, split)
    if key not in _FILE_CACHE:  # exemplar drawing and ReST reload the same train file many times
        problems, data = read_jsonl(path, kind, split)
        _FILE_CACHE[key] = (problems, hashlib.sha256(data).hexdigest())
    return _FILE_CACHE[key]


# ---------------------------------------------------------------------------------------------
# hub fallback


def _hub_rows(cfg: DatasetConfig) -> tuple[list[dict], str]:
    """Rows from the hub, converted to the local files' schema; raises whatever `datasets` raises."""
    from datasets import load_dataset

    hub = cfg.hub
    configs = hub.config if isinstance(hub.config, (list, tuple)) else [hub.config]
    split = hub.split or cfg.split
    rows: list[dict] = []
    for conf in configs:
        ds = load_dataset(hub.id, conf, split=split) if conf else load_dataset(hub.id, split=split)
        for i, row in enumerate(ds):
            rows.append(_hub_row(dict(row), cfg, conf, i))
    label = ",".join(str(c) for c in configs if c)
    return rows, f"hf://{hub.id}" + (f"/{label}" if label else "") + f"/{split}"


def _hub_row(row: dict, cfg: DatasetConfig, conf: str | None, i: int) -> dict:
    if cfg.kind == "gsm8k" or "unique_id" in row:  # openai/gsm8k and MATH-500 match the local schema
        return row
    # EleutherAI/hendrycks_math: 'Level k' strings, `type`, no answer and no file name.
    from lm_eval.tasks.hendrycks_math.utils import last_boxed_only_string, remove_boxed

    level_raw = str(row.get("level", ""))
    digits = level_raw.replace("Level", "").strip()
    boxed = last_boxed_only_string(row["solution"])
    try:
        answer = remove_boxed(boxed) if boxed else ""
    except AssertionError:  # \fbox{...}: remove_boxed only knows \boxed
        answer = boxed[boxed.index("{") + 1 : -1]
    out = {
        "problem": row["problem"],
        "solution": row["solution"],
        "answer": answer,
        "subject": row.get("type", ""),
        "level": int(digits) if digits.isdigit() else None,
        "unique_id": f"{cfg.split}/{conf}/hub-{i}",  # the hub copy lost the original file names
    }
    if out["level"] is None:
        out["level_raw"] = level_raw
    return out


def _load_hub(cfg: DatasetConfig, root: Path) -> tuple[list[Problem], str, str]:
    if not cfg.hub.id:
        raise DataError(f"dataset '{cfg.name}': file {cfg.file} not found under data root {root} and no hub id is set")
    try:
        rows, source = _hub_rows(cfg)
    except Exception as err:  # noqa: BLE001 -- any hub failure (offline, 404, network) means "could not reach"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise DataError(
            f"dataset '{cfg.name}': file {cfg.file} not found under data root {root}, and the hub dataset "
            f"{cfg.hub.id} could not be reached ({type(err).__name__}: {first})"
        ) from None
    parse = _PARSERS[cfg.kind]
    problems = [parse(row, cfg.split, i, f"{source}:row {i}") for i, row in enumerate(rows)]
    blob = "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows).encode()
    return problems, hashlib.sha256(blob).hexdigest(), source


# ---------------------------------------------------------------------------------------------
# selection


def select(problems: Sequence[Problem], cfg: DatasetConfig, source: str | None = None) -> list[Problem]:
    """Filters -> seeded shuffle -> offset/limit -> shard stride (see the module docstring).

    Nothing selected is a DataError naming `source` (the file), raised while loading problems, before a
    model is loaded for nothing; one shard of a multirun may still be empty (more shards than problems).
    """
    chosen = list(problems)
    if cfg.levels is not None:
        wanted = set(cfg.levels)
        chosen = [p for p in chosen if p.metadata.get("level") in wanted]
    if cfg.subjects is not None:
        wanted_subjects = {subject_id(s) for s in cfg.subjects}
        have = {p.metadata.get("subject_id") or subject_id(p.metadata.get("subject", "")) for p in problems}
        unknown = sorted(wanted_subjects - have)
        if unknown:
            raise ConfigError(
                f"config key 'dataset.subjects': {unknown[0]!r} matches no problem of '{cfg.name}' "
                f"(subjects: {', '.join(sorted(have))})"
            )
        chosen = [p for p in chosen if p.metadata.get("subject_id") in wanted_subjects]
    if cfg.seed is not None:
        random.Random(cfg.seed).shuffle(chosen)
    if cfg.offset < 0:
        raise ConfigError(f"config key 'dataset.offset': must be >= 0, got {cfg.offset}")
    if cfg.offset and cfg.offset >= len(chosen):
        raise ConfigError(f"config key 'dataset.offset': {cfg.offset} leaves no problem of the {len(chosen)} selected")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"config key 'dataset.limit': must be >= 1 or null, got {cfg.limit}")
    end = None if cfg.limit is None else cfg.offset + cfg.limit
    chosen = chosen[cfg.offset : end]
    if not chosen:
        where = source or f"dataset '{cfg.name}'"
        if not problems:
            raise DataError(f"{where}: no problems in the file ('{cfg.name}' split {cfg.split})")
        raise DataError(f"{where}: the selection {_selection_dict(cfg)} leaves none of its {len(problems)} problems")
    count, index = cfg.shard.count, cfg.shard.index
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"config key 'dataset.shard': need 0 <= index < count, got index={index} count={count}")
    return chosen[index::count]


def _selection_dict(cfg: DatasetConfig) -> dict:
    return {
        "limit": cfg.limit,
        "offset": cfg.offset,
        "seed": cfg.seed,
        "levels": None if cfg.levels is None else list(cfg.levels),
        "subjects": None if cfg.subjects is None else list(cfg.subjects),
        "shard": {"index": cfg.shard.index, "count": cfg.shard.count},
    }


def load_problems(dataset_cfg: Any, data_root: str | Path | None = None) -> ProblemSet:
    """The problems a dataset config selects, from the local file or (if absent) the hub."""
    cfg = as_dataset_config(dataset_cfg)
    if cfg.kind == "ladder":  # generated on first use, into a writable place (the data root is read-only)
        path = ladder_file(cfg.ladder, cfg.split)
    else:
        root = resolve_data_root(data_root)
        if not cfg.file:
            raise ConfigError(f"config key 'dataset.file': dataset '{cfg.name}' names no file")
        path = root / cfg.file
    if path.is_file():
        problems, sha, source = *_load_file(path, cfg.kind, cfg.split), str(path)
    else:
        problems, sha, source = _load_hub(cfg, root)
    return ProblemSet(
        name=cfg.name,
        split=cfg.split,
        problems=select(problems, cfg, source),
        source=source,
        sha256=sha,
        total=len(problems),
        selection=_selection_dict(cfg),
    )


def load_split(kind: str, split: str, data_root: str | Path | None = None, **overrides: Any) -> ProblemSet:
    """All problems of one split (e.g. ReST's train and test), via the conf/dataset config for it."""
    for path in sorted(DATASET_CONF_DIR.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        if cfg.get("kind") == kind and cfg.get("split") == split:
            cfg = OmegaConf.merge(cfg, overrides) if overrides else cfg
            return load_problems(cfg, data_root)
    raise ConfigError(f"no conf/dataset config has kind={kind} and split={split}")


def problems_by_id(problems: Iterable[Problem]) -> dict[str, Problem]:
    return {p.id: p for p in problems}
