"""Step-level tree search guided by a reward model: REBASE (Wu et al. 2024) and step-level beam search.

Both grow a tree of partial solutions one step at a time (a step ends at the step separator, a blank
line by default) under a budget of `width` completed solutions, as the paper's rebase.py does:

    depth d: every node at depth d that is finished (end of text, an answer, or out of tokens) uses up
             one unit of the remaining width; the others are candidates, and the remaining width is
             split among them by their reward:
               REBASE: softmax(score / T) in descending order, each node getting
                       ceil(remaining * its share of the weight still unassigned) children (T = 0.2);
               beam:   the top ceil(remaining / beam_width) nodes, beam_width children each;
             each child is one new step sampled from the policy, scored by the reward model (PRM score
             of its last step); stop when the width is used up or nothing is left to expand.

All problems advance in lockstep, depth by depth, so each depth is one batched call to the sampler and
one to the reward model. A node's children are seeded by (seed, node path, child index), so a node
has the same children whatever the width, and trees for several widths share their common nodes
through the sample store.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from harness.errors import ConfigError
from harness.selection.flops import NodeCost, TreeCost
from harness.reward.models import RewardModel, split_steps
from harness.sampling.base import Completion, SampleRequest, Sampler, SamplingParams

METHODS = ("rebase", "beam")


@dataclass
class SearchConfig:
    method: str = "rebase"  # rebase | beam
    width: int = 16  # completed solutions per problem (the paper's N)
    softmax_temperature: float = 0.2  # REBASE (the paper's hype-parameters/rebase.yaml)
    truncate_ratio: Optional[float] = None  # REBASE softmax_with_truncate: keep this top fraction of candidates
    beam_width: int = 4  # beam search: children per kept node
    max_depth: int = 25  # steps; deeper nodes count as finished (the paper's loop bound)
    max_step_tokens: int = 256
    max_tokens: int = 1024  # generated tokens per path; a longer path counts as finished
    step_separator: str = "\n\n"
    answer_pattern: Optional[str] = None  # regex: a step matching it ends the path (e.g. "The answer is")


def check_search_config(cfg: SearchConfig) -> SearchConfig:
    where = "search"
    if cfg.method not in METHODS:
        raise ConfigError(f"{where}.method: '{cfg.method}' is not one of {', '.join(METHODS)}")
    if cfg.width < 1:
        raise ConfigError(f"{where}.width: must be >= 1, got {cfg.width}")
    if cfg.softmax_temperature <= 0:
        raise ConfigError(f"{where}.softmax_temperature: must be > 0, got {cfg.softmax_temperature}")
    if cfg.beam_width < 1:
        raise ConfigError(f"{where}.beam_width: must be >= 1, got {cfg.beam_width}")
    if cfg.truncate_ratio is not None and not 0 < cfg.truncate_ratio <= 1:
        raise ConfigError(f"{where}.truncate_ratio: must be in (0, 1], got {cfg.truncate_ratio}")
    if not cfg.step_separator:
        raise ConfigError(f"{where}.step_separator: must not be empty")
    if cfg.answer_pattern:
        try:
            re.compile(cfg.answer_pattern)
        except re.error as err:
            raise ConfigError(f"{where}.answer_pattern: not a valid regex: {err}") from None
    return cfg


# ---------------------------------------------------------------------------------------------
# width allocation


def allocate_softmax(scores: Sequence[float], width: int, temperature: float,
                     truncate_ratio: float | None = None) -> list[int]:
    """REBASE's split of `width` children among candidates (returned in the candidates' order).

    In descending score order each candidate gets ceil(width_left * w_i / weight_left) with
    w = exp(score / T), as in rebase.py's select_softmax; the counts sum to `width`.
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep input order
    if truncate_ratio is not None:
        order = order[: int(math.ceil(len(order) * truncate_ratio))]
    out = [0] * len(scores)
    if not order or width <= 0:
        return out
    s = np.array([scores[i] for i in order], dtype=float) / temperature
    w = np.exp(s - s.max())  # shifting by the max leaves every ratio unchanged and cannot overflow
    left, weight_left = int(width), float(w.sum())
    for pos, i in enumerate(order):
        num = int(math.ceil(left * w[pos] / weight_left - 1e-9)) if weight_left > 0 else 0
        num = min(max(num, 0), left)
        out[i] = num
        left -= num
        weight_left -= float(w[pos])
    return out


def allocate_beam(scores: Sequence[float], width: int, beam_width: int) -> list[int]:
    """Step-level beam search: the top ceil(width / beam_width) candidates share `width` evenly, best first."""
    out = [0] * len(scores)
    if not scores or width <= 0:
        return out
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = order[: min(len(order), int(math.ceil(width / beam_width)))]
    base, extra = divmod(int(width), len(keep))
    for rank, i in enumerate(keep):
        out[i] = base + (1 if rank < extra else 0)
    return out


