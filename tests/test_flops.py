"""FLOPs accounting on hand-counted token numbers."""
import pytest

from harness.selection.flops import NodeCost, TokenCount, expected_sampling_tokens, forward_flops, sampling_tokens, tree_tokens


def test_forward_flops_is_two_n_per_token():
    assert forward_flops(1_000, 10) == 20_000
    assert TokenCount(policy_prefill=100, policy_generated=50, reward_model=30).flops(1_000, 10) == 2 * 1_000 * 150 + 2 * 10 * 30


def test_sampling_counts_the_prompt_once_with_prefix_reuse_and_per_sample_without():
    reuse = sampling_tokens(100, [10, 20, 30], prefix_reuse=True, rm_question_tokens=40, rm_solution_tokens=[12, 22, 32])
    assert (reuse.policy_prefill, reuse.policy_generated, reuse.reward_model) == (100, 60, 40 + 66)
    plain = sampling_tokens(100, [10, 20, 30], prefix_reuse=False, rm_question_tokens=40, rm_solution_tokens=[12, 22, 32])
    assert (plain.policy_prefill, plain.policy_generated, plain.reward_model) == (300, 60, 3 * 40 + 66)
    assert sampling_tokens(100, [10, 20], prefix_reuse=True).reward_model == 0


def test_expected_subset_tokens_are_linear_in_n():
    t = expected_sampling_tokens(100, 25.0, 4, prefix_reuse=True, rm_question_tokens=10, mean_rm_solution=30.0)
    assert (t.policy_prefill, t.policy_generated, t.reward_model) == (100, 100, 130)
    t = expected_sampling_tokens(100, 25.0, 4, prefix_reuse=False)
    assert (t.policy_prefill, t.policy_generated) == (400, 100)


def test_tree_tokens_share_prefill_within_a_request_and_prefixes_with_reuse():
    # root prompt 50 tokens; request "a" (prompt 50) made 2 children of 10 and 12 tokens;
    # request "b" (prompt 60 = prompt + first child) made 1 child of 8 tokens.
    nodes = [
        NodeCost("a", 50, 10, rm_step_tokens=11, rm_prefix_tokens=0),
        NodeCost("a", 50, 12, rm_step_tokens=13, rm_prefix_tokens=0),
        NodeCost("b", 60, 8, rm_step_tokens=9, rm_prefix_tokens=11),
    ]
    reuse = tree_tokens(50, nodes, prefix_reuse=True, rm_question_tokens=20)
    assert (reuse.policy_prefill, reuse.policy_generated, reuse.reward_model) == (50, 30, 20 + 11 + 13 + 9)
    plain = tree_tokens(50, nodes, prefix_reuse=False, rm_question_tokens=20)
    assert (plain.policy_prefill, plain.policy_generated) == (110, 30)
    assert plain.reward_model == (20 + 11) + (20 + 13) + (20 + 11 + 9)


def test_token_counts_add_and_scale():
    a = TokenCount(1, 2, 3) + TokenCount(10, 20, 30)
    assert a.as_dict() == {"policy_prefill_tokens": 11, "policy_generated_tokens": 22, "reward_model_tokens": 33}
    assert a.scaled(0.5).policy == pytest.approx(16.5)
