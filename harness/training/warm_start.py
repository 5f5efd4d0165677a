"""The SFT warm start: the embedded model fine-tuned once on ladder reference solutions, shared by every paper.

Every replicated paper starts from an SFT model; the shipped SmolLM2-135M-Instruct solves 1.4% of GSM8K,
so each claim on it is inconclusive. Fine-tuned on reference solutions of the easy ladder levels (all four
operations appear there), it sits at the edge of its ability across the ladder: high on the easy levels,
near zero on the top one, informative in between.

    path = warm_start_checkpoint(model_cfg)     # model_cfg has a `warm_start:` node (conf/model/smollm2_135m_sft.yaml)
    python -m harness.training.warm_start [model=smollm2_135m_sft] [warm_start.<key>=<value> ...]
    python -m harness.training.warm_start --report-only   # report.md + claims.json again from metrics.json

The checkpoint is identified by content: the base model's identity (its weights' sha256), the exact training
records (rendered prompts and completions, hence prompt, levels and generator version) and every training
setting that shapes the weights. Same inputs -> the same folder, reused; any change -> a new one.

Training uses TRL's SFTTrainer through harness.training.sft (loss on the completion tokens only).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.config import validate
from harness.data.problems import PROJECT_ROOT, Problem, dataset_config, load_problems
from harness.data.prompts import load_prompt, render
from harness.errors import ConfigError, HarnessError
from harness.training.checkpoints import is_checkpoint, load_checkpoint, save_checkpoint
from harness.training.config import training_config
from harness.training.data import TrainingData, reference_records

WARM_START_CONF_DIR = PROJECT_ROOT / "conf" / "warm_start"
MODEL_CONF_DIR = PROJECT_ROOT / "conf" / "model"
WARM_START_VERSION = 1  # bump when the recipe changes in a way its inputs do not show
# Training fields that leave the weights unchanged (score_labelled_positions_only: the same loss, computed on fewer
# rows; it moves the weights by float rounding only, as a different CPU does)
NOT_WEIGHT_SHAPING = ("name", "logging_steps", "measure_loss", "score_labelled_positions_only")


@dataclass
class WarmStartData:
    dataset: str = "ladder_train"  # a conf/dataset config
    levels: Optional[list[int]] = None  # null: every level
    per_level: Optional[int] = None  # the first N of each level (null: all the split has)


@dataclass
class WarmStartEval:
    dataset: str = "ladder"
    per_level: int = 40  # the first N test problems of each level
    levels: Optional[list[int]] = None  # null: every level
    max_new_tokens: int = 128
    backend: str = "hf"  # a conf/backend config
    n_boot: int = 2000


@dataclass
class WarmStartConfig:
    name: str = "warm_start"
    prompt: str = "ladder"  # a conf/prompt config: the same rendering in training and sampling
    data: WarmStartData = field(default_factory=WarmStartData)
    training: Any = None  # a conf/training config name, or a full training node
    cache_dir: str = "results/checkpoints/warm_start"  # relative to the working directory (gitignored)
    report_dir: str = "results/warm_start"
    eval: WarmStartEval = field(default_factory=WarmStartEval)


# ---------------------------------------------------------------------------------------------
# configs


def warm_start_config(node: Any) -> WarmStartConfig:
    """A conf/warm_start name, or a node (a `config: <name>` key in it names the file it overrides)."""
    if isinstance(node, WarmStartConfig):
        return node
    if isinstance(node, str):
        node = OmegaConf.create({"config": node})
    node = node if isinstance(node, DictConfig) else OmegaConf.create(node)
    base_name = node.get("config")
    if base_name is not None:
        path = WARM_START_CONF_DIR / f"{base_name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in WARM_START_CONF_DIR.glob("*.yaml")))
            raise ConfigError(f"config key 'warm_start': no config {path} (known: {known})")
        node = OmegaConf.merge(OmegaConf.load(path), {k: v for k, v in node.items() if k != "config"})
    cfg = validate(OmegaConf.create({"warm_start": node}), WarmStartConfig, "warm_start")
    cfg.training = _training_node(cfg.training)
    if cfg.eval.per_level < 1:
        raise ConfigError(f"config key 'warm_start.eval.per_level': must be >= 1, got {cfg.eval.per_level}")
    if cfg.data.per_level is not None and cfg.data.per_level < 1:
        raise ConfigError(f"config key 'warm_start.data.per_level': must be >= 1 or null, got {cfg.data.per_level}")
    return cfg


def _training_node(node: Any) -> Any:
    """The TrainingConfig of `warm_start.training`: a conf/training name or a node (`config:` = base name)."""
    if node is None:
        raise ConfigError("config key 'warm_start.training': missing (a conf/training name or node)")
    node = OmegaConf.create({"config": node}) if isinstance(node, str) else OmegaConf.create(node)
    base_name = node.get("config")
    if base_name is not None:
        path = PROJECT_ROOT / "conf" / "training" / f"{base_name}.yaml"
        if not path.is_file():
            raise ConfigError(f"config key 'warm_start.training.config': no config {path}")
        node = OmegaConf.merge(OmegaConf.load(path), {k: v for k, v in node.items() if k != "config"})
    try:
        return training_config(node)
    except ConfigError as err:
        raise ConfigError(f"warm_start.{err}") from None


def base_model_config(model_cfg: Any) -> DictConfig:
    """The model a warm start fine-tunes: the config without its `warm_start` node."""
    plain = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    plain.pop("warm_start", None)
    return OmegaConf.create(plain)


def model_config(name: str) -> DictConfig:
    path = MODEL_CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"config key 'model': no config {path}")
    return OmegaConf.load(path)


# ---------------------------------------------------------------------------------------------
# identity and data


def base_identity(base_cfg: Any) -> str:
    """The content identity of the base weights, without loading them where files can be hashed."""
    from harness.models.identity import record_identity, weights_record
    from harness.models.loading import resolve_source

    if base_cfg.get("random_init") or not (base_cfg.get("package") or base_cfg.get("path")):
        return _loaded_identity(json.dumps(OmegaConf.to_container(base_cfg, resolve=True), sort_keys=True))
    where, gguf_file = resolve_source(base_cfg)
    return record_identity({**weights_record(where, gguf_file), "dtype": str(base_cfg.get("dtype") or "float32")})


@lru_cache(maxsize=8)
def _loaded_identity(base_cfg_json: str) -> str:
    """A random-init (tiny) or hub model's identity needs the loaded model; remembered per config."""
    from harness.models.loading import load_model

    return load_model(OmegaConf.create(json.loads(base_cfg_json))).identity


