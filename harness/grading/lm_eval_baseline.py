"""A greedy baseline computed by lm-evaluation-harness itself, with the model already loaded in memory.

lm-eval's own task definitions (prompt, few-shot exemplars, generation stops, filters, metrics) are
loaded from its registry and only their data source is re-pointed at the local JSONL files named by
conf/dataset/*.yaml, so the run works offline. A problem subset (our problem ids) is passed through
lm-eval's `samples` argument as row indices, so lm-eval scores exactly the problems our runs drew.

    result = run_lm_eval(loaded_model, "gsm8k_cot", data_root, problem_ids=problem_set.ids)
    result.metrics["exact_match,strict-match"], result.records[0].correct
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.data.problems import Problem, dataset_config, load_problems, resolve_data_root, subject_id
from harness.errors import ConfigError, DataError

# lm-eval task -> (conf/dataset config of its test split, conf/dataset config of its few-shot split)
LOCAL_DATA: dict[str, tuple[str, str | None]] = {
    "gsm8k_cot": ("gsm8k", None),  # 8 hand-written exemplars in the task YAML
    "gsm8k": ("gsm8k", "gsm8k_train"),  # 5 exemplars drawn from the train split
    "minerva_math": ("math", None),  # a group of 7 subject tasks with 4 hand-written exemplars
    "minerva_math500": ("math500", None),
}
TASKS = tuple(LOCAL_DATA)


@dataclass
class SampleRecord:
    problem_id: str  # our id: "gsm8k/test/<row>" or MATH's unique_id
    lm_eval_task: str  # the leaf task, e.g. "minerva_math_algebra"
    doc_id: int  # lm-eval's index into that task's test docs
    prompt: str  # the exact context lm-eval sent (few-shot, chat template)
    response: str  # the raw generation
    target: str
    extracted: dict[str, str]  # filter name -> what the filter kept
    correct: dict[str, bool]  # "metric,filter" -> scored correct


@dataclass
class LmEvalResult:
    task: str
    metrics: dict[str, float]  # lm-eval's "metric,filter" keys, e.g. "exact_match,strict-match"
    stderr: dict[str, float | None]  # same keys; None where lm-eval reports "N/A" (n < 2)
    ci: dict[str, list[float]]  # same keys: 95% percentile bootstrap over problems, as for our own greedy
    n: int
    lm_eval_version: str
    chat_template: bool
    fewshot_as_multiturn: bool
    num_fewshot: dict[str, int]
    max_gen_toks: int
    batch_size: int
    model: str  # LoadedModel.identity
    problem_ids: list[str]
    records: list[SampleRecord]
    subtasks: dict[str, dict[str, float]] = field(default_factory=dict)  # per leaf task, for groups
    data_files: dict[str, str] = field(default_factory=dict)
    deviations: list[str] = field(default_factory=list)  # where this differs from a stock lm-eval run
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def run_lm_eval(
    loaded_model: Any,
    task: str,
    data_root: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_gen_toks: int | None = None,
    problem_ids: Sequence[str] | None = None,
    chat_template: bool | None = None,
) -> LmEvalResult:
    """Greedy-decode `task` with lm-eval on the local data; `chat_template=None` follows the model config.

    `problem_ids` restricts the run to those problems; otherwise `limit` takes the first N rows of the
    test file (for minerva_math: the first N of math/test.jsonl, whatever their subject).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    if task not in LOCAL_DATA:
        raise ConfigError(f"lm_eval task '{task}' is not supported (supported: {', '.join(TASKS)})")
    if limit is not None and problem_ids is not None:
        raise ConfigError("lm_eval: give either limit or problem_ids, not both")
    if limit is not None and limit < 1:
        raise ConfigError(f"lm_eval limit: must be >= 1, got {limit}")
    if max_gen_toks is not None and max_gen_toks < 1:
        raise ConfigError(f"lm_eval max_gen_toks: must be >= 1, got {max_gen_toks}")
    if batch_size < 1:
        raise ConfigError(f"lm_eval batch_size: must be >= 1, got {batch_size}")
    use_chat = loaded_model.use_chat_template if chat_template is None else bool(chat_template)

    root = resolve_data_root(data_root)
    test_name, fewshot_name = LOCAL_DATA[task]
    test_file = _local_file(test_name, root)
    problems = load_problems(dataset_config(test_name), root).problems
    chosen = _choose(problems, problem_ids, limit, test_file)

    manager = TaskManager()
    leaves, group = _leaf_configs(manager, task)
    files = {"test": str(test_file)}
    if fewshot_name:
        files["fewshot"] = str(_local_file(fewshot_name, root))
    placed = _place(problems, chosen, leaves)  # leaf task -> [(doc index, problem)]
    configs = [
        _local_config(cfg, test_file, files.get("fewshot"), by_subject=bool(group))
        for cfg in leaves
        if cfg["task"] in placed  # a subject task with none of the chosen problems is left out
    ]
    tasks = _build(manager, configs, group)

    lm = HFLM(pretrained=loaded_model.model, tokenizer=loaded_model.tokenizer, batch_size=batch_size)
    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        samples={name: [i for i, _ in pairs] for name, pairs in placed.items()},
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        apply_chat_template=use_chat,
        fewshot_as_multiturn=use_chat,
        log_samples=True,
        # greedy decoding needs no RNG: leave the caller's global random/numpy/torch state alone
        random_seed=None,
        numpy_random_seed=None,
        torch_random_seed=None,
    )
    wall = time.perf_counter() - start

    records = _records(out["samples"], placed)
    want = {p.id for p in chosen}
    if {r.problem_id for r in records} != want or len(records) != len(want):
        raise DataError(f"{test_file}: lm-eval scored {len(records)} problems, expected {len(want)}")
    order = {p.id: i for i, p in enumerate(chosen)}
    records.sort(key=lambda r: order[r.problem_id])
    metrics, stderr = _metrics(out["results"][task])
    return LmEvalResult(
        task=task,
        metrics=metrics,
        stderr=stderr,
        ci=_bootstrap_cis(records, metrics),
        n=len(records),
        lm_eval_version=importlib.metadata.version("lm_eval"),
        chat_template=use_chat,
        fewshot_as_multiturn=use_chat,
        num_fewshot={k: int(v) for k, v in out["n-shot"].items()},
        max_gen_toks=max_gen_toks or lm.max_gen_toks,
        batch_size=batch_size,
        model=loaded_model.identity,
        problem_ids=[p.id for p in chosen],
        records=records,
        subtasks={name: _metrics(out["results"][name])[0] for name in placed} if group else {},
        data_files=files,
        deviations=_deviations(task, bool(group)),
        wall_seconds=wall,
    )


