"""Declarative prompts: one conf/prompt/<name>.yaml per prompt, rendered for a problem.

A prompt is either plain few-shot text (`style: fewshot`) or a chat conversation rendered with the
model's own chat template (`style: chat`). Exemplars are given inline, or drawn from a train set
(`exemplars_from`), deterministically per problem and never the problem itself.

Templates name fields in braces: `{question}` (and `{subject}`, `{level}`) for the problem; exemplar
templates may also use `{solution}`, `{answer}` and metadata fields such as GSM8K's `{raw_answer}`.
`{{` and `}}` give literal braces; other braces (LaTeX `\\boxed{}`) are left alone.
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from harness.config import validate
from harness.data.problems import PROJECT_ROOT, Problem, ProblemSet, dataset_config, load_problems
from harness.errors import ConfigError

PROMPT_CONF_DIR = PROJECT_ROOT / "conf" / "prompt"
STYLES = ("fewshot", "chat")
SCHEMES = ("llmonk", "fixed")
PROBLEM_FIELDS = ("question", "subject", "level")  # never the reference answer or solution


@dataclass
class ExemplarsFrom:
    dataset: str = "gsm8k_train"  # a conf/dataset config name
    num: int = 2
    seed: int = 0
    scheme: str = "llmonk"  # llmonk: per-problem draw as in the Monkeys repo | fixed: one draw for all


@dataclass
class PromptSpec:
    name: str = "prompt"
    style: str = "fewshot"
    template: str = "{question}"
    exemplar_template: Optional[str] = None  # one few-shot exemplar; default: template + " {solution}"
    separator: str = "\n\n"  # between exemplars and before the question (fewshot style)
    exemplars: list[dict[str, Any]] = field(default_factory=list)
    exemplars_from: Optional[ExemplarsFrom] = None
    system: Optional[str] = None  # chat: a system message (null: whatever the chat template does)
    stop: list[str] = field(default_factory=list)
    answer_format: Optional[str] = None  # how the prompt asks for the answer: boxed, the_answer_is, ...
    source: Optional[str] = None  # where the prompt text comes from (paper / repository / file)

    @property
    def full_exemplar_template(self) -> str:
        return self.exemplar_template if self.exemplar_template is not None else self.template + " {solution}"


# ---------------------------------------------------------------------------------------------
# registry


def available_prompts() -> list[str]:
    return sorted(p.stem for p in PROMPT_CONF_DIR.glob("*.yaml"))


def load_prompt(prompt: Any) -> PromptSpec:
    """A PromptSpec from a conf/prompt name, a composed `cfg.prompt` node, a dict or a PromptSpec."""
    if isinstance(prompt, PromptSpec):
        return prompt
    if isinstance(prompt, str):
        path = PROMPT_CONF_DIR / f"{prompt}.yaml"
        if not path.is_file():
            raise ConfigError(f"prompt '{prompt}': no config {path} (known: {', '.join(available_prompts())})")
        prompt = OmegaConf.load(path)
    if is_dataclass(prompt):
        prompt = asdict(prompt)
    node = prompt if isinstance(prompt, DictConfig) else OmegaConf.create(prompt)
    spec = validate(OmegaConf.create({"prompt": node}), PromptSpec, "prompt")
    _check(spec)
    return spec


def _check(spec: PromptSpec) -> None:
    where = f"prompt '{spec.name}'"
    if spec.style not in STYLES:
        raise ConfigError(f"{where}: style '{spec.style}' is not one of {', '.join(STYLES)}")
    if "{question}" not in spec.template:
        raise ConfigError(f"{where}: template has no {{question}} placeholder")
    for name in _placeholders(spec.template):
        if name not in PROBLEM_FIELDS:
            raise ConfigError(f"{where}: template field {{{name}}} is not one of {', '.join(PROBLEM_FIELDS)}")
    if spec.exemplars and spec.exemplars_from:
        raise ConfigError(f"{where}: set either exemplars or exemplars_from, not both")
    for i, ex in enumerate(spec.exemplars):
        if "question" not in ex:
            raise ConfigError(f"{where}: exemplars[{i}] has no 'question'")
    src = spec.exemplars_from
    if src is not None:
        if src.scheme not in SCHEMES:
            raise ConfigError(f"{where}: exemplars_from.scheme '{src.scheme}' is not one of {', '.join(SCHEMES)}")
        if src.num < 1:
            raise ConfigError(f"{where}: exemplars_from.num must be >= 1, got {src.num}")


_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)\}")


def _placeholders(template: str) -> list[str]:
    return [m.group(1) for m in _FIELD.finditer(template) if m.group(1)]


def fill(template: str, fields: dict[str, Any], where: str = "template") -> str:
    """Substitute {name} fields; str.format would choke on the LaTeX braces prompts contain."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        name = m.group(1)
        if name not in fields:
            raise ConfigError(f"{where}: field {{{name}}} is not available (have: {', '.join(sorted(fields))})")
        value = fields[name]
        return "" if value is None else str(value)

    return _FIELD.sub(sub, template)


# ---------------------------------------------------------------------------------------------
# exemplars


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _exemplar_fields(p: Problem) -> dict[str, Any]:
    fields = {k: v for k, v in p.metadata.items() if isinstance(v, (str, int, float)) or v is None}
    fields.update(question=p.question, solution=p.solution, answer=p.answer, id=p.id)
    return fields