# ---------------------------------------------------------------------------------------------
# the tree


@dataclass
class Node:
    path: str  # "r" for the root, then ".i" per child index: seeds the node's children
    depth: int
    solution: str  # the partial solution so far (what follows the problem prompt)
    parent: Optional["Node"] = None
    score: float = 1.0  # reward of the last step (the root: 1.0, as in rebase.py)
    step_scores: list[float] = field(default_factory=list)
    tokens: int = 0  # generated tokens on the path
    finished: bool = False
    finish_reason: str = ""  # eos | empty | answer | max_tokens | max_depth | length (mid-step cut, not finished)
    cost: Optional[NodeCost] = None


@dataclass
class SearchProblem:
    problem_id: str
    prompt: str  # the rendered policy prompt
    question: str  # the raw question (the reward model's input)


@dataclass
class Tree:
    problem: SearchProblem
    cfg: SearchConfig
    root: Node = None
    by_depth: dict[int, list[Node]] = field(default_factory=dict)
    remaining: int = 0
    done: bool = False
    cost: TreeCost = None

    def __post_init__(self):
        self.root = Node("r", 0, "")
        self.by_depth = {0: [self.root]}
        self.remaining = self.cfg.width
        self.cost = TreeCost(prompt_tokens=0)

    def select(self, depth: int) -> list[tuple[Node, int]]:
        """The paper's select_and_expand: (node, number of children) for the nodes at `depth`."""
        candidates = []
        for node in self.by_depth.get(depth, []):
            if depth >= self.cfg.max_depth and not node.finished:
                node.finished, node.finish_reason = True, "max_depth"
            if node.finished:
                self.remaining -= 1
            else:
                candidates.append(node)
        if self.remaining <= 0 or not candidates:
            self.done = True
            return []
        scores = [n.score for n in candidates]
        if self.cfg.method == "rebase":
            widths = allocate_softmax(scores, self.remaining, self.cfg.softmax_temperature, self.cfg.truncate_ratio)
        else:
            widths = allocate_beam(scores, self.remaining, self.cfg.beam_width)
        return [(n, w) for n, w in zip(candidates, widths) if w >= 1]

    def leaves(self) -> list[Node]:
        return [n for nodes in self.by_depth.values() for n in nodes if n.finished]

    def nodes(self) -> list[Node]:
        return [n for d in sorted(self.by_depth) for n in self.by_depth[d]]


def child(parent: Node, index: int, completion: Completion, cfg: SearchConfig) -> Node:
    """The node a sampled step makes; the separator is restored only after a step that ended at it."""
    text = completion.text
    ended_at_separator = completion.finish_reason == "stop"
    solution = parent.solution + text + (cfg.step_separator if ended_at_separator else "")
    node = Node(f"{parent.path}.{index}", parent.depth + 1, solution, parent, tokens=parent.tokens + completion.num_tokens)
    if completion.finish_reason == "eos":
        node.finished, node.finish_reason = True, "eos"
    elif not text.strip():
        # Nothing before a stop string: the policy has nothing more to say (e.g. a few-shot prompt's "Q:").
        node.finished, node.finish_reason = True, "empty"
    elif cfg.answer_pattern and re.search(cfg.answer_pattern, text):
        node.finished, node.finish_reason = True, "answer"
    elif node.tokens >= cfg.max_tokens:
        node.finished, node.finish_reason = True, "max_tokens"
    elif completion.finish_reason == "length":
        node.finish_reason = "length"
    return node


# ---------------------------------------------------------------------------------------------
# generating steps (through the sample store when one is given)


class StepGenerator:
    """One step per sample: the sampler with the step separator as a stop string, cached in a store entry."""

    def __init__(self, sampler: Sampler, params: SamplingParams, entry: Any = None):
        self.sampler = sampler
        self.params = params
        self.entry = entry
        self.drawn = 0  # steps sampled in this process (the rest came from the store)
        self.reused = 0

    def generate(self, requests: Sequence[tuple[str, str, int]]) -> dict[str, list[Completion]]:
        """requests: (key, prompt, n) -> {key: n completions, index order}."""
        wanted = {key: n for key, _, n in requests}
        have: dict[str, dict[int, Completion]] = {key: {} for key in wanted}
        if self.entry is not None:
            df = self.entry.frame()
            df = df[df["problem_id"].isin(set(wanted))]
            for row in df.itertuples():
                if int(row.index) < wanted[row.problem_id]:
                    have[row.problem_id][int(row.index)] = Completion(
                        row.problem_id, int(row.index), row.text, int(row.num_tokens), int(row.prompt_tokens),
                        row.finish_reason)
        todo = []
        for key, prompt, n in requests:
            missing = tuple(i for i in range(n) if i not in have[key])
            self.reused += n - len(missing)
            if missing:
                todo.append(SampleRequest(key, prompt, missing))
        if todo:
            fresh = list(self.sampler.sample(todo, self.params))
            if self.entry is not None:
                self.entry.append(fresh)
            for c in fresh:
                have[c.key][c.index] = c
            self.drawn += len(fresh)
        return {key: [have[key][i] for i in range(n)] for key, n in wanted.items()}


