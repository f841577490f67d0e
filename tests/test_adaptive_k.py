"""Tests for adaptive k in `hybrid_attention`: `TopP`, `LearnedBudget`, `select_adaptive` and
`HybridAttention` with a k per row."""

import re

import pytest
import torch

from hybrid_attention import (
    ESTIMATORS,
    BudgetHead,
    HybridAttention,
    LearnedBudget,
    TopP,
    plackett_luce_log_prob,
    select_adaptive,
    top_p_counts,
)
from hybrid_attention.adaptive import prefix_log_prob, slot_mask, slot_width

QUERY_DIM, KEY_DIM, DIM = 6, 8, 8
PATHS = pytest.mark.parametrize("grad", [True, False], ids=["dense", "gathered"])


def make_attention(k, seed: int = 0, **kwargs) -> HybridAttention:
    torch.manual_seed(seed)
    return HybridAttention(QUERY_DIM, key_dim=KEY_DIM, dim=DIM, k=k, **kwargs)


def make_inputs(batch: int = 4, queries: int = 1, regions: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    query = 3 * torch.randn(batch, queries, QUERY_DIM, generator=gen)  # peaked scores
    return query, torch.randn(batch, regions, KEY_DIM, generator=gen)


def brute_force_top_p(probs: list[float], p: float) -> int:
    """The smallest n whose n largest probabilities sum to at least p."""
    ranked = sorted(probs, reverse=True)
    for n in range(1, len(ranked) + 1):
        if sum(ranked[:n]) >= p:
            return n
    return len(ranked)


# The top-p rule.


@pytest.mark.parametrize("p", [0.3, 0.5, 0.77, 0.9, 0.99])
def test_top_p_picks_the_smallest_set_reaching_p(p):
    scores = 2 * torch.randn(
        64, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    counts = top_p_counts(scores, TopP(p, k_max=10))
    probs = scores.softmax(-1).tolist()
    assert counts.tolist() == [brute_force_top_p(row, p) for row in probs]


def test_top_p_counts_are_clamped_to_k_min_and_k_max():
    sharpness = torch.linspace(0.1, 4.0, 256)[:, None]  # flat to peaked rows
    scores = sharpness * torch.randn(256, 10, generator=torch.Generator().manual_seed(2))
    free = top_p_counts(scores, TopP(0.8, k_max=10))
    counts = top_p_counts(scores, TopP(0.8, k_min=3, k_max=6))
    assert counts.min() == 3 and counts.max() == 6
    assert (free < 3).any() and (free > 6).any()  # the clamp did something
    torch.testing.assert_close(counts, free.clamp(3, 6))


def test_top_p_ignores_padded_regions():
    scores = torch.tensor([[3.0, 2.0, 9.0, 1.0]])
    valid = torch.tensor([[True, True, False, True]])
    expected = brute_force_top_p(scores[0, [0, 1, 3]].softmax(-1).tolist(), 0.8)
    assert top_p_counts(scores, TopP(0.8, k_max=3), valid).item() == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"p": 0.0, "k_max": 4}, "top-p must be in (0, 1], got 0.0"),
        ({"p": 1.5, "k_max": 4}, "top-p must be in (0, 1], got 1.5"),
        ({"p": 0.9, "k_max": 2, "k_min": 3}, "k_min=3 is greater than k_max=2"),
        ({"p": 0.9, "k_max": 0}, "k must be an integer >= 1, got 0"),
    ],
)
def test_top_p_rejects_bad_settings(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TopP(**options)


# select_adaptive.


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("training", [True, False])
def test_adaptive_mask_is_exactly_zero_one_with_each_rows_count(estimator, training):
    scores = torch.randn(5, 3, 12, generator=torch.Generator().manual_seed(3), requires_grad=True)
    counts = torch.randint(1, 7, (5, 3), generator=torch.Generator().manual_seed(4))
    selection = select_adaptive(
        scores, slot_mask(counts, 6), estimator=estimator, training=training
    )
    assert set(selection.mask.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(selection.mask.detach().sum(-1), counts.float())
    assert torch.equal(selection.counts, counts)
    assert selection.indices.shape == (5, 3, 6)
    kept = selection.mask.detach().gather(-1, selection.indices)  # the first counts slots
    assert torch.equal(kept, slot_mask(counts, 6))


def test_adaptive_selection_never_keeps_padded_regions():
    scores = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    valid = torch.arange(8)[None] < torch.tensor([[8], [4]])
    selection = select_adaptive(scores, slot_mask(torch.tensor([4, 4]), 4), mask=valid)
    assert (selection.mask[~valid] == 0).all()


def test_reinforce_log_prob_is_that_of_the_kept_draws_only():
    scores = torch.randn(6, 10, generator=torch.Generator().manual_seed(6))
    counts = torch.tensor([1, 2, 3, 4, 5, 5])
    selection = select_adaptive(scores, slot_mask(counts, 5), estimator="reinforce", training=True)
    for row, count in enumerate(counts.tolist()):
        kept = selection.indices[row, :count]
        expected = plackett_luce_log_prob(scores[row], kept)
        torch.testing.assert_close(selection.log_prob[row], expected)


def test_prefix_log_prob_with_every_slot_kept_is_plackett_luce():
    scores = torch.randn(3, 7, generator=torch.Generator().manual_seed(7))
    indices = scores.topk(4).indices
    torch.testing.assert_close(
        prefix_log_prob(scores, indices, torch.ones(3, 4)),
        plackett_luce_log_prob(scores, indices),
    )


# HybridAttention with an adaptive k.


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
@pytest.mark.parametrize("rule", [TopP(0.8, k_max=6), LearnedBudget(k_min=1, k_max=6)], ids=str)
@PATHS
def test_weights_are_zero_outside_the_kept_regions_and_sum_to_one(mode, rule, grad):
    attn = make_attention(rule, mode=mode, num_heads=2).eval()
    with torch.set_grad_enabled(grad):
        out = attn(*make_inputs(queries=3))
    kept = out.weights > 0
    assert torch.equal(kept.sum(-1), out.counts)
    assert out.counts.min() >= rule.k_min and out.counts.max() <= rule.k_max
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(out.counts.shape))
    padding = torch.arange(6) >= out.counts[..., None]  # (B, H, Lq, k_max)
    assert (out.weights.gather(-1, out.indices)[padding] == 0).all()


@PATHS
def test_hybrid_weights_are_softmax_over_the_kept_scores_only(grad):
    attn = make_attention(TopP(0.7, k_max=8)).eval()
    with torch.set_grad_enabled(grad):
        out = attn(*make_inputs())
    for row in range(out.weights.shape[0]):
        count = out.counts[row, 0, 0]
        kept = out.indices[row, 0, 0, :count]
        expected = out.scores[row, 0, 0, kept].softmax(-1)
        torch.testing.assert_close(out.weights[row, 0, 0, kept], expected.detach())


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
@pytest.mark.parametrize("estimator", ["ste", "none"])
@PATHS
def test_each_row_of_a_mixed_k_batch_equals_that_row_alone_with_its_k(mode, estimator, grad):
    adaptive = make_attention(TopP(0.7, k_max=8), mode=mode, estimator=estimator).eval()
    query, regions = make_inputs(batch=6)
    with torch.set_grad_enabled(grad):
        out = adaptive(query, regions)
    counts = out.counts[:, 0, 0]
    assert len(counts.unique()) > 1  # the batch mixes several k
    fixed = make_attention(3, mode=mode, estimator=estimator).eval()
    fixed.load_state_dict(adaptive.state_dict())
    for row, count in enumerate(counts.tolist()):
        fixed.k = count
        with torch.set_grad_enabled(grad):
            alone = fixed(query[row : row + 1], regions[row : row + 1])
        torch.testing.assert_close(out.output[row : row + 1], alone.output)
        torch.testing.assert_close(out.weights[row : row + 1], alone.weights)


@PATHS
def test_a_batch_gathers_as_many_slots_as_its_largest_k(grad):
    attn = make_attention(TopP(0.5, k_max=8)).eval()
    query, regions = make_inputs(batch=6)
    with torch.set_grad_enabled(grad):
        out = attn(query, regions)
        alone = attn(query[:1], regions[:1])
    largest = int(out.counts.max())
    assert largest < 8
    assert out.indices.shape[-1] == largest
    assert alone.indices.shape[-1] == int(out.counts[0].max())


def test_a_learned_budget_trains_on_k_max_slots_and_answers_on_its_largest_k():
    attn = make_attention(LearnedBudget(k_min=1, k_max=8)).train()
    assert attn(*make_inputs()).indices.shape[-1] == 8  # every slot carries the gradient
    out = attn.eval()(*make_inputs())
    assert out.indices.shape[-1] == int(out.counts.max())


def test_slot_width_is_k_max_while_exporting():
    """An exported graph's shapes must not depend on the data: it runs on k_max slots."""
    counts = torch.tensor([2, 3])
    assert slot_width(counts, 8) == 3
    widths = []

    class Width(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            widths.append(slot_width(x, 8))
            return x + 1

    torch.export.export(Width(), (counts,))
    assert set(widths) == {8}


def test_mixed_k_batch_with_padded_regions():
    attn = make_attention(TopP(0.95, k_max=4)).eval()
    query, regions = make_inputs(batch=3)
    padding = torch.arange(12) >= torch.tensor([[12], [4], [7]])
    out = attn(query, regions, padding)
    assert (out.weights[padding[:, None, None, :].expand_as(out.weights)] == 0).all()
    assert out.counts.max() <= 4


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
@pytest.mark.parametrize("estimator", ["ste", "none"])
def test_task_gradient_reaches_the_budget_head(mode, estimator):
    attn = make_attention(LearnedBudget(k_min=2, k_max=6), mode=mode, estimator=estimator)
    out = attn(*make_inputs())
    out.output.square().sum().backward()
    assert attn.budget.proj.weight.grad.abs().sum() > 0


def test_compute_penalty_gradient_lowers_expected_k():
    attn = make_attention(LearnedBudget(k_min=1, k_max=6))
    query, regions = make_inputs()
    before = attn(query, regions).expected_counts.mean()
    before.backward()
    with torch.no_grad():
        for parameter in attn.budget.parameters():
            parameter -= 0.5 * parameter.grad
    assert attn(query, regions).expected_counts.mean() < before


def test_ste_gradient_reaches_the_scores_with_top_p():
    attn = make_attention(TopP(0.8, k_max=6), estimator="ste")
    attn(*make_inputs()).output.sum().backward()
    assert attn.k_proj.weight.grad.abs().sum() > 0
    assert attn.q_proj.weight.grad.abs().sum() > 0


def test_budget_counts_are_the_most_likely_k_in_eval():
    head = BudgetHead(QUERY_DIM, 2, LearnedBudget(k_min=2, k_max=5)).eval()
    query = torch.randn(4, 3, QUERY_DIM)
    budget = head(query)
    logits = head.proj(query).view(4, 3, 2, 4).transpose(1, 2)
    assert torch.equal(budget.counts, 2 + logits.argmax(-1))
    assert set(budget.slots.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(budget.slots.sum(-1), budget.counts.float())


def test_budget_samples_k_within_bounds_while_training():
    head = BudgetHead(QUERY_DIM, 1, LearnedBudget(k_min=2, k_max=5)).train()
    counts = head(torch.randn(512, 1, QUERY_DIM)).counts
    assert set(counts.unique().tolist()) == {2, 3, 4, 5}


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
def test_rule_switches_on_the_same_weights_and_back(mode):
    attn = make_attention(4, mode=mode).eval()
    inputs = make_inputs()
    fixed = attn(*inputs)
    attn.k = TopP(0.9, k_max=8)
    assert attn(*inputs).counts.max() <= 8
    attn.k = 4
    torch.testing.assert_close(attn(*inputs).output, fixed.output)


def test_a_budget_needs_its_head():
    attn = make_attention(4)
    with pytest.raises(ValueError, match="needs a budget head"):
        attn.k = LearnedBudget(k_max=4)
    assert attn.k == 4


def test_a_budget_head_keeps_its_range():
    attn = make_attention(LearnedBudget(k_max=6))
    attn.k = 3
    with pytest.raises(ValueError, match=re.escape("predicts k in 1..6")):
        attn.k = LearnedBudget(k_max=8)
    attn.k = LearnedBudget(k_max=6)
    assert attn.budget is not None


def test_forward_rejects_k_max_above_the_regions():
    attn = make_attention(TopP(0.9, k_max=13))
    with pytest.raises(ValueError, match=re.escape("k=13 is greater than the number of regions")):
        attn(*make_inputs())


@pytest.mark.parametrize("estimator", ["reinforce"])
def test_reinforce_with_adaptive_k_returns_log_prob_per_row(estimator):
    attn = make_attention(TopP(0.8, k_max=6), estimator=estimator, num_heads=2).train()
    out = attn(*make_inputs(queries=3))
    assert out.log_prob.shape == (4, 2, 3)
    assert torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize("rule", [TopP(0.8, k_max=6), LearnedBudget(k_max=6)], ids=str)
@pytest.mark.parametrize("estimator", ["ste", "none"])
def test_autocast_bfloat16_forward_and_backward(rule, estimator):
    attn = make_attention(rule, estimator=estimator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(*make_inputs())
    out.output.float().sum().backward()
    assert torch.isfinite(out.output.float()).all()
    assert torch.equal((out.weights > 0).sum(-1), out.counts)
