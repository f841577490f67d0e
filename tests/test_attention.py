"""Tests for `hybrid_attention.attention.HybridAttention` and `gather_regions`."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import dense_and_gathered

from hybrid_attention import ESTIMATORS, MODES, HybridAttention, gather_regions

QUERY_DIM, KEY_DIM, DIM, HEADS = 6, 8, 8, 2

# With ste, grad enabled takes the dense straight-through path and no grad the gathered one.
AGGREGATION_PATHS = pytest.mark.parametrize("grad", [True, False], ids=["dense", "gathered"])


def make_attention(seed: int = 0, **kwargs) -> HybridAttention:
    torch.manual_seed(seed)
    options = {"key_dim": KEY_DIM, "dim": DIM, "num_heads": HEADS, "k": 3} | kwargs
    return HybridAttention(QUERY_DIM, **options)


def make_inputs(
    batch: int = 2, queries: int = 3, regions: int = 10, seed: int = 0, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, queries, QUERY_DIM, generator=gen, **kwargs)
    return query, torch.randn(batch, regions, KEY_DIM, generator=gen, **kwargs)


def make_padding(batch: int, regions: int, num_valid: list[int]) -> torch.Tensor:
    """(B, N) bool key_padding_mask, True = padded, with num_valid[b] valid regions in row b."""
    return torch.arange(regions)[None, :] >= torch.tensor(num_valid)[:, None]


def selected_mask(indices: torch.Tensor, num_regions: int) -> torch.Tensor:
    """(..., k) indices -> (..., N) bool, True at the selected regions."""
    hit = torch.zeros(*indices.shape[:-1], num_regions, dtype=torch.bool)
    return hit.scatter(-1, indices, True)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, L, H*d) -> (B, H, L, d)


def reference_soft_attention(
    attn: HybridAttention,
    query: torch.Tensor,
    regions: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Plain multi-head softmax attention, one head at a time, from the module's weights.

    With ``top_k``, each softmax runs over the ``top_k`` best scores only (hybrid attention).
    """
    q = F.linear(query, attn.q_proj.weight, attn.q_proj.bias)
    k = F.linear(regions, attn.k_proj.weight, attn.k_proj.bias)
    v = F.linear(regions, attn.v_proj.weight, attn.v_proj.bias)
    head_dim = q.shape[-1] // attn.num_heads
    heads = []
    for h in range(attn.num_heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(head_dim)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
        if top_k is not None:
            kth_best = scores.topk(top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., part])
    return F.linear(torch.cat(heads, -1), attn.out_proj.weight, attn.out_proj.bias)


