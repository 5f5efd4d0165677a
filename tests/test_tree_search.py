"""REBASE / beam search on hand-built trees: known rewards must give known expansions."""
import pytest

from harness.errors import ConfigError
from harness.reward.models import RewardModel, RewardModelConfig, ScoredSolution
from harness.sampling.base import Completion, SamplingParams
from harness.selection.tree_search import (
    SearchConfig,
    SearchProblem,
    StepGenerator,
    allocate_beam,
    allocate_softmax,
    check_search_config,
    run_search,
)


def test_softmax_allocation_matches_hand_computation():
    # exp(0.9/0.2)=90.02, exp(0.5/0.2)=12.18, exp(0.1/0.2)=1.65 (sum 103.85):
    # ceil(8*90.02/103.85)=7; then ceil(1*12.18/13.83)=1; then nothing is left.
    assert allocate_softmax([0.9, 0.5, 0.1], 8, 0.2) == [7, 1, 0]
    # input order is kept in the output
    assert allocate_softmax([0.1, 0.9, 0.5], 8, 0.2) == [0, 7, 1]
    # equal rewards share evenly; the counts always sum to the width
    assert allocate_softmax([0.5] * 4, 8, 0.2) == [2, 2, 2, 2]
    assert allocate_softmax([0.5] * 3, 8, 0.2) == [3, 3, 2]
    # a high temperature flattens the split, a low one sends everything to the best node
    # (ceil favours the better node: 10 * 1.0090 / 2.0140 = 5.01 -> 6)
    assert allocate_softmax([0.9, 0.5], 10, 100.0) == [6, 4]
    assert allocate_softmax([0.9, 0.5], 10, 0.01) == [10, 0]
    for scores in ([0.3, 0.31, 0.9, 0.0], [0.0], [1.0, 1.0, 0.2]):
        assert sum(allocate_softmax(scores, 13, 0.2)) == 13


def test_softmax_with_truncation_drops_the_worst_candidates():
    assert allocate_softmax([0.5, 0.5, 0.5, 0.5], 8, 0.2, truncate_ratio=0.5) == [4, 4, 0, 0]


def test_beam_allocation_keeps_the_top_nodes():
    assert allocate_beam([0.1, 0.9, 0.5, 0.7], 8, 4) == [0, 4, 0, 4]
    # ceil(7/2) = 4 nodes wanted, only 3 exist: they share 7 as 3, 2, 2, best first
    assert allocate_beam([0.1, 0.9, 0.5], 7, 2) == [2, 3, 2]


class ScriptedSampler:
    """Children are fixed by the parent's path: 'a' steps end the text (eos), others continue."""

    name = "scripted"

    def __init__(self, script):
        self.script = script  # path suffix -> list of (text, finish_reason) by child index
        self.requests = []

    def count_tokens(self, text):
        return len(text.split())

    def sample(self, requests, params):
        for r in requests:
            self.requests.append((r.key, r.indices))
            path = r.key.split("|", 1)[1]
            for i in r.indices:
                text, finish = self.script[path][i]
                yield Completion(r.key, i, text, len(text.split()), self.count_tokens(r.prompt), finish)


class TableRM(RewardModel):
    """Step reward read from the step text: 'good'=0.9, 'ok'=0.5, 'bad'=0.1."""

    def __init__(self):
        self.config = RewardModelConfig(name="table", kind="embedded")
        self.flops_parameters = 10

    @property
    def identity(self) -> str:
        return "table:good=0.9,ok=0.5,bad=0.1"

    def score_steps(self, questions, steps):
        table = {"good": 0.9, "ok": 0.5, "bad": 0.1}
        return [ScoredSolution([table[s.split()[0]] for s in ss], 3, [len(s.split()) for s in ss]) for ss in steps]


def test_rebase_expands_nodes_by_their_rewards():
    # The root gets all 8 children: 1 'good', 1 'ok', 6 'bad' (none finished).
    # Depth 1: remaining width 8 split by softmax(score/0.2) over [0.9, 0.5, 0.1 x6]:
    #   weights 90.02, 12.18, 1.65 x6 (sum 112.09): good -> ceil(8*90.02/112.09)=7, ok -> ceil(1*12.18/22.07)=1.
    # Every depth-2 child ends the text, so the search stops with 8 finished solutions.
    root = [("good start", "stop"), ("ok start", "stop")] + [("bad start", "stop")] * 6
    script = {"r": root}
    for i in range(8):
        script[f"r.{i}"] = [("good end", "eos")] * 8
    sampler = ScriptedSampler(script)
    cfg = SearchConfig(method="rebase", width=8, softmax_temperature=0.2)
    gen = StepGenerator(sampler, SamplingParams(temperature=1.0, stop=("\n\n",)))
    problem = SearchProblem("p1", "Q: x\nA:", "x")
    [result] = run_search([problem], cfg, gen, lambda pid: TableRM(), sampler.count_tokens)
    expansions = {key.split("|")[1]: len(idx) for key, idx in sampler.requests}
    assert expansions == {"r": 8, "r.0": 7, "r.1": 1}
    assert len(result.solutions) == 8
    assert all(s["finish_reason"] == "eos" for s in result.solutions)
    assert sorted(s["step_scores"][0] for s in result.solutions) == [0.5] + [0.9] * 7
    # FLOPs inputs: 8 + 8 nodes generated 2 tokens each; prefills counted per request without reuse
    assert result.cost.tokens(prefix_reuse=True).policy_generated == 32
    assert result.cost.tokens(prefix_reuse=True).policy_prefill == 3
    assert len({n.request_id for n in result.cost.nodes}) == 3