# ---------------------------------------------------------------------------------------------
# problem selection


def _local_file(dataset: str, root: Path) -> Path:
    cfg = dataset_config(dataset)
    path = root / str(cfg.file)
    if not path.is_file():  # lm-eval reads the file itself: the data module's hub fallback cannot help
        raise DataError(f"{path}: missing (lm_eval needs the local file of dataset '{dataset}')")
    return path


def _choose(problems: list[Problem], ids: Sequence[str] | None, limit: int | None, where: Path) -> list[Problem]:
    if ids is None:
        return problems[:limit] if limit else list(problems)
    if not ids:
        raise ConfigError("lm_eval problem_ids: empty list")
    by_id = {p.id: p for p in problems}
    seen: set[str] = set()
    for pid in ids:
        if pid not in by_id:
            raise ConfigError(f"lm_eval problem_ids: '{pid}' is not a problem of {where}")
        if pid in seen:
            raise ConfigError(f"lm_eval problem_ids: '{pid}' given twice")
        seen.add(pid)
    return [by_id[pid] for pid in ids]


def _place(problems: list[Problem], chosen: list[Problem], leaves: list[dict]) -> dict[str, list[tuple[int, Problem]]]:
    """Each chosen problem's leaf task and its index among that task's test docs, by task then index."""
    where: dict[str, tuple[str, int]] = {}
    if len(leaves) == 1:
        where = {p.id: (leaves[0]["task"], i) for i, p in enumerate(problems)}
    else:  # a subject task's docs are the test rows of its subject in file order (see _subject_docs)
        task_of = {cfg["dataset_name"]: cfg["task"] for cfg in leaves}
        seen: dict[str, int] = {}
        for p in problems:
            subject = subject_id(p.metadata.get("subject", ""))
            if subject not in task_of:
                raise DataError(f"problem '{p.id}': subject '{p.metadata.get('subject')}' has no lm-eval task")
            where[p.id] = (task_of[subject], seen.get(subject, 0))
            seen[subject] = seen.get(subject, 0) + 1
    placed: dict[str, list[tuple[int, Problem]]] = {}
    for p in chosen:
        name, index = where[p.id]
        placed.setdefault(name, []).append((index, p))
    return {name: sorted(pairs, key=lambda x: x[0]) for name, pairs in sorted(placed.items())}


