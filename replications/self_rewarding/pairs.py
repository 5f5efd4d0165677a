"""Self-Rewarding's data steps, as pure functions over tables of candidates (Yuan et al. 2024, §2.3-2.4):

- AIFT pairs: each candidate's score is the mean of its judge repeats; per prompt, chosen = the highest mean,
  rejected = the lowest, the prompt dropped when they tie; a candidate without a valid score is left out of
  its prompt's ranking (counted);
- EFT examples: a sample with a known grader verdict, rendered as the judge prompt, with the judgement the
  judge should write as the target (harness.reward.judge.target_judgement);
- the judge as a reward model: pairwise accuracy of its scores against grader verdicts, ties, the score
  distribution; head-to-head win/tie/loss of two policies by the grader.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from harness.errors import ConfigError
from harness.reward.judge import Candidate, Judgement, judge_input, target_judgement, verdict_score


# ---- scores --------------------------------------------------------------------------------------------------


def mean_score(scores: Sequence[Optional[float]], min_scored: int) -> Optional[float]:
    """The mean of the valid scores of one candidate's repeats; None (unscored) when fewer than `min_scored`
    of them parsed. With min_scored = repeats (the default config) one unparsable judgement leaves the
    candidate out: a mean over fewer repeats would rank it on noisier evidence than its neighbours."""
    valid = [s for s in scores if s is not None]
    if len(valid) < max(1, min_scored):
        return None
    return sum(valid) / len(valid)


def score_table(candidates: pd.DataFrame, judgements: Sequence[Sequence[Judgement]], min_scored: int) -> pd.DataFrame:
    """`candidates` (one row per candidate: problem_id, index, text, ...) with the judge's columns added:
    scores (per repeat, None where unparsable), unparsable (how many repeats), mean_score."""
    if len(candidates) != len(judgements):
        raise ConfigError(f"score_table: {len(candidates)} candidates but {len(judgements)} judgement lists")
    out = candidates.reset_index(drop=True).copy()
    scores = [[j.score for j in js] for js in judgements]
    out["scores"] = scores
    out["unparsable"] = [sum(s is None for s in ss) for ss in scores]
    out["mean_score"] = pd.Series([mean_score(ss, min_scored) for ss in scores], dtype=float)  # None -> NaN
    return out


# ---- preference pairs ----------------------------------------------------------------------------------------


def select_pairs(scored: pd.DataFrame) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One (chosen, rejected) pair per problem from a score table; and the counts of what was dropped.

    Chosen: the highest mean score; rejected: the lowest. Among equal scores the lowest sample index wins,
    so selection is a function of the table alone. Dropped: prompts whose scored candidates all tie
    (`ties`), prompts with fewer than two scored candidates (`too_few_scored`), and pairs whose two texts
    are identical (`identical_texts`: DPO's loss has no gradient on them)."""
    counts = Counter(prompts=0, pairs=0, ties=0, too_few_scored=0, identical_texts=0,
                     unscored_candidates=0, unparsable_judgements=0)
    pairs = []
    for pid, group in scored.sort_values(["problem_id", "index"], kind="stable").groupby("problem_id", sort=True):
        counts["prompts"] += 1
        counts["unparsable_judgements"] += int(group["unparsable"].sum())
        ranked = group[group["mean_score"].notna()]
        counts["unscored_candidates"] += len(group) - len(ranked)
        if len(ranked) < 2:
            counts["too_few_scored"] += 1
            continue
        best = ranked.loc[ranked["mean_score"].idxmax()]  # idxmax / idxmin: first occurrence in index order
        worst = ranked.loc[ranked["mean_score"].idxmin()]
        if best["mean_score"] == worst["mean_score"]:
            counts["ties"] += 1
            continue
        if best["text"] == worst["text"]:
            counts["identical_texts"] += 1
            continue
        counts["pairs"] += 1
        pairs.append({
            "problem_id": pid, "chosen": best["text"], "rejected": worst["text"],
            "chosen_index": int(best["index"]), "rejected_index": int(worst["index"]),
            "chosen_score": float(best["mean_score"]), "rejected_score": float(worst["mean_score"]),
            **({"chosen_correct": bool(best["correct"]), "rejected_correct": bool(worst["correct"])}
               if "correct" in group else {}),
        })
    return pairs, dict(counts)


def pair_records(pairs: Sequence[Mapping[str, Any]], prompts: Mapping[str, str]) -> list[dict[str, Any]]:
    """DPO records (prompt/chosen/rejected, TRL's standard preference format) with provenance columns."""
    return [{"prompt": prompts[p["problem_id"]], "source": "aift", **dict(p)} for p in pairs]


# ---- EFT: judge-training examples from samples with known verdicts -------------------------------------------


