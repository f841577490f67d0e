"""Tests for `hybrid_attention.selection`: top-k masks, estimators, REINFORCE helpers."""

import itertools
import math
import re

import pytest
import torch

from hybrid_attention import (
    ESTIMATORS,
    GroupedMovingAverageBaseline,
    MovingAverageBaseline,
    plackett_luce_log_prob,
    reinforce_loss,
    select_topk,
    selection_entropy,
)

# p(i drawn first, then j) for weights w = [1, 2, 3] (softmax of log w), without replacement:
# w_i / 6 * w_j / (6 - w_i).
PL_TWO_OF_THREE = {
    (0, 1): 1 / 6 * 2 / 5,
    (0, 2): 1 / 6 * 3 / 5,
    (1, 0): 2 / 6 * 1 / 4,
    (1, 2): 2 / 6 * 3 / 4,
    (2, 0): 3 / 6 * 1 / 3,
    (2, 1): 3 / 6 * 2 / 3,
}


def random_scores(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_valid_mask(rows: int, num_regions: int, k: int, seed: int) -> torch.Tensor:
    """(rows, N) bool, True = valid, with at least k valid regions in every row."""
    gen = torch.Generator().manual_seed(seed)
    valid = torch.rand(rows, num_regions, generator=gen) < 0.5
    forced = torch.rand(rows, num_regions, generator=gen).argsort(-1)[:, :k]
    return valid.scatter(-1, forced, True)


# Forward values.


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mask_forward_is_exactly_binary_with_k_ones(estimator, training):
    scores = random_scores(4, 3, 10).requires_grad_()
    selection = select_topk(
        scores, 3, estimator=estimator, training=training, generator=torch.Generator()
    )
    mask = selection.mask.detach()
    assert torch.equal(mask, mask.round())
    assert torch.equal(mask.sum(-1), torch.full((4, 3), 3.0))
    assert selection.indices.shape == (4, 3, 3)
    assert torch.equal(mask.gather(-1, selection.indices), torch.ones(4, 3, 3))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_eval_selects_plain_topk_best_first(estimator):
    scores = random_scores(5, 12)
    selection = select_topk(scores, 4, estimator=estimator, training=False)
    assert torch.equal(selection.indices, scores.topk(4, dim=-1).indices)
    assert selection.log_prob is None


def test_ste_and_none_select_plain_topk_while_training():
    scores = random_scores(5, 12)
    for estimator in ("ste", "none"):
        selection = select_topk(scores, 4, estimator=estimator, training=True)
        assert torch.equal(selection.indices, scores.topk(4, dim=-1).indices)


# Gradients.


def test_ste_gives_gradient_to_non_selected_scores():
    scores = random_scores(2, 8).requires_grad_()
    selection = select_topk(scores, 3, estimator="ste")
    (selection.mask * random_scores(2, 8, seed=1)).sum().backward()
    not_selected = selection.mask.detach() == 0
    assert (scores.grad[not_selected] != 0).all()


def test_ste_gradient_is_the_softmax_gradient_at_tau():
    scores = random_scores(2, 8).requires_grad_()
    weights = random_scores(2, 8, seed=1)
    selection = select_topk(scores, 3, estimator="ste", tau=0.5)
    (grad,) = torch.autograd.grad((selection.mask * weights).sum(), scores)
    (expected,) = torch.autograd.grad(((scores / 0.5).softmax(-1) * weights).sum(), scores)
    torch.testing.assert_close(grad, expected)


def test_gumbel_gives_gradient_to_scores():
    scores = random_scores(2, 8).requires_grad_()
    selection = select_topk(
        scores, 3, estimator="gumbel", generator=torch.Generator().manual_seed(0)
    )
    (selection.mask * random_scores(2, 8, seed=1)).sum().backward()
    assert (scores.grad != 0).all()


@pytest.mark.parametrize("estimator", ["none", "reinforce"])
def test_mask_has_no_gradient(estimator):
    scores = random_scores(2, 8).requires_grad_()
    selection = select_topk(scores, 3, estimator=estimator, training=True)
    assert not selection.mask.requires_grad


def test_reinforce_log_prob_carries_gradient_while_training():
    scores = random_scores(2, 8).requires_grad_()
    selection = select_topk(scores, 3, estimator="reinforce", training=True)
    selection.log_prob.sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad != 0).any()


# Sampling.