# ---------------------------------------------------------------------------------------------
# lm-eval task configs re-pointed at local files


def _leaf_configs(manager: Any, task: str) -> tuple[list[dict], dict | None]:
    """lm-eval's own YAML configs (functions resolved) of the task's leaves, and its group config."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml  # the loader TaskManager itself uses

    entry = manager.task_index.get(task)
    if entry is None:
        raise ConfigError(f"lm_eval task '{task}' is not in lm-eval {importlib.metadata.version('lm_eval')}")
    group = load_yaml(entry.yaml_path, resolve_func=False) if entry.kind == Kind.GROUP else None
    names = list(group["task"]) if group else [task]
    minerva = task.startswith("minerva_math")
    with _minerva_utils_importable() if minerva else contextlib.nullcontext():
        leaves = [load_yaml(manager.task_index[name].yaml_path, resolve_func=True) for name in names]
    if minerva:
        _use_math_verify_latex_parser(leaves[0]["process_results"])
    return leaves, group


def _local_config(cfg: dict, test_file: Path, fewshot_file: str | None, by_subject: bool) -> dict:
    """The same task config, reading its test (and few-shot) split from local JSONL files."""
    out = dict(cfg)
    files = {out["test_split"]: str(test_file)}
    split = out.get("fewshot_split")
    if split:
        if not fewshot_file:
            raise ConfigError(f"lm_eval task '{out['task']}': its few-shot split '{split}' has no local file")
        files[split] = fewshot_file
    out.update(dataset_path="json", dataset_kwargs={"data_files": files}, dataset_name=None)
    # training_split is only read when it is also the few-shot split; MATH's train file has an extra
    # column (level_raw) that the json builder refuses to merge with the test schema
    out["training_split"] = split if out.get("training_split") == split else None
    if by_subject:  # the group's hub dataset has one config per subject; our file has all subjects in one
        subject = cfg["dataset_name"]
        out["process_docs"] = functools.partial(_subject_docs, subject=subject, then=cfg.get("process_docs"))
    return out


def _subject_docs(dataset: Any, subject: str, then: Any = None) -> Any:
    """The rows of one MATH subject (its hub config name, e.g. 'counting_and_probability'), then the
    task's own processing."""
    rows = dataset.filter(lambda row: subject_id(row["subject"]) == subject)
    return then(rows) if then else rows


def _build(manager: Any, configs: list[dict], group: dict | None) -> list[Any]:
    tasks = list(manager.load(configs)["tasks"].values())
    if not group:
        return tasks
    from lm_eval.api.group import Group

    # a dict group spec would push aggregate_metric_list down into its tasks, so build the Group directly
    built = Group.from_config({**group, "task": [t.task_name for t in tasks]})
    for t in tasks:
        built.add(t)
    return [built]