def _tokenizer(base_cfg: Any) -> Any:
    from harness.models.gguf_cache import load_tokenizer
    from harness.models.loading import resolve_source

    source = base_cfg.random_init.tokenizer if base_cfg.get("random_init") else base_cfg
    return load_tokenizer(*resolve_source(source))


def first_per_level(problems: Sequence[Problem], per_level: Optional[int]) -> list[Problem]:
    taken: dict[Any, int] = {}
    out = []
    for p in problems:
        level = p.metadata.get("level")
        if per_level is None or taken.get(level, 0) < per_level:
            taken[level] = taken.get(level, 0) + 1
            out.append(p)
    return out


def training_data(cfg: WarmStartConfig, tokenizer: Any) -> TrainingData:
    """Prompt (rendered as in sampling) + reference solution, for the chosen levels of the train split."""
    dataset = dataset_config(cfg.data.dataset)
    dataset.levels = cfg.data.levels
    problem_set = load_problems(dataset)
    problems = first_per_level(problem_set.problems, cfg.data.per_level)
    spec = load_prompt(cfg.prompt)
    prompts = {p.id: render(spec, p, tokenizer) for p in problems}
    records = reference_records(problems, prompts, lambda p: p.solution)
    provenance = {"dataset": problem_set.provenance(), "levels": cfg.data.levels, "per_level": cfg.data.per_level}
    return TrainingData(records, provenance)