def test_gumbel_eval_is_deterministic_topk():
    scores = random_scores(3, 16)
    first = select_topk(scores, 4, estimator="gumbel", training=False)
    second = select_topk(
        scores, 4, estimator="gumbel", training=False, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(first.indices, scores.topk(4, dim=-1).indices)
    assert torch.equal(first.indices, second.indices)


def test_gumbel_training_selection_varies_with_the_seed():
    flat = 0.01 * random_scores(16)
    selections = {
        tuple(
            select_topk(
                flat, 4, estimator="gumbel", generator=torch.Generator().manual_seed(seed)
            ).indices.tolist()
        )
        for seed in range(10)
    }
    assert len(selections) > 1


@pytest.mark.parametrize("estimator", ["gumbel", "reinforce"])
def test_same_seed_gives_same_sample(estimator):
    flat = 0.01 * random_scores(4, 16)
    first, second = (
        select_topk(flat, 4, estimator=estimator, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    )
    assert torch.equal(first.indices, second.indices)


def test_reinforce_frequencies_match_softmax_for_k1():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    scores = probs.log().expand(20000, 4)
    selection = select_topk(
        scores, 1, estimator="reinforce", generator=torch.Generator().manual_seed(0)
    )
    frequencies = torch.bincount(selection.indices.flatten(), minlength=4) / 20000
    torch.testing.assert_close(frequencies, probs, atol=0.015, rtol=0)


# Plackett-Luce.


def test_plackett_luce_log_prob_matches_hand_computed_probabilities():
    scores = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).log()
    orders = list(PL_TWO_OF_THREE)
    log_prob = plackett_luce_log_prob(scores.expand(len(orders), 3), torch.tensor(orders))
    expected = torch.tensor([math.log(PL_TWO_OF_THREE[o]) for o in orders], dtype=torch.float64)
    torch.testing.assert_close(log_prob, expected)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_plackett_luce_probabilities_of_every_ordered_draw_sum_to_one(k):
    scores = random_scores(5, dtype=torch.float64)
    orders = torch.tensor(list(itertools.permutations(range(5), k)))
    log_prob = plackett_luce_log_prob(scores.expand(len(orders), 5), orders)
    torch.testing.assert_close(log_prob.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_reinforce_log_prob_is_the_plackett_luce_value_of_the_sample():
    scores = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).log()
    for seed in range(10):
        selection = select_topk(
            scores, 2, estimator="reinforce", generator=torch.Generator().manual_seed(seed)
        )
        expected = math.log(PL_TWO_OF_THREE[tuple(selection.indices.tolist())])
        assert math.isclose(selection.log_prob.item(), expected, rel_tol=1e-9)


def test_reinforce_log_prob_ignores_padded_regions():
    # Padding region 1 of [1, 2, 3] leaves weights [1, 3]: p(2 then 0) = 3/4 * 1/1.
    scores = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).log()
    valid = torch.tensor([True, False, True])
    log_prob = plackett_luce_log_prob(
        scores.masked_fill(~valid, float("-inf")), torch.tensor([2, 0])
    )
    assert math.isclose(log_prob.item(), math.log(3 / 4))


def test_plackett_luce_log_prob_gradcheck():
    scores = random_scores(2, 5, dtype=torch.float64).requires_grad_()
    indices = torch.tensor([[4, 0, 2], [1, 3, 0]])
    assert torch.autograd.gradcheck(lambda s: plackett_luce_log_prob(s, indices), (scores,))


# Padding.


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_padded_regions_are_never_selected(estimator, training):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        valid = random_valid_mask(16, 10, k=3, seed=trial)
        # Padded regions get the highest scores, so only the mask keeps them out.
        scores = random_scores(16, 10, seed=trial) + 10.0 * (~valid)
        selection = select_topk(
            scores, 3, estimator=estimator, mask=valid, training=training, generator=gen
        )
        assert valid.gather(-1, selection.indices).all()
        assert (selection.mask.detach()[~valid] == 0).all()


def test_k_equal_to_valid_count_selects_every_valid_region():
    valid = torch.tensor([[True, False, True, True, False]])
    selection = select_topk(random_scores(1, 5), 3, estimator="reinforce", mask=valid)
    assert torch.equal(selection.mask, valid.float())
    assert torch.isfinite(selection.log_prob).all()


# Entropy.


def test_selection_entropy_of_uniform_scores_is_log_n():
    assert math.isclose(selection_entropy(torch.zeros(6)).item(), math.log(6), rel_tol=1e-6)


def test_selection_entropy_ignores_padded_regions():
    valid = torch.tensor([True, False, True, False])
    entropy = selection_entropy(torch.tensor([0.0, 5.0, 0.0, -3.0]), valid)
    assert math.isclose(entropy.item(), math.log(2), rel_tol=1e-6)