def test_finished_nodes_use_up_width():
    # Root: 2 of 4 children finish at once; the remaining width 2 goes to the two live nodes.
    script = {"r": [("good done", "eos"), ("ok done", "eos"), ("good more", "stop"), ("bad more", "stop")],
              "r.2": [("good end", "eos")] * 4, "r.3": [("good end", "eos")] * 4}
    sampler = ScriptedSampler(script)
    cfg = SearchConfig(method="rebase", width=4, softmax_temperature=0.2)
    gen = StepGenerator(sampler, SamplingParams(temperature=1.0, stop=("\n\n",)))
    [result] = run_search([SearchProblem("p", "Q", "q")], cfg, gen, lambda pid: TableRM(), sampler.count_tokens)
    expansions = {key.split("|")[1]: len(idx) for key, idx in sampler.requests}
    # exp(0.9/0.2)=90.02 vs exp(0.1/0.2)=1.65: ceil(2*90.02/91.67)=2, nothing left for the 'bad' node
    assert expansions == {"r": 4, "r.2": 2}
    assert len(result.solutions) == 4


def test_beam_search_keeps_the_best_and_expands_them_evenly():
    root = [("good a", "stop"), ("ok b", "stop"), ("bad c", "stop"), ("ok d", "stop")]
    script = {"r": root, **{f"r.{i}": [("good end", "eos")] * 4 for i in range(4)}}
    sampler = ScriptedSampler(script)
    cfg = SearchConfig(method="beam", width=4, beam_width=2)
    gen = StepGenerator(sampler, SamplingParams(temperature=1.0, stop=("\n\n",)))
    run_search([SearchProblem("p", "Q", "q")], cfg, gen, lambda pid: TableRM(), sampler.count_tokens)
    expansions = {key.split("|")[1]: len(idx) for key, idx in sampler.requests}
    assert expansions == {"r": 4, "r.0": 2, "r.1": 2}  # ties (two 'ok') broken by order


def test_step_texts_are_joined_with_the_separator_and_depth_is_bounded():
    script = {"r": [("ok one", "stop")], "r.0": [("ok two", "stop")], "r.0.0": [("ok three", "stop")]}
    sampler = ScriptedSampler(script)
    cfg = SearchConfig(method="rebase", width=1, max_depth=2)
    gen = StepGenerator(sampler, SamplingParams(temperature=1.0, stop=("\n\n",)))
    [result] = run_search([SearchProblem("p", "Q", "q")], cfg, gen, lambda pid: TableRM(), sampler.count_tokens)
    assert [s["text"] for s in result.solutions] == ["ok one\n\nok two\n\n"]
    assert result.solutions[0]["finish_reason"] == "max_depth"


def test_generator_reuses_the_store(tmp_path):
    from harness.store.samples import SampleStore

    script = {"r": [("good end", "eos")] * 4}
    store = SampleStore(tmp_path)
    params = SamplingParams(temperature=1.0, stop=("\n\n",))
    entry = store.entry("m@x", "sha", "steps", "fp", params)
    first = ScriptedSampler(script)
    gen = StepGenerator(first, params, entry)
    gen.generate([("p|r", "Q", 2)])
    again = ScriptedSampler(script)
    gen2 = StepGenerator(again, params, store.entry("m@x", "sha", "steps", "fp", params))
    out = gen2.generate([("p|r", "Q", 4)])
    assert again.requests == [("p|r", (2, 3))] and len(out["p|r"]) == 4 and gen2.reused == 2


def test_bad_search_config_is_named():
    with pytest.raises(ConfigError, match="search.method"):
        check_search_config(SearchConfig(method="mcts"))
    with pytest.raises(ConfigError, match="softmax_temperature"):
        check_search_config(SearchConfig(softmax_temperature=0))
