"""Tests for `hybrid_attention.tokens.TokenSelector`: keep k tokens, fold the rest."""

import math
import re

import pytest
import torch

from hybrid_attention import ESTIMATORS, TokenSelection, TokenSelector

DIM, QUERY_DIM = 8, 6


def make_selector(seed: int = 0, **kwargs) -> TokenSelector:
    torch.manual_seed(seed)
    options = {"dim": DIM, "query_dim": QUERY_DIM, "keep": 3} | kwargs
    return TokenSelector(**options)


def make_inputs(
    batch: int = 2, tokens: int = 10, seed: int = 0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, tokens, DIM) tokens and a (B, QUERY_DIM) query."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, tokens, DIM, generator=gen, **kwargs),
        torch.randn(batch, QUERY_DIM, generator=gen, **kwargs),
    )


def make_padding(length: int, num_valid: list[int]) -> torch.Tensor:
    """(B, length) bool key_padding_mask, True = padded, num_valid[b] valid tokens in row b."""
    return torch.arange(length)[None, :] >= torch.tensor(num_valid)[:, None]


def weighted_loss(selection: TokenSelection, seed: int = 1) -> torch.Tensor:
    """A loss that depends on every output token (unlike a plain sum of a layer-norm)."""
    weights = torch.randn(selection.tokens.shape, generator=torch.Generator().manual_seed(seed))
    return (selection.tokens * weights).sum()


# Forward values.


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_mask_is_exactly_binary_with_k_ones_for_every_estimator(estimator, training):
    selector = make_selector(estimator=estimator, keep=4).train(training)
    tokens, query = make_inputs(batch=3)
    out = selector(tokens, query)
    mask = out.mask.detach()
    assert mask.shape == (3, 10)
    assert torch.equal(mask, mask.round())
    assert torch.equal(mask.sum(-1), torch.full((3,), 4.0))
    assert torch.equal(mask.gather(-1, out.indices), torch.ones(3, 4))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kept_tokens_are_the_input_tokens_in_ascending_order_after_the_prefix(estimator):
    selector = make_selector(estimator=estimator, keep=4, num_prefix=2)
    tokens, query = make_inputs(tokens=12)
    out = selector(tokens, query)
    assert out.tokens.shape == (2, 2 + 4, DIM)
    assert torch.equal(out.indices, out.indices.sort(-1).values)
    assert torch.equal(out.tokens[:, :2], tokens[:, :2])
    for b in range(2):
        assert torch.equal(out.tokens[b, 2:], tokens[b, 2 + out.indices[b]])
    assert not out.padding.any()


def test_eval_keeps_the_highest_scores():
    selector = make_selector(keep=4).eval()
    tokens, query = make_inputs()
    out = selector(tokens, query)
    expected = out.scores.topk(4, dim=-1).indices.sort(-1).values
    assert torch.equal(out.indices, expected)


def test_fold_token_is_the_softmax_weighted_mean_of_the_dropped_tokens():
    selector = make_selector(keep=2, fold=True, num_prefix=1)
    tokens, _ = make_inputs(batch=1, tokens=5)
    # Tokens 0 and 2 are kept; the dropped 1 and 3 have softmax weights 1/4 and 3/4.
    scores = torch.tensor([[5.0, 0.0, 4.0, math.log(3.0)]])
    out = selector(tokens, scores=scores)
    assert out.indices.tolist() == [[0, 2]]
    scored = tokens[0, 1:]
    torch.testing.assert_close(out.tokens[0, -1], 0.25 * scored[1] + 0.75 * scored[3])
    assert torch.equal(out.tokens[0, :3], tokens[0, [0, 1, 3]])
    assert out.tokens.shape == (1, 1 + 2 + 1, DIM)
    assert out.padding.tolist() == [[False] * 4]


def test_padding_is_never_kept_and_ignored_by_the_fold():
    selector = make_selector(keep=2, fold=True)
    tokens, _ = make_inputs(batch=2, tokens=6)
    # Padding scores highest, so it would be kept (and weigh most in the fold) if it counted.
    scores = torch.tensor(
        [[0.0, 1.0, math.log(3.0), 9.0, 9.0, 9.0], [3.0, 2.0, 9.0, 9.0, 9.0, 9.0]]
    )
    padding = make_padding(6, [4, 2])
    out = selector(tokens, scores=scores, key_padding_mask=padding)
    assert out.indices.tolist() == [[2, 3], [0, 1]]
    # Row 0 folds tokens 0 and 1 (weights e^0 : e^1); row 1 has nothing left to fold.
    weight = 1.0 / (1.0 + math.e)
    torch.testing.assert_close(
        out.tokens[0, -1], weight * tokens[0, 0] + (1 - weight) * tokens[0, 1]
    )
    assert torch.equal(out.tokens[1, -1], torch.zeros(DIM))
    assert out.padding.tolist() == [[False, False, False], [False, False, True]]


