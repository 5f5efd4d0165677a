"""Train the embedded reward model from graded samples: outcome labels, Math-Shepherd step labels, a value head.

Labels (Wang et al. 2024, Math-Shepherd, "soft estimation"):
- every solution's last step gets its outcome (the grader's verdict);
- an intermediate step k gets the fraction of rollouts from the prefix "steps 1..k" that reach the
  reference answer; the sampled solution's own continuation is itself such a rollout, so it counts too
  (`include_original`). Only `max_prefixes` prefixes are rolled out: that is the CPU budget knob.

The head is an L2-regularised logistic regression (scikit-learn) on the backbone's hidden states at
each step's end, fitted on soft targets by giving each row a positive copy weighted p and a negative
copy weighted 1 - p. TRL 1.16 has no PRM trainer, and its RewardTrainer (pairwise Bradley-Terry,
full fine-tuning of a sequence classifier) neither takes per-step soft labels nor fits the CPU budget.

Evaluation is cross-fitted by problem: with `folds` folds, each problem's solutions are scored by the
head fitted on the other folds' problems, so every reported accuracy is held out, and the strategies
that use the reward model on a problem never use a head that saw that problem's labels.

Easy-to-hard training (`train_on_problems`) is the other regime: one head fitted on an explicit problem
subset (e.g. the easy levels of a train split) and used on different (hard, test) problems, so nothing is
cross-fitted; the ids it was fitted on are recorded in its provenance and on the result.

Exact step labels (`exact_step_labels`, method `exact`) replace rollouts where the reference solution is a
chain of checkable steps (the ladder: one `a op b = c` per line, each sentence of the question one operation).
Math-Shepherd labels a step by whether its prefix can still reach the right answer; on the ladder a prefix
can iff every line is true arithmetic, each line continues the previous line's result, and the running
quantity equals the reference's after as many operations. That is what infinitely many rollouts by a perfect
completer would estimate, at no rollout cost. Once a step is wrong every later step is wrong (a later line
cannot repair the chain it continues). The last step keeps the grader's verdict, as for every method, so the
PRM's last-step label and the ORM's label are the same.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness.errors import ConfigError, DataError
from harness.reward.models import EmbeddedHeadRM, LinearHead, RewardModelConfig, TruncatedBackbone, split_steps


STEP_LABEL_METHODS = ("math_shepherd", "outcome", "exact")


@dataclass
class StepLabelConfig:
    method: str = "math_shepherd"  # math_shepherd: rollouts from step prefixes | outcome: every step gets the outcome
    #                                exact: computed from the reference steps (ladder problems; exact_step_labels)
    max_prefixes: int = 64  # intermediate prefixes rolled out (the CPU budget knob)
    rollouts: int = 3  # new completions per prefix
    include_original: bool = True  # the sampled solution's own continuation counts as one more rollout
    max_new_tokens: int = 256
    seed: int = 0


@dataclass
class TrainingConfig:
    folds: int = 2  # cross-fitting folds over problems (>= 2)
    C: float = 0.05  # inverse L2 strength of the logistic head
    class_weight: str = "balanced"  # balanced | none (correct solutions are rare for a small model)
    max_iter: int = 2000
    seed: int = 0
    step_labels: StepLabelConfig = field(default_factory=StepLabelConfig)


def training_config(node) -> TrainingConfig:
    from omegaconf import OmegaConf

    from harness.config import validate

    cfg = validate(OmegaConf.create({"training": node or {}}), TrainingConfig, "training")
    if cfg.folds < 2:
        raise ConfigError(f"reward_model.training.folds: need >= 2 for held-out scores, got {cfg.folds}")
    if cfg.step_labels.method not in STEP_LABEL_METHODS:
        raise ConfigError(f"reward_model.training.step_labels.method: '{cfg.step_labels.method}' is not one of "
                          f"{', '.join(STEP_LABEL_METHODS)}")
    if cfg.class_weight not in ("balanced", "none"):
        raise ConfigError(f"reward_model.training.class_weight: '{cfg.class_weight}' is not one of balanced, none")
    return cfg


@dataclass
class LabelledSolution:
    problem_id: str
    index: int
    question: str
    steps: list[str]
    outcome: bool
    step_targets: list[float | None]  # per step; None = not estimated. The last step's is the outcome.
    rollouts: list[int] = field(default_factory=list)  # per step: how many rollouts its target averages


def labelled_solutions(graded: pd.DataFrame, questions: Mapping[str, str], separator: str) -> list[LabelledSolution]:
    """One labelled solution per graded sample (columns problem_id, index, text, correct); empty texts skipped."""
    out = []
    for row in graded.sort_values(["problem_id", "index"]).itertuples():
        steps = split_steps(row.text, separator)
        if not steps:
            continue
        targets: list[float | None] = [None] * len(steps)
        targets[-1] = float(bool(row.correct))
        counts = [0] * len(steps)
        counts[-1] = 1
        out.append(LabelledSolution(row.problem_id, int(row.index), questions[row.problem_id], steps,
                                    bool(row.correct), targets, counts))
    return out


def prefix_text(steps: Sequence[str], k: int, separator: str) -> str:
    """The text of the first k steps, ending where the policy continues (after the separator)."""
    return separator.join(steps[:k]) + separator


def choose_prefixes(solutions: Sequence[LabelledSolution], max_prefixes: int, seed: int = 0) -> list[tuple[int, int]]:
    """(solution position, k) pairs to roll out: intermediate prefixes, half from correct solutions where possible.

    Correct solutions are rare for a small policy; drawing uniformly would label almost only steps of
    wrong solutions, so both outcomes get an equal share of the budget (the rest goes to whichever has more).
    """
    rng = np.random.default_rng(seed)
    pools: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    for i, s in enumerate(solutions):
        for k in range(1, len(s.steps)):
            pools[s.outcome].append((i, k))
    for pool in pools.values():
        rng.shuffle(pool)
    half = max_prefixes // 2
    take_pos = min(len(pools[True]), max(half, max_prefixes - len(pools[False])))
    take_neg = min(len(pools[False]), max_prefixes - take_pos)
    return sorted(pools[True][:take_pos] + pools[False][:take_neg])


def prefix_key(sol: LabelledSolution, k: int) -> str:
    return f"{sol.problem_id}#s{sol.index}#k{k}"


# rollout_fn({key: prefix text to continue}, n) -> {key: [correct?] * n}
RolloutFn = Callable[[Mapping[str, str], int], Mapping[str, Sequence[bool]]]


def math_shepherd_labels(
    solutions: Sequence[LabelledSolution],
    prefixes: Sequence[tuple[int, int]],
    rollout_fn: RolloutFn,
    cfg: StepLabelConfig,
    separator: str,
) -> dict:
    """Fill step_targets of the chosen prefixes with the fraction of rollouts that reach the right answer."""
    if not prefixes:
        return {"prefixes": 0, "rollouts": 0}
    keyed = {prefix_key(solutions[i], k): (i, k) for i, k in prefixes}
    texts = {key: prefix_text(solutions[i].steps, k, separator) for key, (i, k) in keyed.items()}
    results = rollout_fn(texts, cfg.rollouts)
    for key, (i, k) in keyed.items():
        got = [bool(c) for c in results[key]]
        if cfg.include_original:
            got.append(solutions[i].outcome)
        solutions[i].step_targets[k - 1] = float(np.mean(got)) if got else None
        solutions[i].rollouts[k - 1] = len(got)
    targets = [solutions[i].step_targets[k - 1] for i, k in prefixes]
    return {"prefixes": len(prefixes), "rollouts": len(prefixes) * cfg.rollouts,
            "mean_target": float(np.mean([t for t in targets if t is not None])) if targets else None,
            "nonzero_targets": int(sum(1 for t in targets if t))}


def outcome_step_labels(solutions: Sequence[LabelledSolution]) -> None:
    """The cheap alternative to rollouts: every step inherits the solution's outcome."""
    for s in solutions:
        s.step_targets = [float(s.outcome)] * len(s.steps)
        s.rollouts = [1] * len(s.steps)


