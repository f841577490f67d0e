"""HybridVQAModel, its config and processor: shapes, losses, save/load, inference-time changes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModel

from vqa.configuration import HybridVQAConfig
from vqa.modeling import HybridVQAModel, answer_loss
from vqa.processing import HybridVQAProcessor, to_rgb, train_tokenizer

QUESTIONS = [
    "what colour is the large circle?",
    "how many red objects are there?",
    "is there a small blue square?",
    "what shape is the green object?",
]
ANSWERS = ["red", "2", "yes", "circle"]
TINY = dict(
    image_size=32,
    patch_size=8,
    vision_hidden_size=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden_size=32,
    text_layers=1,
    text_heads=2,
    fusion_dim=32,
    fusion_k=4,
    reasoner_layers=1,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def processor() -> HybridVQAProcessor:
    return HybridVQAProcessor.train(QUESTIONS * 3, ANSWERS * 3, image_size=32)


def make_model(processor: HybridVQAProcessor, **overrides) -> HybridVQAModel:
    torch.manual_seed(0)
    fields = {**TINY, **overrides}
    config = HybridVQAConfig(
        **fields,
        text_vocab_size=len(processor.tokenizer),
        id2label=dict(enumerate(processor.answers.answers)),
    )
    return HybridVQAModel(config).eval()


def random_images(count: int, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)
    ]


def batch(processor: HybridVQAProcessor, count: int = 4):
    return processor(random_images(count), QUESTIONS[:count])


@pytest.mark.parametrize("mode", ["soft", "hard", "hybrid"])
@pytest.mark.parametrize("backend", ["timm", "transformers"])
def test_forward_shapes_per_mode_and_backend(processor, mode, backend):
    stem = "patch" if backend == "transformers" else "conv"
    model = make_model(processor, fusion_mode=mode, vision_backend=backend, vision_stem=stem)
    output = model(**batch(processor), labels=processor.labels(ANSWERS))
    assert output.logits.shape == (4, len(processor.answers))
    assert output.attention_weights.shape == (4, 1, 16)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    if mode == "soft":
        assert output.selected_indices is None
    else:
        assert output.selected_indices.shape == (4, 1, 4)
        assert int((output.attention_weights > 0).sum(-1).max()) == 4


def test_save_and_load_give_identical_logits(processor, tmp_path):
    model = make_model(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    reprocessor = HybridVQAProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, HybridVQAModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), HybridVQAConfig)
    with torch.no_grad():
        expected = model(**batch(processor)).logits
        actual = reloaded(**batch(reprocessor)).logits
    assert torch.equal(expected, actual)


def test_shared_images_are_encoded_once_and_match_repeated_images(processor):
    model = make_model(processor)
    images = random_images(2)
    separate = processor([images[0], images[0], images[1], images[1]], QUESTIONS)
    shared = processor.questions(QUESTIONS)
    shared["pixel_values"] = processor.images(images)
    shared["image_index"] = torch.tensor([0, 0, 1, 1])
    calls = []
    hook = model.vision.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        expected = model(**separate).logits
        actual = model(**shared).logits
    hook.remove()
    assert calls == [4, 2]
    torch.testing.assert_close(actual, expected)


def test_set_fusion_changes_mode_and_k_on_the_same_weights(processor):
    model = make_model(processor)
    inputs = batch(processor)
    with torch.no_grad():
        hybrid = model(**inputs)
        model.set_fusion(mode="soft")
        soft = model(**inputs)
        model.set_fusion(mode="hard", k=2)
        hard = model(**inputs)
    assert hybrid.selected_indices.shape[-1] == 4 and soft.selected_indices is None
    assert hard.selected_indices.shape[-1] == 2
    assert model.config.fusion_mode == "hard" and model.config.fusion_k == 2
    for k in (0, 17):
        with pytest.raises(ValueError, match=rf"k={k} is outside 1..16 \(the number of regions\)"):
            model.set_fusion(k=k)


def test_fusion_scores_differ_between_regions_from_the_first_step(processor):
    """Glorot fusion projections on layer-normalised inputs: scores of order 1, not ~0.

    With BERT's std-0.02 init on both projections the scores' spread was about 1e-4, a flat
    saddle the selection took tens of thousands of questions to leave.
    """
    model = make_model(processor)
    with torch.no_grad():
        output = model(**batch(processor))
    assert output.attention_scores.std(-1).mean() > 0.1
    assert model.fusion.q_proj.weight.std() > 0.1  # Glorot for 32 -> 32, not 0.02


def test_region_positions_start_as_a_linear_read_out_of_row_and_column(processor):
    """A sine-cosine embedding: distinct for every region, and a linear map recovers the
    row and the column of each region exactly (what "left of" and "above" need)."""
    model = make_model(processor)
    positions = model.region_position.detach()[0]  # (N, D)
    assert positions.shape == (16, 32)
    assert torch.cdist(positions, positions).add(torch.eye(16)).min() > 0.1
    rows, columns = torch.arange(16) // 4, torch.arange(16) % 4
    design = torch.cat([positions, torch.ones(16, 1)], dim=1)
    coordinates = torch.stack([rows, columns], dim=1).float()
    fit = torch.linalg.lstsq(design, coordinates).solution
    torch.testing.assert_close(design @ fit, coordinates, atol=1e-3, rtol=0)


def test_reinforce_adds_a_policy_term_and_trains_the_scorer(processor):
    model = make_model(processor, fusion_mode="hard", fusion_estimator="reinforce").train()
    output = model(**batch(processor), labels=processor.labels(ANSWERS))
    assert output.log_prob is not None
    assert not torch.isclose(output.loss, output.answer_loss.mean())
    output.loss.backward()
    assert model.fusion.k_proj.weight.grad.abs().sum() > 0


def test_label_smoothing_changes_the_trained_loss_but_not_the_reward_or_the_log(processor):
    labels = processor.labels(ANSWERS)
    plain = make_model(processor, fusion_mode="hard", fusion_estimator="reinforce").train()
    smoothed = make_model(
        processor, fusion_mode="hard", fusion_estimator="reinforce", label_smoothing=0.2
    ).train()
    with torch.no_grad():  # confident answers, where smoothing changes the loss visibly
        for model in (plain, smoothed):
            model.head[-1].weight.mul_(100)
    torch.manual_seed(1)
    a = plain(**batch(processor), labels=labels)
    torch.manual_seed(1)
    b = smoothed(**batch(processor), labels=labels)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(b.answer_loss, answer_loss(b.logits, labels))  # unsmoothed
    # same reward and policy term: the losses differ by the smoothed answer term alone
    difference = answer_loss(b.logits, labels, 0.2).mean() - answer_loss(b.logits, labels).mean()
    torch.testing.assert_close(b.loss - a.loss, difference)
    assert difference.abs() > 1e-3


def test_multi_answer_rows_use_soft_score_bce(processor):
    labels = processor.labels([["red", "red", "red", "blue"], ["2"] * 10])
    assert labels.dtype == torch.float and labels.shape == (2, len(processor.answers))
    assert labels[0, processor.answers.encode("red")] == 1.0
    logits = torch.zeros(2, len(processor.answers))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(answer_loss(logits, labels), expected)


def test_out_of_vocabulary_answers_are_ignored_by_the_loss(processor):
    labels = processor.labels(["red", "never seen"])
    assert labels.tolist()[1] == -100
    loss = answer_loss(torch.zeros(2, len(processor.answers)), labels)
    assert loss[1] == 0 and loss[0] > 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fusion_k", 17, "'fusion_k' \\(17\\) is greater than the number of regions \\(16"),
        ("fusion_mode", "sharp", "'fusion_mode' must be one of"),
        ("fusion_estimator", "magic", "'fusion_estimator' must be one of"),
        ("vision_hidden_size", 0, "'vision_hidden_size' must be a positive integer"),
        ("image_size", 36, "'image_size' \\(36\\) must be a multiple of 'patch_size'"),
        ("dropout", 1.5, "'dropout' must be in"),
        ("fusion_dim", 30, "'fusion_dim' \\(30\\) must be divisible by 4"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        HybridVQAConfig(**{**TINY, field: value})


def test_processor_converts_every_image_mode_to_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (8, 8), 128)).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("P", (8, 8))).mode == "RGB"
    sixteen = Image.new("I;16", (8, 8), 65535)
    assert to_rgb(sixteen).getpixel((0, 0)) == (255, 255, 255)


def test_processor_truncates_long_questions(processor):
    long_question = "what colour is the " + "very " * 40 + "large circle?"
    assert processor.is_truncated(long_question)
    assert processor.questions([long_question])["input_ids"].shape[1] == 32


def test_processor_directory_without_files_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a processor directory"):
        HybridVQAProcessor.from_pretrained(tmp_path)


TOKENIZER_VOCAB = (
    "from vqa.processing import train_tokenizer; "
    "print(sorted(train_tokenizer(['What colour is the small red circle?', "
    "'How many large squares are there?', 'is there a cyan triangle?'] * 5).get_vocab().items()))"
)


def test_tokenizer_vocabulary_is_the_same_in_every_process():
    # Each process hashes differently (PYTHONHASHSEED, Rust's HashMap seeds).
    runs = [
        subprocess.run(
            [sys.executable, "-c", TOKENIZER_VOCAB],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    ]
    assert runs[0] == runs[1]
    assert "'circle'" in runs[0] and "'##q'" in runs[0]


def test_tokenizer_spells_unseen_words_with_characters():
    tokenizer = train_tokenizer(["what colour is the circle?"])
    assert tokenizer.tokenize("the zebra?") == ["the", "z", "##e", "##b", "##r", "##a", "?"]