def test_gradients_are_finite_when_a_row_has_nothing_to_fold():
    selector = make_selector(keep=2, fold=True)
    tokens, query = make_inputs(tokens=6)
    weighted_loss(selector(tokens, query, key_padding_mask=make_padding(6, [6, 2]))).backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in selector.parameters())


def test_padded_prefix_slots_stay_marked_as_padding():
    selector = make_selector(keep=2, num_prefix=2)
    tokens, query = make_inputs(tokens=8)
    padding = torch.zeros(2, 8, dtype=torch.bool)
    padding[1, 1] = True  # e.g. an unused register token
    out = selector(tokens, query, key_padding_mask=padding)
    assert out.padding.tolist() == [[False] * 4, [False, True, False, False]]


@pytest.mark.parametrize(
    ("keep", "num_tokens", "k"), [(0.25, 16, 4), (0.25, 10, 3), (0.07, 100, 7), (0.01, 10, 1)]
)
def test_keep_ratio_rounds_up_and_keeps_at_least_one(keep, num_tokens, k):
    selector = make_selector(keep=keep)
    tokens, query = make_inputs(tokens=num_tokens)
    assert selector(tokens, query).indices.shape == (2, k)


def test_keep_ratio_is_of_the_row_with_the_fewest_valid_tokens():
    selector = make_selector(keep=0.5)
    tokens, query = make_inputs(tokens=10)
    out = selector(tokens, query, key_padding_mask=make_padding(10, [10, 5]))
    assert out.indices.shape == (2, 3)  # ceil(0.5 * 5)


def test_keep_can_be_changed_after_construction():
    selector = make_selector(keep=0.5)
    tokens, query = make_inputs(tokens=16)
    assert selector(tokens, query).indices.shape == (2, 8)
    selector.keep = 0.25
    assert selector(tokens, query).indices.shape == (2, 4)
    selector.keep = 5
    assert selector(tokens, query).indices.shape == (2, 5)


@pytest.mark.parametrize("keep", [16, 1.0])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_keeping_every_token_returns_the_input_exactly(keep, estimator):
    selector = make_selector(keep=keep, estimator=estimator, fold=True, num_prefix=1)
    tokens, query = make_inputs(tokens=17)
    out = selector(tokens, query)
    assert torch.equal(out.tokens, tokens)
    assert torch.equal(out.mask, torch.ones(2, 16))
    assert torch.equal(out.indices, torch.arange(16).expand(2, 16))
    assert not out.padding.any() and out.padding.shape == (2, 17)
    assert out.scores.shape == (2, 16)


def test_keeping_every_token_keeps_padding_marked():
    selector = make_selector(keep=1.0, fold=True)
    tokens, query = make_inputs(tokens=6)
    padding = make_padding(6, [6, 3])
    out = selector(tokens, query, key_padding_mask=padding)
    assert torch.equal(out.tokens, tokens)
    assert torch.equal(out.padding, padding)


# Gradients.


@pytest.mark.parametrize("estimator", ["ste", "gumbel"])
def test_estimator_gradient_reaches_the_scorer_projections(estimator):
    selector = make_selector(estimator=estimator, keep=4)  # no fold: the mask is the only path
    tokens, query = make_inputs()
    weighted_loss(selector(tokens, query)).backward()
    for projection in (selector.q_proj, selector.k_proj):
        assert projection.weight.grad is not None
        assert projection.weight.grad.abs().sum() > 0


def test_fold_weights_give_the_scorer_a_gradient():
    selector = make_selector(estimator="none", keep=4, fold=True)
    tokens, query = make_inputs()
    weighted_loss(selector(tokens, query)).backward()
    assert selector.k_proj.weight.grad.abs().sum() > 0


def test_no_estimator_and_no_fold_leave_the_scorer_without_gradient():
    selector = make_selector(estimator="none", keep=4)
    tokens, query = make_inputs()
    tokens.requires_grad_()
    weighted_loss(selector(tokens, query)).backward()
    assert selector.k_proj.weight.grad is None
    assert tokens.grad.abs().sum() > 0  # the kept tokens still pass a gradient back


def test_reinforce_gives_a_finite_log_prob_with_gradient_to_the_scorer():
    selector = make_selector(estimator="reinforce", keep=4)
    tokens, query = make_inputs()
    out = selector(tokens, query)
    assert out.log_prob.shape == (2,)
    assert torch.isfinite(out.log_prob).all()
    out.log_prob.sum().backward()
    assert torch.isfinite(selector.q_proj.weight.grad).all()
    assert selector.q_proj.weight.grad.abs().sum() > 0


def test_log_prob_is_none_unless_reinforce_is_sampling():
    tokens, query = make_inputs()
    assert make_selector(estimator="ste")(tokens, query).log_prob is None
    assert make_selector(estimator="reinforce").eval()(tokens, query).log_prob is None


def test_given_scores_bypass_the_scorer():
    selector = make_selector(keep=4, fold=True)
    tokens, _ = make_inputs()
    scores = torch.randn(2, 10, generator=torch.Generator().manual_seed(3)).requires_grad_()
    out = selector(tokens, scores=scores)
    weighted_loss(out).backward()
    assert all(parameter.grad is None for parameter in selector.parameters())
    assert scores.grad.abs().sum() > 0
    assert torch.equal(out.scores, scores.detach())


