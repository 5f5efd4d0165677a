"""Reward models: step splitting and aggregation, the embedded head (train -> held-out -> save -> load),
Math-Shepherd step labels, and the transformers loaders on locally saved tiny models."""
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.data.problems import PROJECT_ROOT
from harness.errors import ConfigError
from harness.reward.models import (
    CausalLMPRM,
    EmbeddedHeadRM,
    SequenceClassifierORM,
    TruncatedBackbone,
    aggregate,
    load_reward_model,
    reward_model_config,
    split_steps,
)
from harness.reward.training import (
    StepLabelConfig,
    TrainingConfig,
    choose_prefixes,
    labelled_solutions,
    math_shepherd_labels,
    outcome_step_labels,
    train_embedded_rm,
)


def test_split_steps_and_aggregations():
    assert split_steps("a\n\n b \n\n\n\nc\n\n") == ["a", "b", "c"]
    assert split_steps("one step only") == ["one step only"]
    assert split_steps("  ") == []
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "prod") == pytest.approx(0.36)
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert aggregate([], "min") == 0.0
    with pytest.raises(ConfigError, match="aggregation"):
        aggregate(s, "median")


def test_every_reward_model_config_validates():
    names = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "reward_model").glob("*.yaml"))
    assert names, "no conf/reward_model configs"
    for name in names:
        rm = reward_model_config(name)
        assert rm.name and rm.kind in ("causal_lm_prm", "sequence_classifier", "embedded")
    with pytest.raises(ConfigError, match="kind"):
        reward_model_config({"name": "x", "kind": "oracle"})
    with pytest.raises(ConfigError, match="reward_model.features: 'attention' is not one of last, mean, logprob"):
        reward_model_config({"name": "x", "kind": "embedded", "features": ["last", "attention"]})


@pytest.fixture(scope="module")
def tiny():
    from harness.models.loading import load_model

    return load_model(OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "tiny_random.yaml"))


def _fixture(num_problems=12, per_problem=6, seed=0):
    """Synthetic graded samples: correct ones reason by adding, wrong ones by subtracting."""
    rng = np.random.default_rng(seed)
    rows, questions = [], {}
    for p in range(num_problems):
        a, b = (int(x) for x in rng.integers(2, 50, 2))
        pid = f"toy/{p}"
        questions[pid] = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        for i in range(per_problem):
            good = i % 2 == 0
            if good:
                text = f"We add the apples he buys to those he has.\n\nSo {a} + {b} = {a + b}.\n\nThe answer is {a + b}."
            else:
                text = f"We subtract, since maybe he gave some away.\n\nSo {b} - {a} = {b - a}.\n\nThe answer is {b - a}."
            rows.append({"problem_id": pid, "index": i, "text": text, "correct": good})
    return pd.DataFrame(rows), questions


def _rm_config(level="prm"):
    return reward_model_config({"name": "toy_prm", "kind": "embedded", "level": level, "aggregation": "last",
                                "backbone": "tiny_random", "layers": 2, "features": ["last", "mean"],
                                "use_chat_template": True})


def test_embedded_head_beats_chance_held_out_and_round_trips(tiny, tmp_path):
    graded, questions = _fixture()
    sols = labelled_solutions(graded, questions, "\n\n")
    outcome_step_labels(sols)
    rm_cfg = _rm_config()
    trained = train_embedded_rm(rm_cfg, TruncatedBackbone(tiny, 2), sols, TrainingConfig(folds=2, C=1.0),
                                provenance={"source": "test fixture"})
    m = trained.metrics
    assert m["n"] == len(graded) and m["positives"] == len(graded) // 2
    assert m["auc"] > 0.75 and m["balanced_accuracy"] > 0.6  # chance: 0.5 and 0.5
    # each problem is scored by the head that did not see it
    folds = trained.heldout.groupby("problem_id")["fold"].nunique()
    assert (folds == 1).all()
    assert trained.for_problem("toy/0").provenance["fold"] == trained.heldout.set_index("problem_id").loc["toy/0", "fold"].iloc[0]

    folder = trained.full.save(tmp_path / "rm")
    again = EmbeddedHeadRM.load(folder, loaded_backbone=tiny)
    q = [questions["toy/0"], questions["toy/1"]]
    texts = list(graded["text"][:2])
    assert np.allclose(trained.full.score(q, texts), again.score(q, texts))
    assert again.provenance["source"] == "test fixture"
    assert "heldout_metrics" in again.provenance
    # the same through the config loader
    via_cfg = load_reward_model({**OmegaConf.to_container(OmegaConf.structured(rm_cfg)), "path": str(folder)}, tiny)
    assert np.allclose(via_cfg.score(q, texts), again.score(q, texts))
    scored = again.score_solutions(q, texts)
    assert len(scored[0].step_scores) == 3 and len(scored[0].step_tokens) == 3 and scored[0].question_tokens > 0