def step_params(base: SamplingParams, cfg: SearchConfig) -> SamplingParams:
    """The policy's sampling settings, cut at the step separator (and at the prompt's own stop strings)."""
    stops = (cfg.step_separator,) + tuple(s for s in base.stop if s != cfg.step_separator)
    return SamplingParams(temperature=base.temperature, top_p=base.top_p, top_k=base.top_k,
                          max_new_tokens=cfg.max_step_tokens, stop=stops, seed=base.seed)


# ---------------------------------------------------------------------------------------------
# the search


@dataclass
class SearchResult:
    problem_id: str
    solutions: list[dict]  # text, step_scores, finish_reason, tokens (one per finished leaf)
    cost: TreeCost
    num_nodes: int
    depth: int


def node_key(problem_id: str, node: Node) -> str:
    return f"{problem_id}|{node.path}"


def run_search(
    problems: Sequence[SearchProblem],
    cfg: SearchConfig,
    generator: StepGenerator,
    reward_for: Callable[[str], RewardModel],
    count_tokens: Callable[[str], int],
    progress: bool = False,
) -> list[SearchResult]:
    """REBASE or beam search on every problem, all trees advancing one depth per round."""
    check_search_config(cfg)
    trees = [Tree(p, cfg) for p in problems]
    for t in trees:
        t.cost.prompt_tokens = count_tokens(t.problem.prompt)
    depth = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"{cfg.method} width {cfg.width}", unit="depth", dynamic_ncols=True)
    while True:
        plan = [(t, node, w) for t in trees if not t.done for node, w in t.select(depth)]
        if not plan:
            break
        requests = [(node_key(t.problem.problem_id, n), t.problem.prompt + n.solution, w) for t, n, w in plan]
        steps = generator.generate(requests)
        new: list[tuple[Tree, Node]] = []
        for t, parent, w in plan:
            key = node_key(t.problem.problem_id, parent)
            for i, c in enumerate(steps[key]):
                node = child(parent, i, c, cfg)
                node.cost = NodeCost(request_id=key, request_prompt_tokens=c.prompt_tokens, generated_tokens=c.num_tokens)
                new.append((t, node))
        _score(new, reward_for, cfg)
        for t, node in new:
            t.by_depth.setdefault(node.depth, []).append(node)
            t.cost.nodes.append(node.cost)
        depth += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(nodes=len(new), drawn=generator.drawn, reused=generator.reused)
    if bar is not None:
        bar.close()
    return [_result(t, depth) for t in trees]


def _score(new: Sequence[tuple[Tree, Node]], reward_for: Callable[[str], RewardModel], cfg: SearchConfig) -> None:
    """Score every new node with its problem's reward model, batched per reward model."""
    groups: dict[int, tuple[RewardModel, list[tuple[Tree, Node]]]] = {}
    for t, node in new:
        rm = reward_for(t.problem.problem_id)
        groups.setdefault(id(rm), (rm, []))[1].append((t, node))
    for rm, items in groups.values():
        steps = [split_steps(n.solution, cfg.step_separator) for _, n in items]
        scored = rm.score_steps([t.problem.question for t, _ in items], steps)
        for (t, node), s, ss in zip(items, scored, steps):
            if not ss:  # an empty step (the model stopped at once): nothing to score
                node.score, node.step_scores = 0.0, []
                continue
            node.step_scores = list(s.step_scores)
            node.score = float(s.step_scores[-1]) if s.step_scores else 0.0
            node.cost.rm_step_tokens = float(s.step_tokens[-1]) if s.step_tokens else 0.0
            node.cost.rm_prefix_tokens = float(sum(s.step_tokens[:-1]))
            t.cost.rm_question_tokens = float(s.question_tokens)


def _result(t: Tree, depth: int) -> SearchResult:
    leaves = t.leaves()
    sols = [{"text": n.solution, "step_scores": n.step_scores, "finish_reason": n.finish_reason, "tokens": n.tokens,
             "path": n.path} for n in leaves]
    return SearchResult(t.problem.problem_id, sols, t.cost, len(t.nodes()) - 1, depth)