def cache_key(cfg: WarmStartConfig, base: str, data: TrainingData) -> str:
    from harness.models.identity import json_sha256

    training = {k: v for k, v in asdict(cfg.training).items() if k not in NOT_WEIGHT_SHAPING}
    return json_sha256({"version": WARM_START_VERSION, "base": base, "data_sha256": data.sha256, "training": training})


@dataclass
class Plan:
    """What a warm start would train, and where its checkpoint lives."""

    cfg: WarmStartConfig
    base_cfg: DictConfig
    base_identity: str
    data: TrainingData
    key: str

    @property
    def dir(self) -> Path:
        return Path(self.cfg.cache_dir) / f"{self.cfg.name}-{self.key[:16]}"


def plan(model_cfg: Any) -> Plan:
    ws_node = model_cfg.get("warm_start")
    if ws_node is None:
        raise ConfigError(f"model '{model_cfg.get('name')}': no warm_start node")
    cfg = warm_start_config(ws_node)
    base_cfg = base_model_config(model_cfg)
    chat = load_prompt(cfg.prompt).style == "chat"  # only a chat prompt needs the tokenizer to be rendered
    data = training_data(cfg, _tokenizer(base_cfg) if chat else None)
    identity = base_identity(base_cfg)
    return Plan(cfg, base_cfg, identity, data, cache_key(cfg, identity, data))


# ---------------------------------------------------------------------------------------------
# training


def trained_problem_ids(model_cfg: Any) -> set[str]:
    """The problems whose reference solutions the warm start of `model_cfg` was trained on (empty without one):
    a paper that samples, judges or trains on "new" prompts leaves these out, as its paper's prompts are new
    to the SFT model."""
    if not model_cfg.get("warm_start"):
        return set()
    return {r["problem_id"] for r in plan(model_cfg).data.records}


def supervised_tokens(data: TrainingData, tokenizer: Any) -> tuple[int, int]:
    """(completion tokens + EOS, all tokens) over one pass of the data."""
    completion = sum(len(tokenizer(r["completion"], add_special_tokens=False).input_ids) + 1 for r in data.records)
    prompt = sum(len(tokenizer(r["prompt"]).input_ids) for r in data.records)
    return completion, completion + prompt


def train(p: Plan, loaded: Any = None) -> dict:
    """Fine-tune the base model (`loaded`, or loaded here) on the plan's data and save the checkpoint; returns the
    training record. A model passed in is updated in place."""
    import tempfile

    import torch

    from harness.models.loading import load_model
    from harness.training.sft import train_sft

    load_s = None  # a model passed in was loaded (and timed) by the caller
    if loaded is None:
        start = time.perf_counter()
        loaded = load_model(p.base_cfg)
        load_s = round(time.perf_counter() - start, 2)
    cpu_start = time.process_time()  # CPU seconds of all threads: comparable across loads of a shared machine
    with tempfile.TemporaryDirectory(prefix="warm_start-") as scratch:
        result = train_sft(loaded.model, loaded.tokenizer, p.data, p.cfg.training, scratch)
    cpu_seconds = time.process_time() - cpu_start
    completion, total = supervised_tokens(p.data, loaded.tokenizer)
    t = p.cfg.training
    examples_seen = result.steps * t.batch_size * t.gradient_accumulation_steps
    passes = min(examples_seen / len(p.data), float(t.epochs) if t.max_steps <= 0 else float("inf"))
    record = {
        "warm_start": asdict(p.cfg),
        "base_model": {"name": p.base_cfg.get("name"), "identity": p.base_identity},
        "cache_key": p.key,
        "data": p.data.describe(),
        "train": {**result.summary(), "load_seconds": load_s, "examples_seen": examples_seen,
                  "supervised_tokens": round(completion * passes), "tokens": round(total * passes),
                  "supervised_tokens_per_s": round(completion * passes / max(result.seconds, 1e-9), 1),
                  "tokens_per_s": round(total * passes / max(result.seconds, 1e-9), 1),
                  "cpu_seconds": round(cpu_seconds, 1),
                  "supervised_tokens_per_cpu_s": round(completion * passes / max(cpu_seconds, 1e-9), 1),
                  "torch_threads": torch.get_num_threads(), "load_average": _load_average()},
    }
    save_checkpoint(result.model, loaded.tokenizer, p.dir, name=p.cfg.name,
                    chat_template=bool(p.base_cfg.get("chat_template", False)), meta=record)
    return record