def reference_hard_attention(
    attn: HybridAttention, regions: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Out-projection of the mean of the selected value vectors, one (b, h, l) at a time."""
    values = split_heads(F.linear(regions, attn.v_proj.weight, attn.v_proj.bias), attn.num_heads)
    batch, heads, queries, _ = indices.shape
    mean = torch.zeros(batch, heads, queries, values.shape[-1])
    for b in range(batch):
        for h in range(heads):
            for q in range(queries):
                mean[b, h, q] = values[b, h, indices[b, h, q]].mean(0)
    merged = mean.transpose(1, 2).reshape(batch, queries, -1)
    return F.linear(merged, attn.out_proj.weight, attn.out_proj.bias)


# Soft mode.


@pytest.mark.parametrize("padded", [False, True])
def test_soft_mode_matches_reference_softmax_attention(padded):
    attn = make_attention(mode="soft")
    query, regions = make_inputs()
    padding = make_padding(2, 10, [10, 6]) if padded else None
    out = attn(query, regions, padding)
    torch.testing.assert_close(out.output, reference_soft_attention(attn, query, regions, padding))
    assert out.indices is None
    assert out.log_prob is None


def test_soft_weights_sum_to_one_and_are_zero_on_padded_regions():
    padding = make_padding(2, 10, [10, 4])
    out = make_attention(mode="soft")(*make_inputs(), padding)
    assert (out.weights[padding[:, None, None, :].expand_as(out.weights)] == 0).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, HEADS, 3))


# Hard and hybrid modes.


@AGGREGATION_PATHS
def test_hard_output_is_out_projection_of_mean_selected_values(grad):
    attn = make_attention(mode="hard")
    query, regions = make_inputs()
    with torch.set_grad_enabled(grad):
        out = attn(query, regions)
    expected = reference_hard_attention(attn, regions, out.indices)
    torch.testing.assert_close(out.output, expected)


@AGGREGATION_PATHS
def test_hybrid_output_matches_reference_softmax_over_top_k(grad):
    attn = make_attention(mode="hybrid", k=3)
    query, regions = make_inputs(queries=4, regions=12)
    padding = make_padding(2, 12, [12, 5])
    with torch.set_grad_enabled(grad):
        out = attn(query, regions, padding)
    expected = reference_soft_attention(attn, query, regions, padding, top_k=3)
    torch.testing.assert_close(out.output, expected)


@AGGREGATION_PATHS
def test_hybrid_weights_are_softmax_over_selected_scores_only(grad):
    attn = make_attention(mode="hybrid", k=3)
    with torch.set_grad_enabled(grad):
        out = attn(*make_inputs())
    selected = selected_mask(out.indices, 10)
    assert torch.equal(out.indices, out.scores.topk(3, dim=-1).indices)
    assert (out.weights[~selected] == 0).all()
    torch.testing.assert_close(
        out.weights.gather(-1, out.indices), out.scores.gather(-1, out.indices).softmax(-1)
    )
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, HEADS, 3))


@AGGREGATION_PATHS
@pytest.mark.parametrize("estimator", ["ste", "none"])
def test_hybrid_output_ignores_values_of_non_selected_regions(estimator, grad):
    attn = make_attention(mode="hybrid", k=2, estimator=estimator)
    with torch.no_grad():
        # Keys (so scores and selection) depend on the first half of the features only; values
        # depend on all of them. Moving the second half moves values and leaves keys alone.
        attn.k_proj.weight[:, KEY_DIM // 2 :] = 0
    query, regions = make_inputs(queries=2, regions=12)
    with torch.set_grad_enabled(grad):
        before = attn(query, regions)
    unused = ~selected_mask(before.indices, 12).flatten(1, 2).any(1)  # (B, N)
    assert unused.any(-1).all(), "every example needs some non-selected regions"
    moved = regions.clone()
    moved[..., KEY_DIM // 2 :] += 100.0 * unused[..., None]
    with torch.set_grad_enabled(grad):
        after = attn(query, moved)
    assert torch.equal(after.indices, before.indices)
    torch.testing.assert_close(after.output, before.output, rtol=0, atol=1e-6)
    # The same move does reach the output of soft attention, so it does move the values.
    attn.mode = "soft"
    assert not torch.allclose(attn(query, moved).output, attn(query, regions).output)


@pytest.mark.parametrize("estimator", ["ste", "gumbel"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", ["hard", "hybrid"])
def test_straight_through_path_matches_gathered_path(mode, training, estimator):
    attn = make_attention(mode=mode, k=3, estimator=estimator).train(training)
    query, regions = make_inputs(queries=4, regions=12)
    padding = make_padding(2, 12, [12, 7])
    dense, gathered = dense_and_gathered(attn, query, regions, padding)
    assert dense.output.requires_grad
    assert torch.equal(dense.indices, gathered.indices)
    torch.testing.assert_close(dense.output, gathered.output)
    torch.testing.assert_close(dense.weights, gathered.weights)


def test_ste_gives_gradient_to_scores_of_non_selected_regions():
    attn = make_attention(mode="hybrid", k=2, estimator="ste")
    out = attn(*make_inputs())
    out.scores.retain_grad()
    out.output.square().sum().backward()
    not_selected = ~selected_mask(out.indices, 10)
    assert (out.scores.grad[not_selected] != 0).all()


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
def test_ste_soft_gives_non_selected_regions_the_gradient_of_soft_attention(mode):
    query, regions = make_inputs()
    padding = make_padding(2, 10, [10, 6])
    upstream = torch.randn(2, 3, QUERY_DIM, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for estimator, attn in [
        ("ste-soft", make_attention(mode=mode, k=2, estimator="ste-soft")),
        ("ste", make_attention(mode=mode, k=2, estimator="ste")),
        ("soft", make_attention(mode="soft")),
    ]:
        out = attn(query, regions, padding)
        out.scores.retain_grad()
        (out.output * upstream).sum().backward()
        outputs[estimator] = out
    surrogate, straight, soft = outputs["ste-soft"], outputs["ste"], outputs["soft"]
    torch.testing.assert_close(surrogate.output, straight.output)
    torch.testing.assert_close(surrogate.weights, straight.weights)
    outside = ~selected_mask(surrogate.indices, 10) & ~padding[:, None, None, :]
    torch.testing.assert_close(surrogate.scores.grad[outside], soft.scores.grad[outside])
    assert not torch.allclose(straight.scores.grad[outside], soft.scores.grad[outside])


def test_none_estimator_gives_no_gradient_to_scores_of_non_selected_regions():
    attn = make_attention(mode="hybrid", k=2, estimator="none")
    out = attn(*make_inputs())
    out.scores.retain_grad()
    out.output.square().sum().backward()
    assert (out.scores.grad[~selected_mask(out.indices, 10)] == 0).all()


def test_reinforce_returns_log_prob_per_head_and_query_while_training():
    out = make_attention(mode="hybrid", estimator="reinforce")(*make_inputs())
    assert out.log_prob.shape == (2, HEADS, 3)
    assert out.log_prob.requires_grad


def test_reinforce_returns_no_log_prob_in_eval():
    attn = make_attention(mode="hybrid", estimator="reinforce").eval()
    assert attn(*make_inputs()).log_prob is None


@AGGREGATION_PATHS
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("mode", MODES)
def test_padded_regions_are_never_attended(mode, estimator, training, grad):
    attn = make_attention(mode=mode, k=3, estimator=estimator).train(training)
    for trial in range(5):
        query, regions = make_inputs(batch=4, regions=9, seed=trial)
        padding = make_padding(4, 9, [9, 3, 5, 4]).roll(trial, dims=1)
        with torch.set_grad_enabled(grad):
            out = attn(query, regions, padding)
        padded = padding[:, None, None, :].expand_as(out.weights)
        assert (out.weights[padded] == 0).all()
        if mode != "soft":
            assert not padded.gather(-1, out.indices).any()


# Gradcheck (float64).


@pytest.mark.parametrize("mode", MODES)
def test_float64_module_computes_scores_in_float64(mode):
    attn = make_attention(mode=mode).double()
    out = attn(*make_inputs(dtype=torch.float64))
    assert out.scores.dtype == torch.float64
    assert out.weights.dtype == torch.float64


def test_soft_attention_gradcheck():
    attn = make_attention(mode="soft").double()
    query, regions = make_inputs(queries=2, regions=5, dtype=torch.float64)
    padding = make_padding(2, 5, [5, 3])
    assert torch.autograd.gradcheck(
        lambda q, r: attn(q, r, padding).output,
        (query.requires_grad_(), regions.requires_grad_()),
    )


def test_hybrid_none_attention_gradcheck_wrt_query():
    # The selection is locally constant, so the output is smooth in the query.
    attn = make_attention(mode="hybrid", k=2, estimator="none").double()
    query, regions = make_inputs(queries=2, regions=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: attn(q, regions).output, (query.requires_grad_(),))


# Changing settings after construction.


def test_mode_and_k_can_be_changed_after_construction():
    attn = make_attention(mode="hybrid", k=3)
    query, regions = make_inputs()
    attn.mode = "soft"
    torch.testing.assert_close(
        attn(query, regions).output, reference_soft_attention(attn, query, regions)
    )
    attn.mode, attn.k = "hybrid", 2
    assert ((attn(query, regions).weights != 0).sum(-1) == 2).all()
    attn.mode = "hard"
    hard = attn(query, regions)
    torch.testing.assert_close(hard.output, reference_hard_attention(attn, regions, hard.indices))


def test_estimator_and_tau_can_be_changed_after_construction():
    attn = make_attention(mode="hybrid", estimator="ste", tau=1.0)
    query, regions = make_inputs()

    def score_grad() -> torch.Tensor:
        out = attn(query, regions)
        out.scores.retain_grad()
        out.output.sum().backward()
        return out.scores.grad

    at_one = score_grad()
    attn.tau = 0.25
    assert not torch.allclose(score_grad(), at_one)
    attn.estimator = "reinforce"
    assert attn(query, regions).log_prob is not None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("mode", "sparse", "mode must be one of ('soft', 'hard', 'hybrid'), got 'sparse'"),
        ("k", 0, "k must be an integer >= 1, got 0"),
        ("k", 2.0, "k must be an integer >= 1, got 2.0"),
        ("estimator", "straight", "got 'straight'"),
        ("tau", 0.0, "tau must be > 0, got 0.0"),
        ("tau", -1, "tau must be > 0, got -1"),
    ],
)
def test_invalid_setting_raises_and_keeps_the_old_value(name, value, message):
    attn = make_attention()
    old = getattr(attn, name)
    with pytest.raises(ValueError, match=re.escape(message)):
        setattr(attn, name, value)
    assert getattr(attn, name) == old


# Argument checks.


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_constructor_rejects_k_below_one_or_not_int(k):
    with pytest.raises(ValueError, match=re.escape(f"k must be an integer >= 1, got {k!r}")):
        make_attention(k=k)


def test_forward_rejects_k_above_region_count():
    attn = make_attention(k=4)
    with pytest.raises(
        ValueError, match=re.escape("k=4 is greater than the number of regions (3)")
    ):
        attn(*make_inputs(regions=3))


def test_forward_rejects_k_above_valid_region_count():
    attn = make_attention(k=3)
    padding = make_padding(2, 10, [10, 2])
    with pytest.raises(
        ValueError, match=re.escape("k=3 is greater than the number of valid regions (2)")
    ):
        attn(*make_inputs(), padding)


def test_soft_mode_ignores_k_above_region_count():
    out = make_attention(mode="soft", k=8)(*make_inputs(regions=3))
    assert out.weights.shape == (2, HEADS, 3, 3)


def test_constructor_rejects_unknown_mode():
    with pytest.raises(ValueError, match=re.escape("got 'sparse'")):
        make_attention(mode="sparse")


def test_constructor_rejects_unknown_estimator():
    with pytest.raises(ValueError, match=r"estimator must be one of .* got 'straight'"):
        make_attention(estimator="straight")


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_constructor_rejects_non_positive_tau(tau):
    with pytest.raises(ValueError, match=re.escape(f"tau must be > 0, got {tau!r}")):
        make_attention(tau=tau)


@pytest.mark.parametrize("num_heads", [3, 0])
def test_constructor_rejects_num_heads_not_dividing_dim(num_heads):
    with pytest.raises(
        ValueError, match=re.escape(f"num_heads={num_heads} must be >= 1 and divide dim=8")
    ):
        make_attention(num_heads=num_heads)


def test_forward_rejects_query_feature_size_mismatch():
    query, regions = make_inputs()
    with pytest.raises(
        ValueError, match=re.escape("query must have shape (B, Lq, 6), got (2, 3, 5)")
    ):
        make_attention()(query[..., :5], regions)


def test_forward_rejects_regions_feature_size_mismatch():
    query, regions = make_inputs()
    with pytest.raises(
        ValueError, match=re.escape("regions must have shape (B, N, 8), got (2, 10, 7)")
    ):
        make_attention()(query, regions[..., :7])


def test_forward_rejects_batch_size_mismatch():
    query, regions = make_inputs()
    with pytest.raises(ValueError, match=re.escape("query batch size 2 != regions batch size 1")):
        make_attention()(query, regions[:1])


@pytest.mark.parametrize(
    ("padding", "described"),
    [
        (torch.zeros(2, 9, dtype=torch.bool), "torch.bool (2, 9)"),
        (torch.zeros(10, dtype=torch.bool), "torch.bool (10,)"),
        (torch.zeros(2, 10), "torch.float32 (2, 10)"),
    ],
)
def test_forward_rejects_key_padding_mask_of_wrong_shape_or_dtype(padding, described):
    message = f"key_padding_mask must be a bool tensor of shape (2, 10), got {described}"
    with pytest.raises(ValueError, match=re.escape(message)):
        make_attention()(*make_inputs(), padding)


def test_forward_rejects_key_padding_mask_that_pads_a_whole_example():
    padding = make_padding(2, 10, [10, 0])
    with pytest.raises(ValueError, match="key_padding_mask pads every region"):
        make_attention(mode="soft")(*make_inputs(), padding)


# gather_regions.


def test_gather_regions_matches_python_loop():
    gen = torch.Generator().manual_seed(0)
    regions = torch.randn(2, 7, 5, generator=gen)
    indices = torch.randint(0, 7, (2, 3, 4, 2), generator=gen)
    expected = torch.empty(2, 3, 4, 2, 5)
    for b in range(2):
        for h in range(3):
            for q in range(4):
                for j in range(2):
                    expected[b, h, q, j] = regions[b, indices[b, h, q, j]]
    assert torch.equal(gather_regions(regions, indices), expected)


# Low precision.


MODE_ESTIMATORS = [("soft", "ste")] + [(m, e) for m in ("hard", "hybrid") for e in ESTIMATORS]


@pytest.mark.parametrize(("mode", "estimator"), MODE_ESTIMATORS)
def test_autocast_bfloat16_forward_and_backward(mode, estimator):
    attn = make_attention(mode=mode, k=3, estimator=estimator)
    query, regions = make_inputs()
    padding = make_padding(2, 10, [10, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(query, regions, padding)
    assert out.output.shape == (2, 3, QUERY_DIM)
    assert torch.isfinite(out.output).all()
    assert (out.weights[padding[:, None, None, :].expand_as(out.weights)] == 0).all()
    if mode != "soft":
        assert (out.weights[~selected_mask(out.indices, 10)] == 0).all()
    loss = out.output.float().square().sum()
    if out.log_prob is not None:
        loss = loss + out.log_prob.sum()
    loss.backward()
    grads = [p.grad for p in attn.parameters() if p.grad is not None]
    assert attn.v_proj.weight.grad is not None
    assert all(torch.isfinite(grad).all() for grad in grads)


@pytest.mark.parametrize("mode", MODES)
def test_autocast_bfloat16_inference(mode):
    attn = make_attention(mode=mode, k=3).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(*make_inputs())
    assert out.output.shape == (2, 3, QUERY_DIM)
    assert torch.isfinite(out.output).all()
    if mode != "soft":
        assert (out.weights[~selected_mask(out.indices, 10)] == 0).all()


@pytest.mark.parametrize(("mode", "estimator"), MODE_ESTIMATORS)
def test_bfloat16_module_runs_without_autocast(mode, estimator):
    attn = make_attention(mode=mode, k=3, estimator=estimator).to(torch.bfloat16)
    query, regions = make_inputs(dtype=torch.bfloat16)
    out = attn(query, regions, make_padding(2, 10, [10, 5]))
    assert out.output.dtype == torch.bfloat16
    assert torch.isfinite(out.output).all()
    out.output.float().sum().backward()
    assert torch.isfinite(attn.out_proj.weight.grad).all()
    with torch.inference_mode():
        assert torch.isfinite(attn.eval()(query, regions).output).all()
