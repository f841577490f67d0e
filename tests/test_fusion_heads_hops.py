"""``vqa train --heads`` and ``--hops``: a new model's fusion with several heads, or several
hops (``vqa.hops``), each selecting its own k."""

from __future__ import annotations

import json

import pytest
import torch

from vqa.configuration import HybridVQAConfig
from vqa.hops import HopQuery, stack_hops
from vqa.modeling import HybridVQAModel
from vqa.training import TrainingArguments


def test_a_run_with_two_heads_saves_them_and_each_head_selects_its_own_regions(tiny_run, tmp_path):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--heads", "2", "--epochs", "1", "--k", "4") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["fusion_heads"] == 2
    assert "2 heads" in (run / "README.md").read_text()

    model = HybridVQAModel.from_pretrained(run, use_safetensors=True).eval()
    size = model.config.image_size
    pixels = torch.rand(3, 3, size, size)
    input_ids = torch.randint(1, model.config.text_vocab_size, (3, 6))
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=input_ids)
    assert output.attention_weights.shape == (3, 2, model.config.num_regions)
    kept = output.attention_weights > 0  # (B, H, N): 4 regions per head
    assert kept.sum(-1).tolist() == [[4, 4]] * 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"heads": 0}, "heads must be >= 1, got 0"),
        ({"heads": 2, "init_from": "run"}, "--init-from keeps RUN's"),
        ({"hops": 0}, "hops must be >= 1, got 0"),
        ({"hops": 2, "init_from": "run"}, r"--hops shapes .* fusion_hops"),
    ],
)
def test_bad_heads_or_hops_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(output="out", **fields)


def test_heads_that_do_not_divide_the_fusion_width_are_named(tiny_run, tmp_path, capsys):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--heads", "3", "--epochs", "1") != 0
    message = "config field 'fusion_dim' (32) must be divisible by 'fusion_heads' (3)"
    assert message in capsys.readouterr().err
    assert not (run / "model.safetensors").exists()


def test_a_hop_query_reads_only_the_real_question_tokens():
    torch.manual_seed(0)
    hop = HopQuery(8)
    tokens, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    query, attended = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    before = hop(tokens, mask, query, attended)
    changed = tokens.clone()
    changed[0, 3:] = 100.0  # the first question's padding
    after = hop(changed, mask, query, attended)
    assert before.shape == (2, 1, 8)
    torch.testing.assert_close(after, before)
    # A convex combination of the real tokens: inside their per-channel range.
    real = tokens[0, :3]
    assert (before[0, 0] <= real.max(0).values + 1e-6).all()
    assert (before[0, 0] >= real.min(0).values - 1e-6).all()


@pytest.mark.parametrize(
    ("mode", "estimator"),
    [
        ("soft", "ste"),
        ("hard", "ste"),
        ("hybrid", "ste"),
        ("hybrid", "gumbel"),
        ("hybrid", "reinforce"),
    ],
)
def test_every_hop_selects_its_own_regions_and_learns(tiny_fields, mode, estimator):
    torch.manual_seed(0)
    config = HybridVQAConfig(
        **tiny_fields, fusion_mode=mode, fusion_estimator=estimator, fusion_hops=3, fusion_heads=2
    )
    model = HybridVQAModel(config)
    size, k = config.image_size, config.fusion_k
    output = model(
        pixel_values=torch.rand(2, 3, size, size),
        input_ids=torch.randint(1, 50, (4, 7)),
        labels=torch.tensor([0, 1, 2, 0]),
        image_index=torch.tensor([0, 0, 1, 1]),
    )
    assert output.attention_weights.shape == (4, 2 * 3, config.num_regions)  # heads x hops
    if mode == "soft":
        assert output.selected_indices is None
    else:
        assert output.selected_indices.shape == (4, 6, k)
        assert ((output.attention_weights > 0).sum(-1) <= k).all()
    output.loss.backward()
    for hop in model.hop_queries:
        assert hop.steer.weight.grad.abs().sum() > 0


def test_one_hop_is_the_fusion_as_it_was(tiny_fields):
    torch.manual_seed(0)
    model = HybridVQAModel(HybridVQAConfig(**tiny_fields)).eval()
    assert len(model.hop_queries) == 0
    regions = torch.randn(3, model.config.num_regions, model.config.fusion_dim)
    question = torch.randn(3, 5, model.config.fusion_dim)
    with torch.no_grad():
        attended = model.attend(question, torch.ones(3, 5), regions)
        direct = model.fusion(model.query_norm(question[:, :1]), regions)
    torch.testing.assert_close(attended.output, direct.output)
    torch.testing.assert_close(attended.weights, direct.weights)


def test_stacked_hops_join_as_heads_and_keep_one_vector_per_hop():
    from hybrid_attention import HybridAttention

    torch.manual_seed(0)
    fusion = HybridAttention(8, num_heads=2, mode="hybrid", k=3).eval()
    regions = torch.randn(2, 10, 8)
    hops = [fusion(torch.randn(2, 1, 8), regions) for _ in range(3)]
    joined = stack_hops(hops)
    assert joined.output.shape == (2, 3, 8)
    assert joined.weights.shape == (2, 6, 1, 10)
    assert joined.indices.shape == (2, 6, 1, 3)
    torch.testing.assert_close(joined.indices[:, 2:4], hops[1].indices)
    soft = HybridAttention(8, mode="soft")
    joined = stack_hops([soft(torch.randn(2, 1, 8), regions) for _ in range(2)])
    assert joined.indices is None and joined.counts is None