def test_selection_entropy_gradcheck():
    scores = random_scores(3, 5, dtype=torch.float64).requires_grad_()
    valid = torch.tensor([[True] * 5, [True, False, True, True, False], [False, True] * 2 + [True]])
    assert torch.autograd.gradcheck(selection_entropy, (scores,))
    assert torch.autograd.gradcheck(lambda s: selection_entropy(s, valid), (scores,))


# REINFORCE loss and baseline.


def test_reinforce_loss_gradient_is_minus_advantage_over_batch():
    log_prob = random_scores(4).requires_grad_()
    reward = torch.tensor([1.0, -2.0, 0.5, 3.0])
    reinforce_loss(log_prob, reward, 0.25).backward()
    torch.testing.assert_close(log_prob.grad, -(reward - 0.25) / 4)


def test_reinforce_loss_broadcasts_reward_over_heads_and_queries():
    log_prob = random_scores(4, 2, 3).requires_grad_()
    reward = torch.tensor([1.0, -2.0, 0.5, 3.0])
    baseline = torch.tensor([0.5, 0.0, 0.5, 1.0])
    reinforce_loss(log_prob, reward, baseline).backward()
    expected = (-(reward - baseline) / (4 * 2 * 3))[:, None, None].expand(4, 2, 3)
    torch.testing.assert_close(log_prob.grad, expected)


def test_reinforce_loss_sends_no_gradient_to_reward_or_baseline():
    reward = torch.tensor([1.0, -2.0]).requires_grad_()
    baseline = torch.tensor(0.3).requires_grad_()
    reinforce_loss(random_scores(2).requires_grad_(), reward, baseline).backward()
    assert reward.grad is None
    assert baseline.grad is None


def test_reinforce_loss_entropy_bonus_lowers_the_loss():
    log_prob, reward = random_scores(4), random_scores(4, seed=1)
    entropy = torch.tensor([0.5, 1.0, 1.5, 2.0])
    plain = reinforce_loss(log_prob, reward, 0.0)
    with_bonus = reinforce_loss(log_prob, reward, 0.0, entropy=entropy, entropy_weight=0.1)
    torch.testing.assert_close(with_bonus, plain - 0.1 * entropy.mean())


def test_moving_average_baseline_starts_at_the_first_batch_mean():
    baseline = MovingAverageBaseline(decay=0.9)
    first = baseline(torch.tensor([1.0, 3.0]))
    assert first.item() == 2.0
    assert baseline.value.item() == 2.0


def test_moving_average_baseline_is_an_ema_with_decay():
    baseline = MovingAverageBaseline(decay=0.9)
    first = baseline(torch.tensor([1.0, 3.0]))
    second = baseline(torch.tensor([10.0, 12.0]))
    third = baseline(torch.tensor([0.0]))
    assert second.item() == 2.0
    assert math.isclose(third.item(), 0.9 * 2.0 + 0.1 * 11.0, rel_tol=1e-6)
    assert math.isclose(baseline.value.item(), 0.9 * third.item(), rel_tol=1e-6)
    assert first.item() == 2.0  # a returned baseline is not changed by later updates


def test_moving_average_baseline_does_not_update_in_eval():
    baseline = MovingAverageBaseline(decay=0.5)
    baseline(torch.tensor([4.0]))
    baseline.eval()
    assert baseline(torch.tensor([100.0])).item() == 4.0
    assert baseline(torch.tensor([100.0])).item() == 4.0
    assert baseline.value.item() == 4.0


def test_moving_average_baseline_state_dict_round_trip():
    baseline = MovingAverageBaseline(decay=0.8)
    baseline(torch.tensor([1.0]))
    baseline(torch.tensor([6.0]))
    restored = MovingAverageBaseline(decay=0.8)
    restored.load_state_dict(baseline.state_dict())
    assert restored.value.item() == baseline.value.item()
    assert bool(restored.initialized)
    reward = torch.tensor([-3.0])
    assert restored(reward).item() == baseline(reward).item()


def grouped_baseline_after_two_batches() -> tuple[GroupedMovingAverageBaseline, list]:
    """A baseline of 3 groups (decay 0.5) and what it returned for two batches.

    Batch 1, rewards [1, 3, 5] in groups [0, 0, 1]: no group seen yet, so every row gets the
    global baseline, the batch mean 3. Then group 0 = 0.5 * 3 + 0.5 * 2 = 2.5 and group 1 =
    0.5 * 3 + 0.5 * 5 = 4. Batch 2, rewards [0, 8, 2] in groups [0, 1, 2]: 2.5, 4 and, for the
    new group 2, the global 3.
    """
    baseline = GroupedMovingAverageBaseline(num_groups=3, decay=0.5)
    returned = [
        baseline(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1])),
        baseline(torch.tensor([0.0, 8.0, 2.0]), torch.tensor([0, 1, 2])),
    ]
    return baseline, returned