# Modes and determinism.


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_eval_is_deterministic(estimator):
    selector = make_selector(estimator=estimator, keep=4, fold=True).eval()
    tokens, query = make_inputs()
    torch.manual_seed(0)
    first = selector(tokens, query)
    torch.manual_seed(1)
    second = selector(tokens, query)
    assert torch.equal(first.indices, second.indices)
    assert torch.equal(first.tokens, second.tokens)


def test_gumbel_training_samples_vary():
    selector = make_selector(estimator="gumbel", keep=4)
    tokens, query = make_inputs(batch=1, tokens=16)
    samples = set()
    for seed in range(10):
        torch.manual_seed(seed)
        samples.add(tuple(selector(tokens, query).indices[0].tolist()))
    assert len(samples) > 1


@pytest.mark.parametrize("query_shape", [(2, QUERY_DIM), (2, 1, QUERY_DIM)], ids=["2d", "3d"])
def test_output_shapes_for_a_2d_and_a_3d_query(query_shape):
    selector = make_selector(keep=3, fold=True, num_prefix=1)
    tokens, query = make_inputs(tokens=11)
    out = selector(tokens, query.reshape(query_shape))
    assert out.tokens.shape == (2, 1 + 3 + 1, DIM)
    assert out.indices.shape == (2, 3)
    assert out.mask.shape == out.scores.shape == (2, 10)
    assert out.padding.shape == (2, 5)
    torch.testing.assert_close(out.scores, selector(tokens, query).scores)


def test_scores_differ_between_tokens_from_the_first_step():
    """Glorot projections on layer-normalised inputs: scores of order 1, not ~0."""
    selector = make_selector()
    tokens, query = make_inputs(tokens=64)
    with torch.no_grad():
        assert selector(tokens, query).scores.std(-1).mean() > 0.1


def test_low_precision_tokens_are_kept_exactly():
    selector = make_selector(keep=4, fold=True).to(torch.bfloat16)
    tokens, query = make_inputs(dtype=torch.bfloat16)
    out = selector(tokens, query)
    assert out.tokens.dtype == torch.bfloat16 and out.scores.dtype == torch.float32
    for b in range(2):
        assert torch.equal(out.tokens[b, :4], tokens[b, out.indices[b]])


# Errors.


def test_keep_more_than_the_valid_tokens_raises_naming_the_row():
    selector = make_selector(keep=3)
    tokens, query = make_inputs(batch=3, tokens=6)
    padding = make_padding(6, [6, 4, 2])
    with pytest.raises(ValueError, match=re.escape("k=3 tokens, but row 2 has only 2 valid")):
        selector(tokens, query, key_padding_mask=padding)


def test_keep_more_than_the_tokens_raises():
    selector = make_selector(keep=11, num_prefix=1)
    tokens, query = make_inputs(tokens=11)
    with pytest.raises(ValueError, match=re.escape("keep=11 is more than the 10 tokens")):
        selector(tokens, query)


@pytest.mark.parametrize("keep", [0, -1, 0.0, 1.5, True, "half"])
def test_invalid_keep_raises(keep):
    with pytest.raises(ValueError, match="keep must be an int >= 1 or a float in"):
        make_selector(keep=keep)


def test_exactly_one_of_query_and_scores_is_required():
    selector = make_selector()
    tokens, query = make_inputs()
    with pytest.raises(ValueError, match="exactly one of query and scores"):
        selector(tokens)
    with pytest.raises(ValueError, match="exactly one of query and scores"):
        selector(tokens, query, scores=torch.zeros(2, 10))


@pytest.mark.parametrize(
    ("tokens_shape", "query_shape", "message"),
    [
        ((2, 10, DIM + 1), (2, QUERY_DIM), "tokens must have shape"),
        ((2, 10, DIM), (2, 2, QUERY_DIM), "query must have shape"),
        ((2, 10, DIM), (3, QUERY_DIM), "query must have shape"),
    ],
)
def test_bad_shapes_raise(tokens_shape, query_shape, message):
    with pytest.raises(ValueError, match=message):
        make_selector()(torch.zeros(tokens_shape), torch.zeros(query_shape))


def test_bad_scores_and_padding_shapes_raise():
    selector = make_selector(num_prefix=1)
    tokens, _ = make_inputs()
    with pytest.raises(ValueError, match=re.escape("scores must have shape (2, 9)")):
        selector(tokens, scores=torch.zeros(2, 10))
    with pytest.raises(ValueError, match="key_padding_mask must be a bool tensor"):
        selector(tokens, scores=torch.zeros(2, 9), key_padding_mask=torch.zeros(2, 9).bool())


def test_invalid_estimator_raises():
    with pytest.raises(ValueError, match="estimator must be one of"):
        make_selector(estimator="straight")