def test_a_run_with_two_hops_saves_them_and_reloads_to_the_same_answers(tiny_run, tmp_path):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--hops", "2", "--epochs", "1") == 0
    assert json.loads((run / "config.json").read_text())["fusion_hops"] == 2
    assert "2 hops (each with its own query)" in (run / "README.md").read_text()
    model = HybridVQAModel.from_pretrained(run, use_safetensors=True).eval()
    assert len(model.hop_queries) == 1
    size = model.config.image_size
    pixels = torch.rand(2, 3, size, size)
    input_ids = torch.randint(1, model.config.text_vocab_size, (2, 6))
    with torch.no_grad():
        first = model(pixel_values=pixels, input_ids=input_ids)
        model.save_pretrained(tmp_path / "copy")
        again = HybridVQAModel.from_pretrained(tmp_path / "copy", use_safetensors=True).eval()
        second = again(pixel_values=pixels, input_ids=input_ids)
    torch.testing.assert_close(first.logits, second.logits)
    torch.testing.assert_close(first.attention_weights, second.attention_weights)


def test_resuming_without_the_runs_hops_is_one_clear_error(tiny_run, tmp_path, capsys):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--hops", "2", "--epochs", "1") == 0
    assert run_train_tiny(data, run, "--epochs", "2", "--resume") != 0
    error = capsys.readouterr().err
    assert "was trained with fusion_hops = 2, but this command builds 1" in error
    assert run_train_tiny(data, run, "--hops", "2", "--epochs", "2", "--resume") == 0
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2


def test_resuming_without_the_runs_heads_is_refused_though_the_weights_would_load(
    tiny_run, tmp_path, capsys
):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--heads", "2", "--epochs", "1") == 0
    assert run_train_tiny(data, run, "--epochs", "2", "--resume") != 0
    assert "was trained with fusion_heads = 2, but this command builds 1" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["fusion_heads"] == 2


def test_a_checkpoint_whose_weights_do_not_fit_is_one_clear_error(tiny_run, tmp_path, capsys):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--hops", "2", "--epochs", "1") == 0
    for state in (run / "checkpoint").glob("step-*/trainer_state.json"):
        saved = json.loads(state.read_text())
        del saved["architecture"]  # as saved before the architecture was recorded
        state.write_text(json.dumps(saved))
    assert run_train_tiny(data, run, "--epochs", "2", "--resume") != 0
    error = capsys.readouterr().err
    assert "holds another model than this command builds" in error
    assert "hop_queries.0.steer.weight" in error


@pytest.mark.parametrize("rule", ["top_p", "budget"])
def test_hops_with_an_adaptive_k_of_their_own_width_join_and_answer(tiny_fields, rule):
    from hybrid_attention import TopP

    torch.manual_seed(0)
    config = HybridVQAConfig(
        **tiny_fields, fusion_hops=2, fusion_k_rule=rule, fusion_top_p=0.7, fusion_k_max=8
    )
    model = HybridVQAModel(config).eval()
    size = config.image_size
    fusion = model.fusion
    regions = torch.randn(4, config.num_regions, config.fusion_dim)
    # Two queries whose top-p sets differ in size: one peaked, one flat.
    peaked = torch.zeros(4, 1, config.fusion_dim)
    flat = torch.zeros(4, 1, config.fusion_dim)
    peaked[..., 0] = 50.0
    if rule == "top_p":
        assert isinstance(fusion.k, TopP)
        hops = [fusion(peaked, regions), fusion(flat, regions)]
        assert hops[0].indices.shape[-1] != hops[1].indices.shape[-1]
        joined = stack_hops(hops)
        assert joined.indices.shape[-1] == max(hop.indices.shape[-1] for hop in hops)
        torch.testing.assert_close(joined.counts, torch.cat([hop.counts for hop in hops], 1))
    with torch.no_grad():
        for seed in range(5):
            torch.manual_seed(seed)
            output = model(
                pixel_values=torch.rand(2, 3, size, size),
                input_ids=torch.randint(1, 50, (6, 7)),
                image_index=torch.tensor([0, 0, 0, 1, 1, 1]),
            )
            assert output.attention_weights.shape == (6, 2, config.num_regions)
            kept = (output.attention_weights > 0).sum(-1)  # (B, hops)
            assert (kept <= output.kept_regions).all()


def test_predict_lists_every_region_that_some_hop_selected(tiny_run, tmp_path):
    from conftest import run_train_tiny
    from PIL import Image

    from vqa.inference import load_model, predict

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--hops", "2", "--k", "2", "--epochs", "1") == 0
    model, processor = load_model(run, "cpu")
    image = Image.open(next((data / "images" / "test").iterdir())).convert("RGB")
    unions = []
    for question in ("what colour is the circle?", "is the red object left of the square?"):
        prediction = predict(model, processor, image, question)
        assert prediction.kept == [2, 2]  # per hop
        with torch.no_grad():
            output = model(**processor([image], [question]))
        union = set(output.selected_indices[0].flatten().tolist())
        unions.append(len(union))
        assert {region["region"] for region in prediction.regions} == union
        assert len(prediction.regions) == len(union)
        soft = predict(model, processor, image, question, mode="soft")
        assert len(soft.regions) == 2  # soft mode lists the top k
    assert max(unions) > 2  # the hops did not all pick the same two regions