def test_embedded_orm_gives_one_score_per_solution(tiny):
    graded, questions = _fixture(num_problems=6, per_problem=4)
    sols = labelled_solutions(graded, questions, "\n\n")
    trained = train_embedded_rm(_rm_config("orm"), TruncatedBackbone(tiny, 1), sols, TrainingConfig(folds=2, C=1.0))
    scored = trained.full.score_solutions([questions["toy/0"]], [graded["text"][0]])
    assert len(scored[0].step_scores) == 1 and len(scored[0].step_tokens) == 1


def test_loading_an_untrained_embedded_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="reward_model.path"):
        load_reward_model({"name": "x", "kind": "embedded", "backbone": "tiny_random"})
    with pytest.raises(ConfigError, match="reward_model.json"):
        load_reward_model({"name": "x", "kind": "embedded", "backbone": "tiny_random", "path": str(tmp_path)})


def test_math_shepherd_targets_are_rollout_fractions():
    graded, questions = _fixture(num_problems=4, per_problem=4)
    sols = labelled_solutions(graded, questions, "\n\n")
    prefixes = choose_prefixes(sols, max_prefixes=8, seed=0)
    assert len(prefixes) == 8
    # half of the budget goes to prefixes of correct solutions when there are enough of them
    assert sum(sols[i].outcome for i, _ in prefixes) == 4
    assert all(1 <= k < len(sols[i].steps) for i, k in prefixes)
    seen = {}

    def rollout_fn(texts, n):
        seen.update(texts)
        # a prefix that adds reaches the answer in 2 of 3 rollouts, one that subtracts in none
        return {key: [True, True, False] if "add" in text else [False] * 3 for key, text in texts.items()}

    stats = math_shepherd_labels(sols, prefixes, rollout_fn, StepLabelConfig(rollouts=3, include_original=True), "\n\n")
    assert stats["prefixes"] == 8
    for i, k in prefixes:
        expected = 0.75 if sols[i].outcome else 0.0  # (2 + original correct) / 4, or 0 / 4
        assert sols[i].step_targets[k - 1] == pytest.approx(expected)
        assert sols[i].rollouts[k - 1] == 4
    assert all(t.endswith("\n\n") for t in seen.values())


def _save_tiny(tmp_path, tiny, kind):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = tiny.tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id, num_labels=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config) if kind == "lm" else LlamaForSequenceClassification(config)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_causal_lm_prm_reads_a_score_at_every_step_tag(tiny, tmp_path):
    folder = _save_tiny(tmp_path, tiny, "lm")
    # the tiny tokenizer has no Cyrillic 'ки' token of its own: use a tag that is one token for it
    cfg = {"name": "local_prm", "kind": "causal_lm_prm", "path": str(folder), "step_tag": " ки",
           "good_token": "+", "bad_token": "-", "batch_size": 2}
    rm = load_reward_model(cfg)
    assert isinstance(rm, CausalLMPRM)
    out = rm.score_steps(["What is 2+2?", "And 3+3?", "x"], [["2+2=4", "The answer is 4"], ["6"], []])
    assert [len(o.step_scores) for o in out] == [2, 1, 0]
    assert all(0.0 <= s <= 1.0 for o in out for s in o.step_scores)
    assert out[0].question_tokens > 0 and len(out[0].step_tokens) == 2
    token_logit = load_reward_model({**cfg, "readout": "token_logit", "score_token_id": 5})
    assert len(token_logit.score_steps(["q"], [["a", "b"]])[0].step_scores) == 2
    with pytest.raises(ConfigError, match="score_token_id"):
        reward_model_config({**cfg, "readout": "token_logit"})


def test_sequence_classifier_orm_scores_whole_solutions(tiny, tmp_path):
    folder = _save_tiny(tmp_path, tiny, "seq")
    rm = load_reward_model({"name": "local_orm", "kind": "sequence_classifier", "level": "orm", "path": str(folder)})
    assert isinstance(rm, SequenceClassifierORM)
    out = rm.score_solutions(["q1", "q2"], ["a\n\nb", "c"])
    assert [len(o.step_scores) for o in out] == [1, 1]
    with pytest.raises(ConfigError, match="level: orm"):
        load_reward_model({"name": "x", "kind": "sequence_classifier", "level": "prm", "path": str(folder)})
    with pytest.raises(ConfigError, match="cannot load"):
        load_reward_model({"name": "x", "kind": "causal_lm_prm", "path": str(tmp_path / "missing")})


# ---- identity: cached scores are keyed by weights + config ------------------------------------------------