def warm_start_checkpoint(model_cfg: Any) -> Path:
    """The warm-started checkpoint folder for a model config with a `warm_start` node: trained the first time,
    then found by its content key."""
    p = plan(model_cfg)
    if not is_checkpoint(p.dir):
        train(p)
    return p.dir


def _load_average() -> Optional[list[float]]:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# evaluation: greedy pass@1 per level, strict


def evaluate(loaded: Any, cfg: WarmStartConfig) -> dict:
    """Greedy pass@1 per level on the first `eval.per_level` test problems of each level (strict grading).

    Remembered under `<cache_dir>/evals/` by the model identity, the exact prompts and the sampling settings,
    so a rerun (or the "before" column of another warm start from the same base) does not sample again.
    """
    from harness.models.identity import json_sha256
    from harness.sampling.base import SampleRequest, SamplingParams

    dataset = dataset_config(cfg.eval.dataset)
    dataset.levels = cfg.eval.levels
    problems = first_per_level(load_problems(dataset).problems, cfg.eval.per_level)
    spec = load_prompt(cfg.prompt)
    requests = [SampleRequest(p.id, render(spec, p, loaded.tokenizer), (0,)) for p in problems]
    params = SamplingParams(temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens, stop=tuple(spec.stop))
    key = json_sha256({"model": loaded.identity, "prompts": [(r.key, r.prompt) for r in requests],
                       "answers": [p.answer for p in problems], "params": params.as_dict(),
                       "backend": cfg.eval.backend, "n_boot": cfg.eval.n_boot})
    cached = Path(cfg.cache_dir) / "evals" / f"{key[:32]}.json"
    if cached.is_file():
        return {**json.loads(cached.read_text()), "cached": True}
    result = _sample_and_grade(loaded, cfg, problems, requests, params)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + ".partial")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(cached)
    return result