def exact_step_targets(steps: Sequence[str], reference_steps: Sequence[str], outcome: bool) -> list[float]:
    """Exact labels of a ladder solution's steps against its reference chain (see the module doc); the last
    step gets `outcome` (the grader's verdict)."""
    from harness.data.ladder import STEP_LINE, apply

    reference = [STEP_LINE.match(r.strip()) for r in reference_steps]
    if not reference or not all(reference):
        raise DataError(f"exact step labels: reference steps {list(reference_steps)!r} are not all 'a op b = c'")
    values = [int(reference[0].group(1))] + [int(m.group(4)) for m in reference]  # the quantity after k operations
    targets: list[float] = []
    chain_ok = True
    for k, line in enumerate(steps[:-1]):
        m = STEP_LINE.match(line.strip())
        if chain_ok and m and k + 1 < len(values):
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            previous = values[k]
            continues = previous in (a, b) if op in "+*" else a == previous  # + and * may be written either way
            try:
                true = apply(op, a, b) == c
            except (DataError, ZeroDivisionError):  # an inexact or zero division is a wrong line
                true = False
            chain_ok = continues and true and c == values[k + 1]
        else:
            chain_ok = False
        targets.append(float(chain_ok))
    return targets + [float(bool(outcome))]


def exact_step_labels(solutions: Sequence[LabelledSolution], reference_steps: Mapping[str, Sequence[str]]) -> dict:
    """Set every step target of every solution from its problem's reference steps (`reference_steps[problem_id]`)."""
    missing = sorted({s.problem_id for s in solutions} - set(reference_steps))
    if missing:
        raise DataError(f"exact step labels: problem '{missing[0]}' has no reference steps (a ladder problem's "
                        "`steps` field); use step_labels.method math_shepherd or outcome")
    intermediate = correct = 0
    for s in solutions:
        s.step_targets = exact_step_targets(s.steps, reference_steps[s.problem_id], s.outcome)
        s.rollouts = [0] * (len(s.steps) - 1) + [1]  # no rollouts: computed, not estimated
        intermediate += len(s.steps) - 1
        correct += int(sum(s.step_targets[:-1]))
    return {"labelled_intermediate_steps": intermediate, "correct_intermediate_steps": correct,
            "correct_share": correct / intermediate if intermediate else None}