def test_grouped_baseline_gives_each_row_its_groups_running_mean():
    baseline, (first, second) = grouped_baseline_after_two_batches()
    assert first.tolist() == [3.0, 3.0, 3.0]
    assert second.tolist() == [2.5, 4.0, 3.0]
    # 0.5 * 2.5 + 0.5 * 0, 0.5 * 4 + 0.5 * 8, 0.5 * 3 + 0.5 * 2
    assert baseline.group_value.tolist() == [1.25, 6.0, 2.5]
    assert baseline.group_initialized.tolist() == [True, True, True]
    assert math.isclose(baseline.value.item(), 0.5 * 3.0 + 0.5 * 10.0 / 3.0, rel_tol=1e-6)


def test_grouped_baseline_without_groups_is_the_global_moving_average():
    grouped, plain = (
        GroupedMovingAverageBaseline(num_groups=4, decay=0.9),
        MovingAverageBaseline(0.9),
    )
    for rewards in ([1.0, 3.0], [10.0, 12.0], [0.0]):
        reward = torch.tensor(rewards)
        assert grouped(reward).item() == plain(reward).item()
    assert not grouped.group_initialized.any()


def test_grouped_baseline_does_not_update_in_eval():
    baseline, _ = grouped_baseline_after_two_batches()
    baseline.eval()
    reward, group = torch.tensor([100.0, 100.0]), torch.tensor([0, 2])
    assert baseline(reward, group).tolist() == [1.25, 2.5]
    assert baseline(reward, group).tolist() == [1.25, 2.5]
    assert baseline.group_value.tolist() == [1.25, 6.0, 2.5]


def test_grouped_baseline_state_dict_round_trip():
    baseline, _ = grouped_baseline_after_two_batches()
    assert set(baseline.state_dict()) == {
        "value",
        "initialized",
        "group_value",
        "group_initialized",
    }
    restored = GroupedMovingAverageBaseline(num_groups=3, decay=0.5)
    restored.load_state_dict(baseline.state_dict())
    reward, group = torch.tensor([-3.0, 7.0]), torch.tensor([1, 0])
    assert restored(reward, group).tolist() == baseline(reward, group).tolist() == [6.0, 1.25]


# Argument checks.


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_select_topk_rejects_k_below_one_or_not_int(k):
    with pytest.raises(ValueError, match=re.escape(f"k must be an integer >= 1, got {k!r}")):
        select_topk(random_scores(2, 5), k)


def test_select_topk_rejects_k_above_region_count():
    with pytest.raises(
        ValueError, match=re.escape("k=6 is greater than the number of regions (5)")
    ):
        select_topk(random_scores(2, 5), 6)


def test_select_topk_rejects_k_above_valid_region_count():
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with pytest.raises(
        ValueError, match=re.escape("k=3 is greater than the number of valid regions (2)")
    ):
        select_topk(random_scores(2, 5), 3, mask=valid)


def test_select_topk_rejects_unknown_estimator():
    with pytest.raises(ValueError, match=r"estimator must be one of .* got 'straight'"):
        select_topk(random_scores(2, 5), 2, estimator="straight")


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_select_topk_rejects_non_positive_tau(tau):
    with pytest.raises(ValueError, match=re.escape(f"tau must be > 0, got {tau!r}")):
        select_topk(random_scores(2, 5), 2, tau=tau)


def test_select_topk_rejects_mask_of_wrong_shape():
    with pytest.raises(
        ValueError, match=re.escape("mask shape (2, 4) does not match scores shape (2, 5)")
    ):
        select_topk(random_scores(2, 5), 2, mask=torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_moving_average_baseline_rejects_decay_outside_unit_interval(decay):
    with pytest.raises(ValueError, match=re.escape(f"decay must be in [0, 1), got {decay!r}")):
        MovingAverageBaseline(decay=decay)


@pytest.mark.parametrize("num_groups", [0, 2.0, True])
def test_grouped_baseline_rejects_a_group_count_below_one_or_not_int(num_groups):
    with pytest.raises(ValueError, match="num_groups must be an integer >= 1"):
        GroupedMovingAverageBaseline(num_groups=num_groups)


def test_grouped_baseline_rejects_groups_of_another_shape_than_the_rewards():
    with pytest.raises(
        ValueError, match=re.escape("group shape (3,) does not match reward shape (2,)")
    ):
        GroupedMovingAverageBaseline(num_groups=4)(torch.zeros(2), torch.zeros(3, dtype=torch.long))