def _sample_and_grade(loaded: Any, cfg: WarmStartConfig, problems: Sequence[Problem], requests: list, params: Any) -> dict:
    import numpy as np

    from harness.data.ladder import strict_correct
    from harness.sampling.factory import make_sampler
    from harness.selection.metrics import bootstrap_ci

    backend = OmegaConf.load(PROJECT_ROOT / "conf" / "backend" / f"{cfg.eval.backend}.yaml")
    sampler = make_sampler(backend, loaded)
    start = time.perf_counter()
    done = {c.key: c for c in sampler.sample(requests, params)}
    seconds = time.perf_counter() - start
    by_level: dict[int, list[bool]] = {}
    for p in problems:
        c = done[p.id]
        by_level.setdefault(p.metadata["level"], []).append(strict_correct(c.text, p.answer, c.finish_reason))
    levels = {}
    for level, ok in sorted(by_level.items()):
        mean, low, high = bootstrap_ci(np.asarray(ok, dtype=float), n_boot=cfg.eval.n_boot, seed=0)
        levels[str(level)] = {"n": len(ok), "correct": int(sum(ok)), "pass@1": round(float(mean), 4),
                              "ci95": [round(float(low), 4), round(float(high), 4)]}
    examples = {p.id: done[p.id].text for p in problems[:: max(1, len(problems) // 4)]}
    return {"levels": levels, "seconds": round(seconds, 1), "generated_tokens": sum(c.num_tokens for c in done.values()),
            "truncated": sum(c.finish_reason == "length" for c in done.values()), "examples": examples}


# ---------------------------------------------------------------------------------------------
# report


STAGE_LIMIT_S = 900.0  # issue 10: load, train and evaluate within 15 minutes
FRONTIER = (0.5, 0.1)  # issue 10: >= 50% on level 1, <= 10% on the top level ...
# ... and at least two levels in between: neither at the floor (<= 10%) nor solved (>= 90%), where sampling,
# reranking and training can still move accuracy either way
FRONTIER_BAND = (0.1, 0.9)


def write_report(out_dir: Path, record: dict, before: dict, after: dict, wall: dict) -> Path:
    """metrics.json, the loss plot, report.md and claims.json of one warm start."""
    from harness.reporting.paths import portable_tree

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = portable_tree({"training": record, "before": before, "after": after, "wall_seconds": wall})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _loss_plot(record["train"]["log"], out_dir / "loss.png")
    return report_from_metrics(out_dir, metrics)


def rebuild_report(run_dir: Path) -> Path:
    """report.md and claims.json again from a run's metrics.json: no training, no sampling."""
    from harness.errors import DataError, read_json

    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path, "warm-start metrics")
    for key in ("training", "after", "wall_seconds"):
        if not isinstance(metrics, dict) or not isinstance(metrics.get(key), dict):
            raise DataError(f"{path}: field '{key}' missing or not an object")
    if not (Path(run_dir) / "loss.png").is_file():
        _loss_plot(metrics["training"]["train"]["log"], Path(run_dir) / "loss.png")
    return report_from_metrics(Path(run_dir), metrics)


def report_from_metrics(out_dir: Path, metrics: dict) -> Path:
    """report.md, and claims.json beside it through Report.write, from the content of metrics.json."""
    import pandas as pd

    from harness.reporting.report import Report, format_estimate

    record, before, after, wall = metrics["training"], metrics.get("before"), metrics["after"], metrics["wall_seconds"]
    t = record["train"]
    ws_cfg = record["warm_start"]
    if t.get("loss_before") is not None:
        loss = f"loss {t['loss_before']} -> {t['loss_after']} on the training data"
    else:
        train_loss = t.get("train_loss")
        loss = f"mean training loss {train_loss:.4f}" if isinstance(train_loss, float) else "mean training loss ?"
    report = Report(f"Warm start `{ws_cfg['name']}`", paper="warm_start", run=ws_cfg["name"],
                    model=record["base_model"]["name"], dataset=(ws_cfg.get("eval") or {}).get("dataset"))
    report.text(
        f"The base weights of `model={record['base_model']['name']}` ({record['base_model']['identity']}), fine-tuned on "
        f"{record['data']['examples']} ladder reference solutions (levels {ws_cfg['data']['levels']}, "
        f"prompt `{ws_cfg['prompt']}`), loss on the completion tokens only. Cache key {record['cache_key'][:16]}.")
    report.bullets([
        f"train: {t['steps']} steps in {t['seconds']} s; {t['supervised_tokens_per_s']} supervised tokens/s "
        f"({t['tokens_per_s']} tokens/s in all); {loss}",
        f"load average at the end of training: {t['load_average']}; torch threads {t['torch_threads']}; "
        f"{t.get('cpu_seconds', '?')} CPU s ({t.get('supervised_tokens_per_cpu_s', '?')} supervised tokens per CPU s)",
        f"wall time (s): {', '.join(f'{k} {v}' for k, v in wall.items())}",
    ])

    def cell(level_result: dict | None) -> str:
        if not level_result:
            return "-"
        return format_estimate(level_result["pass@1"], *level_result["ci95"])

    rows = [(level, a["n"], cell((before or {}).get("levels", {}).get(level)), cell(a))
            for level, a in after["levels"].items()]
    report.table(pd.DataFrame(rows, columns=["level", "n", "before", "after"], dtype=object),
                 "Greedy pass@1 per level (strict: the number after the last \"The answer is\"; truncated = wrong), "
                 "bootstrap 95% CI")
    for label, ev in (("before", before), ("after", after)):
        if ev:
            report.text(f"{label}: {ev['generated_tokens']} tokens generated in {ev['seconds']} s, "
                        f"{ev['truncated']} completions truncated at eval.max_new_tokens"
                        + (" (cached)" if ev.get("cached") else ""))
    report.claims.extend(frontier_claims(metrics))
    report.claims_section()
    report.figure("loss.png", "train loss")
    return report.write(out_dir / "report.md")


def _levels_after(metrics: dict) -> list[tuple[int, dict]]:
    return sorted((int(level), result) for level, result in metrics["after"]["levels"].items())


def _estimate(level_result: dict) -> str:
    from harness.reporting.report import format_estimate

    return format_estimate(level_result["pass@1"], *level_result["ci95"], n=level_result["n"])


def frontier_claims(metrics: dict) -> list:
    """Issue 10's targets for the warm start, each judged on the 95% CI (clear of its threshold, or inconclusive).

    (a) >= 50% greedy pass@1 on the lowest level, (b) <= 10% on the top level, (c) at least two levels in between
    with 10% < pass@1 < 90%, (d) load, train and evaluate in <= 15 minutes of wall time.
    """
    from harness.reporting.claims import Claim

    high_bar, low_bar = FRONTIER
    levels = _levels_after(metrics)
    (first, first_result), (top, top_result) = levels[0], levels[-1]
    claims = []

    low, high = first_result["ci95"]
    status = "holds" if low >= high_bar else "fails" if high < high_bar else "inconclusive"
    claims.append(Claim(f"After the warm start, greedy pass@1 on level {first} is >= {high_bar:.0%}", status,
                        f"level {first}: {_estimate(first_result)}; CI "
                        + {"holds": "clear above", "fails": "wholly below", "inconclusive": "straddles"}[status]
                        + f" {high_bar:.0%}", n=first_result["n"], ours=_estimate(first_result)))

    low, high = top_result["ci95"]
    status = "holds" if high <= low_bar else "fails" if low > low_bar else "inconclusive"
    claims.append(Claim(f"After the warm start, greedy pass@1 on the top level ({top}) is <= {low_bar:.0%}", status,
                        f"level {top}: {_estimate(top_result)}; CI "
                        + {"holds": "at or below", "fails": "wholly above", "inconclusive": "straddles"}[status]
                        + f" {low_bar:.0%}", n=top_result["n"], ours=_estimate(top_result)))

    middle = levels[1:-1]
    band_low, band_high = FRONTIER_BAND
    surely = [lv for lv, r in middle if r["ci95"][0] > band_low and r["ci95"][1] < band_high]
    possibly = [lv for lv, r in middle if r["ci95"][1] > band_low and r["ci95"][0] < band_high]
    name = (f"At least two levels between level {first} and the top level have {band_low:.0%} < greedy pass@1 "
            f"< {band_high:.0%} (neither at the floor nor solved)")
    pointwise = [lv for lv, r in middle if band_low < r["pass@1"] < band_high]
    listing = f"point estimates inside: levels {pointwise}. " + "; ".join(f"level {lv}: {_estimate(r)}" for lv, r in middle)
    if len(middle) < 2:
        status, why = "inconclusive", f"only {len(middle)} levels evaluated between level {first} and level {top}"
    elif len(surely) >= 2:
        status, why = "holds", f"levels {surely} have their CI inside ({band_low:.0%}, {band_high:.0%})"
    elif len(possibly) < 2:
        status, why = "fails", f"only levels {possibly} have a CI reaching into ({band_low:.0%}, {band_high:.0%})"
    else:
        status, why = "inconclusive", (f"CI inside ({band_low:.0%}, {band_high:.0%}): levels {surely}; "
                                       f"reaching into it: levels {possibly}")
    per_level = {r["n"] for _, r in middle}
    claims.append(Claim(name, status, f"{why}. {listing}", n=per_level.pop() if len(per_level) == 1 else None,
                        ours="; ".join(f"L{lv} {_estimate(r)}" for lv, r in middle if lv in possibly) or None))

    wall = metrics["wall_seconds"]
    total = float(wall["total"])
    train = metrics["training"]["train"]
    reused = [stage for stage in wall if "cached" in stage] + [
        f"eval {label} (cached)" for label in ("before", "after") if (metrics.get(label) or {}).get("cached")]
    if total > STAGE_LIMIT_S:
        status = "fails"
    else:
        status = "inconclusive" if reused else "holds"
    evidence = (f"{total:.0f} s of wall time against {STAGE_LIMIT_S:.0f} s ("
                + ", ".join(f"{k} {v} s" for k, v in wall.items() if k != "total")
                + f"); load average (1, 5, 15 min) {train.get('load_average')} at the end of training, torch threads "
                f"{train.get('torch_threads')}, {train.get('cpu_seconds', '?')} CPU s of training")
    if "eval_before" in wall:
        evidence += f"; {total - float(wall['eval_before']):.0f} s without eval_before (the base model's evaluation)"
    if reused:
        evidence += f"; reused, so not timed here: {', '.join(reused)}"
    claims.append(Claim(f"The warm start (load, train, evaluate) takes <= {STAGE_LIMIT_S / 60:.0f} min of wall time",
                        status, evidence, ours=f"{total:.0f} s"))
    return claims


def _loss_plot(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r.get("step", i + 1) for i, r in enumerate(log)], [r["loss"] for r in log])
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (completion tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.training.warm_start [--report-only] [model=<conf/model name>] [warm_start.<key>=<value> ...]`

    --report-only rewrites report.md and claims.json of the configured run folder from its metrics.json.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        model_name = "smollm2_135m_sft"
        overrides = []
        report_only = False
        for arg in args:
            key, _, value = arg.partition("=")
            if arg == "--report-only":
                report_only = True
            elif key == "model":
                model_name = value
            elif key.startswith("warm_start."):
                overrides.append(arg)
            else:
                raise ConfigError(f"argument '{arg}': expected --report-only, model=<name> or warm_start.<key>=<value>")
        model_cfg = model_config(model_name)
        if overrides:
            node = model_cfg.warm_start
            node = OmegaConf.create({"config": node}) if isinstance(node, str) else node
            model_cfg.warm_start = OmegaConf.merge(node, OmegaConf.from_dotlist([a[len("warm_start."):] for a in overrides]))
        if report_only:
            cfg = warm_start_config(model_cfg.warm_start)
            print(f"report: {rebuild_report(Path(cfg.report_dir) / cfg.name)}")
            return 0
        return run(model_cfg)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(model_cfg: Any) -> int:
    from harness.models.loading import load_model

    wall: dict[str, float] = {}
    start = time.perf_counter()
    p = plan(model_cfg)
    wall["plan"] = round(time.perf_counter() - start, 1)
    print(f"warm start {p.cfg.name}: {len(p.data)} examples, checkpoint {p.dir}", flush=True)
    t = time.perf_counter()
    base = load_model(p.base_cfg)  # once: evaluated, then trained in place
    wall["load"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    before = evaluate(base, p.cfg)
    wall["eval_before"] = round(time.perf_counter() - t, 1)
    print("before:", {k: v["pass@1"] for k, v in before["levels"].items()}, flush=True)
    t = time.perf_counter()
    if is_checkpoint(p.dir):
        record = load_checkpoint(p.dir).meta
        wall["train (cached)"] = 0.0
    else:
        record = train(p, base)
        wall["train"] = round(time.perf_counter() - t, 1)
    print("train:", {k: record["train"][k] for k in ("steps", "seconds", "supervised_tokens_per_s")}, flush=True)
    t = time.perf_counter()
    after = evaluate(load_checkpoint(p.dir).load(), p.cfg)
    wall["eval_after"] = round(time.perf_counter() - t, 1)
    wall["total"] = round(time.perf_counter() - start, 1)
    print("after:", {k: v["pass@1"] for k, v in after["levels"].items()}, flush=True)
    report = write_report(Path(p.cfg.report_dir) / p.cfg.name, record, before, after, wall)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