def test_embedded_identity_follows_the_head_not_the_folder(tiny, tmp_path):
    import pandas as pd

    from harness.data.problems import Problem
    from harness.grading.graded import reward_scores
    from harness.sampling.base import SamplingParams
    from harness.store.samples import SampleStore

    graded, questions = _fixture(num_problems=6, per_problem=4)
    sols = labelled_solutions(graded, questions, "\n\n")
    outcome_step_labels(sols)
    first = train_embedded_rm(_rm_config(), TruncatedBackbone(tiny, 2), sols, TrainingConfig(folds=2, C=1.0)).full
    again = EmbeddedHeadRM.load(first.save(tmp_path / "a"), loaded_backbone=tiny)
    assert again.identity == first.identity  # saved and reloaded elsewhere: the same scores, the same key
    retrained = train_embedded_rm(_rm_config(), TruncatedBackbone(tiny, 2), sols, TrainingConfig(folds=2, C=0.01)).full
    assert retrained.identity != first.identity
    other_separator = EmbeddedHeadRM(reward_model_config({**OmegaConf.to_container(OmegaConf.structured(_rm_config())),
                                                       "step_separator": "\n"}), first.backbone, first.head)
    assert other_separator.identity != first.identity  # a scoring setting changes the key too

    entry = SampleStore(tmp_path / "store").entry("m@x", "sha", "p", "fp", SamplingParams())
    problems = [Problem(pid, q, "1", "", "gsm8k", {}) for pid, q in questions.items()]
    rows = graded[graded["problem_id"].isin(["toy/0", "toy/1"])]
    old = reward_scores(entry, rows, problems, first)
    new = reward_scores(entry, rows, problems, retrained)
    assert not np.allclose(old["scores"], new["scores"])  # the retrained head's own scores, not the cached ones
    assert np.allclose(new["scores"], retrained.score([questions[p] for p in rows["problem_id"]], list(rows["text"])))
    assert isinstance(reward_scores(entry, rows, problems, again), pd.DataFrame)


def test_transformers_identity_is_weights_and_config(tiny, tmp_path):
    folder = _save_tiny(tmp_path, tiny, "lm")
    cfg = {"name": "local_prm", "kind": "causal_lm_prm", "path": str(folder), "step_tag": " ки"}
    rm = load_reward_model(cfg)
    assert rm.identity.startswith("sha256:")
    assert load_reward_model({**cfg, "name": "renamed", "batch_size": 3}).identity == rm.identity
    assert load_reward_model({**cfg, "step_tag": " +"}).identity != rm.identity
    hub = CausalLMPRM(reward_model_config({"name": "hub", "kind": "causal_lm_prm", "hub_id": "org/prm",
                                           "revision": "a" * 40}), model=rm.model, tokenizer=rm.tokenizer)
    assert hub.identity.startswith(f"hub:org/prm@{'a' * 40}+config:")


def test_within_problem_auc_ignores_what_separates_problems():
    from harness.reward.training import outcome_metrics

    # problem a: all right and scored high, problem b: all wrong and scored low (pooled AUC rewards this);
    # within problems c and d the scores rank wrong above right: within-problem AUC 0
    problems = ["a", "a", "b", "b", "c", "c", "d", "d"]
    correct = [True, True, False, False, True, False, True, False]
    scores = [0.9, 0.95, 0.1, 0.05, 0.4, 0.6, 0.45, 0.55]
    m = outcome_metrics(scores, correct, problems)
    assert m["auc"] > 0.5
    assert m["within_problem_auc"] == 0.0 and m["mixed_problems"] == 2
    assert "within_problem_auc" not in outcome_metrics(scores, correct)


def test_logprob_features_are_the_backbones_own_token_log_probabilities(tiny):
    """features: [logprob] reads, per step, the full model's log-probabilities of the solution's own tokens: the
    minimum over the solution so far, the step's minimum and mean (the separator after a step left out)."""
    import torch

    rm_cfg = reward_model_config({"name": "lp", "kind": "embedded", "backbone": "tiny_random", "layers": 2,
                                  "features": ["logprob"], "step_separator": "\n",
                                  "input_template": "Question: {question}\nAnswer:\n"})
    rm = EmbeddedHeadRM(rm_cfg, TruncatedBackbone(tiny, 2))
    question, steps = "Tom has 3 apples and buys 4 more.", ["3 + 4 = 7", "The answer is 7."]
    (feats,) = rm.step_features([question], [steps])
    assert feats.shape == (2, 3) == (len(steps), rm.feature_dim)
    ids, q_len, ends = rm.layout(question, steps)
    with torch.no_grad():
        logits = tiny.model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    first_text_end = q_len + len(rm.backbone.encode(steps[0]))
    expected_first = lp[q_len - 1 : first_text_end - 1]  # lp[t - 1] is the log-probability of token t
    assert feats[0] == pytest.approx([expected_first.min(), expected_first.min(), expected_first.mean()], abs=1e-4)
    second_text_end = ends[0] + len(rm.backbone.encode(steps[1]))
    expected_second = lp[ends[0] - 1 : second_text_end - 1]
    so_far = np.concatenate([expected_first, lp[first_text_end - 1 : second_text_end - 1]])
    assert feats[1] == pytest.approx([so_far.min(), expected_second.min(), expected_second.mean()], abs=1e-4)
    # the LM head is charged for: a policy forward pass per token, plus the head's 3 weights and bias
    assert rm.flops_parameters == rm.backbone.flops_parameters + rm.backbone.lm_head_parameters + 4


def test_logprob_features_need_the_backbones_full_depth(tiny):
    rm_cfg = reward_model_config({"name": "lp", "kind": "embedded", "backbone": "tiny_random", "layers": 1,
                                  "features": ["logprob"]})
    rm = EmbeddedHeadRM(rm_cfg, TruncatedBackbone(tiny, 1))
    with pytest.raises(ConfigError, match="reward_model.layers must be the backbone's depth"):
        rm.step_features(["q"], [["a step"]])