def candidates_from_graded(graded: pd.DataFrame, questions: Mapping[str, str]) -> list[Candidate]:
    """Judge candidates from graded samples (problem_id, index, text, correct, extracted, finish_reason).

    `answered`: the grader read an answer and the sample was not cut at the token limit (a truncated sample's
    last number is wherever the cut fell, not an answer)."""
    out = []
    for row in graded.to_dict("records"):
        extracted = row.get("extracted")
        answered = bool(extracted is not None and str(extracted).strip()) and row.get("finish_reason") != "length"
        out.append(Candidate(f"{row['problem_id']}#{int(row['index'])}", questions[row["problem_id"]], row["text"],
                             bool(row["correct"]), answered, None if extracted is None else str(extracted)))
    return out


def eft_records(candidates: Sequence[Candidate], task_spec: Any, tokenizer: Any = None) -> list[dict[str, Any]]:
    """SFT records teaching the judge: prompt = the rubric prompt for (question, response) in the task's format;
    completion = the judgement a judge that knew the verdict would write, ending in "Score: N"."""
    records = []
    for c in candidates:
        records.append({
            "prompt": judge_input(task_spec, c.question, c.response, tokenizer),
            "completion": target_judgement(bool(c.correct), bool(c.answered), c.response, c.answer),
            "problem_id": c.key.rsplit("#", 1)[0], "candidate": c.key, "source": "eft",
            "target_score": verdict_score(bool(c.correct), bool(c.answered), c.response),
            "target_verdict": "right" if c.correct else "wrong",
        })
    return records


def balance_by(records: Sequence[Mapping[str, Any]], seed: int, max_examples: Optional[int] = None,
               key: str = "target_score") -> list[dict[str, Any]]:
    """Down-sample every value of `key` to the count of the rarest one present, and to at most
    max_examples / (values present) each (at least one) (a seeded draw, original order kept). Sampled from a policy
    that is right on easy levels and wrong on hard ones, raw EFT data is dominated by one verdict, and a judge
    trained on it learns to write that score whatever it reads (the paper's ablation: without judge data fitted
    to the task, scores collapse to one value). Balancing by verdict ("target_verdict") keeps each verdict's
    scores in their natural shares; by score, a rare score (4: right answer, a wrong line) caps every other one
    (measured: 128 samples at 15% accuracy kept 9 examples, 3 per score)."""
    by_value: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        by_value.setdefault(r[key], []).append(i)
    if not by_value:
        return []
    size = min(len(v) for v in by_value.values())
    if max_examples is not None:
        size = min(size, max(1, max_examples // len(by_value)))
    rng = random.Random(f"{seed}/eft-balance")
    keep = sorted(i for idx in by_value.values() for i in rng.sample(idx, size))
    return [dict(records[i]) for i in keep]


def score_counts(records: Sequence[Mapping[str, Any]], key: str = "target_score") -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(r[key] for r in records).items())}


# ---- evaluation ----------------------------------------------------------------------------------------------


def pairwise_accuracy(scored: pd.DataFrame) -> dict[str, Any]:
    """The judge as a reward model: over every pair of candidates of one problem whose grader verdicts differ,
    how often the correct one has the higher mean score (`accuracy`, ties count as misses), equal scores
    (`tie_rate`), and pairs where a candidate is unscored (`unscored_rate`, also misses)."""
    wins = ties = unscored = total = 0
    for _, group in scored.groupby("problem_id", sort=True):
        right = list(group.loc[group["correct"].astype(bool), "mean_score"])
        wrong = list(group.loc[~group["correct"].astype(bool), "mean_score"])
        for a in right:
            for b in wrong:
                total += 1
                if pd.isna(a) or pd.isna(b):
                    unscored += 1
                elif a > b:
                    wins += 1
                elif a == b:
                    ties += 1
    rate = (lambda k: k / total if total else None)
    return {"pairs": total, "correct_higher": wins, "ties": ties, "unscored": unscored,
            "accuracy": rate(wins), "tie_rate": rate(ties), "unscored_rate": rate(unscored)}


def score_distribution(scored: pd.DataFrame) -> dict[str, int]:
    """Counts of every valid per-repeat score (as text, e.g. "4.0") and of unparsable judgements ("none")."""
    counts: Counter = Counter()
    for scores in scored["scores"]:
        for s in scores:
            counts["none" if s is None else f"{float(s):g}"] += 1
    return dict(sorted(counts.items()))


def head_to_head(new: Mapping[str, bool], old: Mapping[str, bool]) -> dict[str, Any]:
    """Win/tie/loss of `new` against `old` on their common problems, by the grader: a correct answer beats an
    incorrect one; both correct or both incorrect is a tie."""
    common = sorted(set(new) & set(old))
    if not common:
        raise ConfigError("head_to_head: the two policies share no evaluated problem")
    win = sum(bool(new[p]) and not bool(old[p]) for p in common)
    loss = sum(bool(old[p]) and not bool(new[p]) for p in common)
    n = len(common)
    return {"n": n, "win": win, "tie": n - win - loss, "loss": loss,
            "win_rate": win / n, "tie_rate": (n - win - loss) / n, "loss_rate": loss / n}