def training_rows(features: Sequence[np.ndarray], solutions: Sequence[LabelledSolution], level: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(X, soft targets): every labelled step for a PRM, only last steps for an ORM."""
    xs, ys = [], []
    for f, s in zip(features, solutions):
        steps = [len(s.steps) - 1] if level == "orm" else [k for k, t in enumerate(s.step_targets) if t is not None]
        for k in steps:
            xs.append(f[k])
            ys.append(s.step_targets[k] if level == "prm" else float(s.outcome))
    if not xs:
        raise DataError("reward model training: no labelled steps")
    return np.stack(xs), np.asarray(ys, dtype=float)


def fit_head(x: np.ndarray, y: np.ndarray, cfg: TrainingConfig) -> LinearHead:
    """Logistic regression on standardised features with soft targets (duplicated rows, weights p and 1-p)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    z = (x - mean) / scale
    xx = np.concatenate([z, z])
    yy = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    w = np.concatenate([y, 1.0 - y])
    keep = w > 0
    xx, yy, w = xx[keep], yy[keep], w[keep]
    if len(set(yy.tolist())) < 2:
        # One class only (e.g. no correct solution at all): nothing to rank by, so every step scores that
        # class's probability; weighted voting then equals majority voting, best-of-N a random pick.
        p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        return LinearHead(mean, scale, np.zeros(x.shape[1]), float(np.log(p / (1 - p))))
    if cfg.class_weight == "balanced":
        pos = w[yy == 1].sum()
        neg = w[yy == 0].sum()
        w = np.where(yy == 1, w * (pos + neg) / (2 * pos), w * (pos + neg) / (2 * neg))
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
    clf.fit(xx, yy, sample_weight=w)
    return LinearHead(mean, scale, clf.coef_[0].astype(float), float(clf.intercept_[0]))


def outcome_metrics(scores: Sequence[float], labels: Sequence[bool], problems: Sequence[str] | None = None) -> dict:
    """Held-out quality of solution scores as predictors of correctness (chance: AUC 0.5, balanced accuracy 0.5).

    With `problems` (each solution's problem), also the mean AUC within a problem over the problems that have
    both right and wrong solutions: what voting and best-of-N use. The pooled AUC also rewards telling easy
    problems from hard ones, which reranking the samples of one problem cannot use (measured on the
    compute-optimal ladder pool, an 8-layer hidden-state head: pooled 0.698, within a problem 0.475, n=1,600).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    out = {"n": int(len(y)), "positives": int(y.sum()), "base_rate": float(y.mean()) if len(y) else float("nan")}
    if len(y) and 0 < y.sum() < len(y):
        out["auc"] = float(roc_auc_score(y, s))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, s >= 0.5))
    else:
        out["auc"] = out["balanced_accuracy"] = float("nan")
    out["accuracy"] = float(((s >= 0.5) == y).mean()) if len(y) else float("nan")
    out["majority_class_accuracy"] = float(max(y.mean(), 1 - y.mean())) if len(y) else float("nan")
    if problems is not None:
        by_problem = pd.DataFrame({"problem": list(problems), "score": s, "correct": y}).groupby("problem", sort=True)
        within = [roc_auc_score(g["correct"], g["score"]) for _, g in by_problem if 0 < g["correct"].sum() < len(g)]
        out["within_problem_auc"] = float(np.mean(within)) if within else float("nan")
        out["mixed_problems"] = len(within)
    return out


def fold_of(problem_ids: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """A seeded assignment of problems to folds, balanced in size and independent of input order."""
    ids = sorted(set(problem_ids), key=lambda p: hashlib.blake2b(f"{seed}/{p}".encode(), digest_size=8).digest())
    return {pid: i % folds for i, pid in enumerate(ids)}


@dataclass
class TrainedRewardModels:
    full: EmbeddedHeadRM  # fitted on every problem: the one saved for reuse
    by_problem: dict[str, EmbeddedHeadRM]  # the cross-fitted head to use on each problem
    heldout: pd.DataFrame  # problem_id, index, fold, score, correct: every solution scored out of fold
    metrics: dict  # held-out outcome metrics (and per fold)
    label_stats: dict

    def for_problem(self, problem_id: str) -> EmbeddedHeadRM:
        return self.by_problem.get(problem_id, self.full)


def train_embedded_rm(
    rm_cfg: RewardModelConfig,
    backbone: TruncatedBackbone,
    solutions: Sequence[LabelledSolution],
    cfg: TrainingConfig,
    provenance: dict | None = None,
) -> TrainedRewardModels:
    """Fit the head on all solutions and cross-fitted per fold; report held-out outcome metrics."""
    if not solutions:
        raise DataError("reward model training: no graded solutions to train on")
    cache: dict = {}
    shell = EmbeddedHeadRM(rm_cfg, backbone)
    shell._cache = cache
    feats = shell.step_features([s.question for s in solutions], [s.steps for s in solutions])
    folds = fold_of([s.problem_id for s in solutions], cfg.folds, cfg.seed)
    fold = np.array([folds[s.problem_id] for s in solutions])
    level = rm_cfg.level

    def make(head: LinearHead, extra: dict) -> EmbeddedHeadRM:
        rm = EmbeddedHeadRM(rm_cfg, backbone, head, {**(provenance or {}), **extra})
        rm._cache = cache
        return rm

    heldout_rows, per_fold, by_problem = [], {}, {}
    for f in range(cfg.folds):
        train = [i for i in range(len(solutions)) if fold[i] != f]
        test = [i for i in range(len(solutions)) if fold[i] == f]
        if not test:
            continue
        x, y = training_rows([feats[i] for i in train], [solutions[i] for i in train], level)
        rm = make(fit_head(x, y, cfg), {"fold": f, "folds": cfg.folds})
        scored = rm.score_steps([solutions[i].question for i in test], [solutions[i].steps for i in test])
        scores = [s.score(rm_cfg.aggregation) for s in scored]
        per_fold[f] = outcome_metrics(scores, [solutions[i].outcome for i in test])
        for i, sc in zip(test, scores):
            heldout_rows.append({"problem_id": solutions[i].problem_id, "index": solutions[i].index, "fold": f,
                                 "score": sc, "correct": solutions[i].outcome})
            by_problem[solutions[i].problem_id] = rm
    heldout = pd.DataFrame(heldout_rows, columns=["problem_id", "index", "fold", "score", "correct"])
    metrics = outcome_metrics(heldout["score"], heldout["correct"], heldout["problem_id"])
    metrics["per_fold"] = per_fold
    x, y = training_rows(feats, solutions, level)
    labelled_steps = sum(1 for s in solutions for t in s.step_targets[:-1] if t is not None)
    label_stats = {
        "solutions": len(solutions),
        "problems": len(folds),
        "correct_solutions": int(sum(s.outcome for s in solutions)),
        "training_rows": int(len(y)),
        "labelled_intermediate_steps": int(labelled_steps),
    }
    full = make(fit_head(x, y, cfg), {"heldout_metrics": metrics, "labels": label_stats,
                                      "training": asdict(cfg), "fold": None})
    return TrainedRewardModels(full, by_problem, heldout, metrics, label_stats)


@dataclass
class SubsetTrainedRewardModel:
    """A head fitted once on the solutions of an explicit problem subset (not cross-fitted)."""

    model: EmbeddedHeadRM
    problem_ids: list[str]  # sorted ids of the problems whose solutions it was fitted on
    fit_metrics: dict  # on its own training solutions: in-sample, not held out
    label_stats: dict


def problem_ids_sha256(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()


def train_on_problems(
    rm_cfg: RewardModelConfig,
    backbone: TruncatedBackbone,
    solutions: Sequence[LabelledSolution],
    problem_ids: Sequence[str],
    cfg: TrainingConfig,
    provenance: dict | None = None,
    subset_name: str = "subset",
    feature_cache: dict | None = None,
) -> SubsetTrainedRewardModel:
    """Fit the head on the solutions of `problem_ids` only (e.g. the easy levels), every one of them: a model
    used on other problems (hard, test) needs no cross-fitting. The ids used go into its provenance.

    `feature_cache` (a dict) is shared by reward models with the same backbone, layers and features, so a
    solution's hidden states are computed once for all of them."""
    allowed = set(problem_ids)
    chosen = [s for s in solutions if s.problem_id in allowed]
    if not chosen:
        raise DataError(f"reward model training on {subset_name}: none of the {len(solutions)} graded solutions "
                        f"belongs to its {len(allowed)} problems")
    shell = EmbeddedHeadRM(rm_cfg, backbone)
    if feature_cache is not None:
        shell._cache = feature_cache
    feats = shell.step_features([s.question for s in chosen], [s.steps for s in chosen])
    x, y = training_rows(feats, chosen, rm_cfg.level)
    head = fit_head(x, y, cfg)
    used = sorted({s.problem_id for s in chosen})
    label_stats = {
        "solutions": len(chosen),
        "problems": len(used),
        "correct_solutions": int(sum(s.outcome for s in chosen)),
        "training_rows": int(len(y)),
        "labelled_intermediate_steps": int(sum(1 for s in chosen for t in s.step_targets[:-1] if t is not None)),
    }
    rm = EmbeddedHeadRM(rm_cfg, backbone, head, {
        **(provenance or {}), "subset": subset_name, "cross_fitted": False, "labels": label_stats,
        "training": asdict(cfg), "trained_on_problems": {"count": len(used), "ids_sha256": problem_ids_sha256(used),
                                                         "ids": used}})
    rm._cache = shell._cache
    scores = [sc.score(rm_cfg.aggregation) for sc in rm.score_steps([s.question for s in chosen],
                                                                     [s.steps for s in chosen])]
    fit = outcome_metrics(scores, [s.outcome for s in chosen])
    rm.provenance["fit_metrics_in_sample"] = fit
    return SubsetTrainedRewardModel(rm, used, fit, label_stats)