@lru_cache(maxsize=8)
def _llmonk_draws(n: int, k: int, seed: int, count: int) -> tuple[tuple[int, ...], ...]:
    # llmonk/generate/gsm8k.py: random.seed(seed), then random.sample(train, k) once per test row in order.
    # random.sample picks positions from len(population) alone, so sampling range(n) gives the same rows.
    rng = random.Random(seed)
    return tuple(tuple(rng.sample(range(n), k)) for _ in range(count))


@lru_cache(maxsize=8)
def _permutation(n: int, seed: Any) -> tuple[int, ...]:
    return tuple(random.Random(seed).sample(range(n), n))


def draw_exemplars(spec: PromptSpec, problem: Problem, train: Sequence[Problem]) -> list[Problem]:
    """The train problems shown before `problem`: deterministic, and never `problem` (same id or text)."""
    src = spec.exemplars_from
    n, k = len(train), src.num
    if n < k + 1:
        raise ConfigError(f"prompt '{spec.name}': exemplars_from.num={k} needs more than {n} train problems")
    text = _norm(problem.question)

    def ok(i: int) -> bool:
        return train[i].id != problem.id and _norm(train[i].question) != text

    index = problem.metadata.get("index")
    picked: list[int] = []
    if src.scheme == "llmonk" and isinstance(index, int):
        # Extend the cached sequence in powers of two so rendering a whole split costs one pass.
        count = 1 << max(10, (index + 1).bit_length())
        picked = [i for i in _llmonk_draws(n, k, src.seed, count)[index] if ok(i)]
        if len(picked) == k:
            return [train[i] for i in picked]
    # fixed: one shared order; otherwise (the problem drew itself, or has no row index) its own order.
    for i in _permutation(n, src.seed if src.scheme == "fixed" else f"{src.seed}/{problem.id}"):
        if len(picked) == k:
            break
        if ok(i) and i not in picked:
            picked.append(i)
    return [train[i] for i in picked]


@lru_cache(maxsize=4)
def _train_set(dataset: str, data_root: str | None) -> ProblemSet:
    return load_problems(dataset_config(dataset), data_root)


def exemplar_problems(
    spec: PromptSpec, data_root: str | Path | None = None, train_problems: Sequence[Problem] | None = None
) -> Sequence[Problem] | None:
    """The pool `exemplars_from` draws from (loaded from its dataset config unless given)."""
    if spec.exemplars_from is None:
        return None
    if train_problems is not None:
        return train_problems
    return _train_set(spec.exemplars_from.dataset, None if data_root is None else str(data_root))


def exemplars_for(
    spec: PromptSpec,
    problem: Problem,
    train_problems: Sequence[Problem] | None = None,
    data_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """The exemplars (as template fields) shown before `problem`, in prompt order."""
    if spec.exemplars_from is None:
        return [dict(ex) for ex in spec.exemplars]
    pool = exemplar_problems(spec, data_root, train_problems)
    return [_exemplar_fields(p) for p in draw_exemplars(spec, problem, pool)]


# ---------------------------------------------------------------------------------------------
# rendering


def _problem_fields(problem: Problem) -> dict[str, Any]:
    return {
        "question": problem.question,
        "subject": problem.metadata.get("subject", ""),
        "level": problem.metadata.get("level"),
    }


def messages(spec: PromptSpec, problem: Problem, exemplars: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The chat conversation: optional system message, exemplar turns, then the question."""
    where = f"prompt '{spec.name}'"
    msgs = [{"role": "system", "content": spec.system}] if spec.system else []
    for ex in exemplars:
        msgs.append({"role": "user", "content": fill(spec.template, ex, f"{where} exemplar")})
        msgs.append({"role": "assistant", "content": str(ex.get("solution", ""))})
    msgs.append({"role": "user", "content": fill(spec.template, _problem_fields(problem), where)})
    return msgs


def render(
    spec: PromptSpec | str,
    problem: Problem,
    tokenizer: Any = None,
    train_problems: Sequence[Problem] | None = None,
    data_root: str | Path | None = None,
) -> str:
    """The full prompt text for `problem` (chat style: through the tokenizer's chat template)."""
    spec = load_prompt(spec)
    where = f"prompt '{spec.name}'"
    exemplars = exemplars_for(spec, problem, train_problems, data_root)
    if spec.style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{where}: a chat prompt needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(
            messages(spec, problem, exemplars), add_generation_prompt=True, tokenize=False
        )
    shots = [fill(spec.full_exemplar_template, ex, f"{where} exemplar_template") for ex in exemplars]
    return "".join(s + spec.separator for s in shots) + fill(spec.template, _problem_fields(problem), where)


def stop_sequences(spec: PromptSpec | str) -> tuple[str, ...]:
    return tuple(load_prompt(spec).stop)


def prompt_fingerprint(
    spec: PromptSpec | str, train_problems: ProblemSet | None = None, data_root: str | Path | None = None
) -> str:
    """A hash of everything that shapes the rendered text: the spec and the exemplar pool's data.

    The model's chat template also shapes chat prompts; the store keys on the model identity for that.
    """
    from harness.store.samples import fingerprint

    spec = load_prompt(spec)
    pool = exemplar_problems(spec, data_root, train_problems)
    if pool is not None:
        pool = pool.sha256 if isinstance(pool, ProblemSet) else [p.id for p in pool]
    return fingerprint({"spec": asdict(spec), "exemplar_pool": pool})
