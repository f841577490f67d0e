"""The attention sink of `HybridAttention(sink=True)` and of `vqa train --attention-sink`: a learned
logit per head joins the softmax (over every region in soft mode, over the selected k in hybrid
mode) with a zero value, so that the weights over the regions can sum to less than 1."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import dense_and_gathered
from PIL import Image
from safetensors.torch import load_file

from hybrid_attention import HybridAttention, TopP
from vqa.configuration import HybridVQAConfig
from vqa.inference import load_model

QUERY_DIM, KEY_DIM, DIM, HEADS, REGIONS = 6, 8, 8, 2, 12
SINKS = torch.tensor([0.7, -0.4])  # one logit per head


def make_attention(**kwargs) -> HybridAttention:
    torch.manual_seed(0)
    options = {"key_dim": KEY_DIM, "dim": DIM, "num_heads": HEADS, "k": 3, "sink": True} | kwargs
    attention = HybridAttention(QUERY_DIM, **options)
    if attention.sink_logit is not None:
        with torch.no_grad():
            attention.sink_logit.copy_(SINKS)
    return attention


def make_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (2, 3, QUERY_DIM), regions (2, REGIONS, KEY_DIM), padding: row 1 has 7 regions."""
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, QUERY_DIM, generator=gen)
    regions = torch.randn(2, REGIONS, KEY_DIM, generator=gen)
    padding = torch.arange(REGIONS)[None, :] >= torch.tensor([REGIONS, 7])[:, None]
    return query, regions, padding


def reference(attention: HybridAttention, query, regions, padding, top_k: int | None = None):
    """Weights (B, H, Lq, N) and output of a softmax over [scores of the allowed regions, the
    head's sink logit], one head at a time, the sink's value being zero."""
    q = F.linear(query, attention.q_proj.weight, attention.q_proj.bias)
    k = F.linear(regions, attention.k_proj.weight)
    v = F.linear(regions, attention.v_proj.weight, attention.v_proj.bias)
    head_dim = DIM // HEADS
    weights, heads = [], []
    for h in range(HEADS):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(head_dim)
        scores = scores.masked_fill(padding[:, None, :], float("-inf"))
        if top_k is not None:
            kth_best = scores.topk(top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        exp = scores.exp()
        weight = exp / (exp.sum(-1, keepdim=True) + attention.sink_logit[h].exp())
        weights.append(weight)
        heads.append(weight @ v[..., part])
    output = F.linear(torch.cat(heads, -1), attention.out_proj.weight, attention.out_proj.bias)
    return torch.stack(weights, 1), output


@pytest.mark.parametrize("grad", [True, False], ids=["dense", "gathered"])
@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_the_sink_takes_its_share_of_the_softmax(mode, grad):
    attention = make_attention(mode=mode)
    query, regions, padding = make_inputs()
    with torch.set_grad_enabled(grad):
        out = attention(query, regions, padding)
    weights, output = reference(attention, query, regions, padding, 3 if mode == "hybrid" else None)
    torch.testing.assert_close(out.weights, weights)
    torch.testing.assert_close(out.output, output)
    total = out.weights.sum(-1)
    assert (total < 1).all() and (total > 0).all()
    assert (out.weights[padding[:, None, None, :].expand_as(out.weights)] == 0).all()


@pytest.mark.parametrize("estimator", ["ste", "ste-soft", "gumbel", "none"])
def test_dense_and_gathered_paths_agree_with_a_sink(estimator):
    attention = make_attention(mode="hybrid", estimator=estimator).train()
    query, regions, padding = make_inputs()
    dense, gathered = dense_and_gathered(attention, query, regions, padding)
    assert torch.equal(dense.indices, gathered.indices)
    torch.testing.assert_close(dense.weights, gathered.weights)
    torch.testing.assert_close(dense.output, gathered.output)


def test_an_adaptive_k_keeps_the_sink_over_its_own_slots():
    attention = make_attention(mode="hybrid", k=TopP(0.6, k_max=6))
    query, regions, padding = make_inputs()
    with torch.no_grad():
        out = attention(query, regions, padding)
    for b, h, q in torch.cartesian_prod(*(torch.arange(n) for n in out.counts.shape)).tolist():
        kept = out.indices[b, h, q, : out.counts[b, h, q]]
        exp = out.scores[b, h, q, kept].exp()
        expected = exp / (exp.sum() + SINKS[h].exp())
        torch.testing.assert_close(out.weights[b, h, q, kept], expected)
        assert out.weights[b, h, q].count_nonzero() == len(kept)
    attention.train()
    torch.testing.assert_close(attention(query, regions, padding).weights, out.weights)


@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_the_sink_logit_is_trained(mode):
    attention = make_attention(mode=mode)
    attention(*make_inputs()).output.square().sum().backward()
    assert attention.sink_logit.grad is not None
    assert (attention.sink_logit.grad != 0).all()


def test_hard_mode_ignores_the_sink():
    query, regions, padding = make_inputs()
    with_sink = make_attention(mode="hard")(query, regions, padding)
    without = make_attention(mode="hard", sink=False)(query, regions, padding)
    torch.testing.assert_close(with_sink.output, without.output)
    torch.testing.assert_close(with_sink.weights.sum(-1), torch.ones(2, HEADS, 3))


@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_a_very_low_sink_is_attention_without_one(mode):
    query, regions, padding = make_inputs()
    attention = make_attention(mode=mode)
    with torch.no_grad():
        attention.sink_logit.fill_(-100.0)
    without = make_attention(mode=mode, sink=False)
    assert "sink_logit" not in without.state_dict()  # models saved without a sink load as before
    torch.testing.assert_close(
        attention(query, regions, padding).output, without(query, regions, padding).output
    )


def test_the_config_field_must_be_a_bool(tiny_fields):
    with pytest.raises(ValueError, match="'fusion_sink' must be a bool, got 1"):
        HybridVQAConfig(**tiny_fields, fusion_sink=1)


def test_vqa_train_attention_sink_trains_saves_and_reloads_the_sink(dataset, tmp_path, train_tiny):
    run = tmp_path / "run"
    assert train_tiny(dataset, run, "--attention-sink", "--epochs", "2") == 0
    assert json.loads((run / "config.json").read_text())["fusion_sink"] is True
    saved = load_file(run / "model.safetensors")["fusion.sink_logit"].float()
    assert saved.shape == (1,) and saved.abs().max() > 0  # it moved from its start at 0
    model, processor = load_model(run, "cpu")
    torch.testing.assert_close(model.fusion.sink_logit.detach(), saved)
    row = json.loads((dataset / "val.jsonl").read_text().splitlines()[0])
    inputs = processor(images=[Image.open(dataset / row["image"])], questions=[row["question"]])
    with torch.no_grad():
        weights = model(**inputs).attention_weights
    assert 0 < float(weights.sum()) < 1


def test_init_from_refuses_to_add_a_sink_to_a_trained_model(tmp_path):
    from vqa.arguments import TrainingArguments
    from vqa.init_from import check_init_from

    args = TrainingArguments(output="out", init_from=str(tmp_path), attention_sink=True)
    with pytest.raises(ValueError, match="--attention-sink would change: drop it"):
        check_init_from(args)