@contextlib.contextmanager
def _minerva_utils_importable() -> Iterator[None]:
    """Let lm-eval's minerva_math/utils.py import under antlr4 4.9.3.

    It asserts antlr4 4.11 because sympy's parse_latex needs it, but hydra/omegaconf pin 4.9.3; the
    parser is swapped for math-verify's afterwards (_use_math_verify_latex_parser).
    """
    import math_verify  # noqa: F401  (before the fake: it picks its own parser by the real version)

    real = importlib.metadata.version

    def version(name: str) -> str:
        return "4.11.0" if name == "antlr4-python3-runtime" else real(name)

    importlib.metadata.version = version
    try:
        yield
    finally:
        importlib.metadata.version = real


def _use_math_verify_latex_parser(fn: Any) -> None:
    """minerva's is_equiv calls sympy's parse_latex, which raises ImportError under antlr4 4.9.3 and
    aborts the run; latex2sympy2_extended (math-verify's parser, built for 4.9.3) returns sympy too."""
    from latex2sympy2_extended import latex2sympy

    sys.modules[fn.__module__].parse_latex = latex2sympy


def _deviations(task: str, group: bool) -> list[str]:
    notes = ["data read from local JSONL (dataset_path: json) instead of the hub dataset"]
    if task.startswith("minerva_math"):
        notes.append(
            "exact_match: is_equiv parses LaTeX with latex2sympy2_extended instead of sympy.parse_latex "
            "(which needs antlr4 4.11; hydra pins 4.9.3)"
        )
    if group:
        notes.append("training_split dropped: unused, the 4 few-shot exemplars are hand-written")
        notes.append("subject tasks select their rows of math/test.jsonl by the 'subject' field")
    return notes


# ---------------------------------------------------------------------------------------------
# reading lm-eval's output


def _metrics(block: dict) -> tuple[dict[str, float], dict[str, float | None]]:
    metrics: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    for key, value in block.items():
        if "," not in key:
            continue  # alias, name, sample_len, sample_count
        metric, filt = key.split(",", 1)
        if metric.endswith("_stderr"):
            stderr[f"{metric[: -len('_stderr')]},{filt}"] = value if isinstance(value, (int, float)) else None
        else:
            metrics[key] = float(value)
    return metrics, stderr


def _records(samples: dict[str, list[dict]], placed: dict[str, list[tuple[int, Problem]]]) -> list[SampleRecord]:
    """One record per problem: lm-eval logs each doc once per filter."""
    records: dict[tuple[str, int], SampleRecord] = {}
    for name, logged in samples.items():
        problem_at = dict(placed.get(name, []))
        for s in logged:
            doc_id = int(s["doc_id"])
            if doc_id not in problem_at:
                raise DataError(f"lm-eval task '{name}' scored doc {doc_id}, which was not asked for")
            problem = problem_at[doc_id]
            _check_doc(problem, s["doc"], name, doc_id)
            rec = records.get((name, doc_id))
            if rec is None:
                rec = records[(name, doc_id)] = SampleRecord(
                    problem_id=problem.id,
                    lm_eval_task=name,
                    doc_id=doc_id,
                    prompt=str(s["arguments"][0][0]) if s.get("arguments") else "",
                    response=str(s["resps"][0][0]),
                    target=str(s["target"]),
                    extracted={},
                    correct={},
                )
            filt = s["filter"]
            rec.extracted[filt] = str(s["filtered_resps"][0])
            for metric in s["metrics"]:
                rec.correct[f"{metric},{filt}"] = bool(s[metric])
    return list(records.values())


def _bootstrap_cis(records: list[SampleRecord], metrics: dict[str, float]) -> dict[str, list[float]]:
    from harness.selection.metrics import bootstrap_ci

    out = {}
    for key in metrics:
        _, low, high = bootstrap_ci([float(r.correct[key]) for r in records])
        out[key] = [float(low), float(high)]
    return out


def _check_doc(problem: Problem, doc: dict, task: str, doc_id: int) -> None:
    """The doc lm-eval scored is the problem we meant (guards the index mapping)."""
    if problem.dataset == "math":
        same = doc.get("unique_id") == problem.id
    else:
        same = doc.get("question") == problem.question
    if not same:
        raise DataError(f"lm-eval task '{task}' doc {doc_id} is not problem '{problem.id}'")
