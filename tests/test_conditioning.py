"""FiLM: question-conditioned ViT blocks (vqa.conditioning) in the model, training and reload."""

from __future__ import annotations

import json

import pytest
import torch
from test_modeling import ANSWERS, QUESTIONS, batch, make_model, processor, random_images
from transformers import AutoModel

from vqa.conditioning import FiLMGenerator, modulate
from vqa.configuration import HybridVQAConfig

__all__ = ["processor"]  # the module fixture, shared with test_modeling


def nudge_film(model) -> None:
    """Give the (zero-initialised) FiLM projection weights, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        model.film.proj.weight.normal_(0, 0.3)


def test_film_starts_as_the_unconditioned_model(processor):
    film = make_model(processor, vision_conditioning="film")
    plain = make_model(processor)
    state = {name: value for name, value in film.state_dict().items() if "film" not in name}
    plain.load_state_dict(state)
    inputs = batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(film(**inputs).logits, plain(**inputs).logits)


def test_modulate_scales_and_shifts_each_channel():
    tokens = torch.ones(2, 3, 4)
    film = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 5]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    out = modulate(tokens, film)  # (2, 3, 4)
    assert out[0, :, 0].eq(2).all() and out[0, :, 3].eq(6).all() and out[1].eq(1).all()


def test_generator_gives_one_scale_and_shift_per_block_and_channel():
    generator = FiLMGenerator(question_dim=8, channels=5, layers=3)
    generator.reset_parameters()
    film = generator(torch.randn(4, 8))
    assert film.shape == (4, 3, 2, 5) and film.eq(0).all()


def test_questions_about_one_image_get_their_own_vision_tokens(processor):
    """With FiLM, the stem runs once per image and the blocks once per question."""
    model = make_model(processor, vision_conditioning="film")
    nudge_film(model)
    inputs = processor.questions(QUESTIONS)
    inputs["pixel_values"] = processor.images(random_images(1))
    image_index = torch.zeros(4, dtype=torch.long)
    stem_rows = []
    hook = model.vision.vit.patch_embed.register_forward_hook(
        lambda module, args, out: stem_rows.append(args[0].shape[0])
    )
    with torch.no_grad():
        question = model.encode_questions(inputs["input_ids"], inputs["attention_mask"])
        vision = model.encode_images(inputs["pixel_values"], question, image_index)
    hook.remove()
    features = vision.features  # (4, 16, 32)
    assert stem_rows == [1] and features.shape == (4, 16, 32)
    assert not torch.allclose(features[0], features[1])


def test_shared_images_match_repeated_images_with_film(processor):
    model = make_model(processor, vision_conditioning="film")
    nudge_film(model)
    images = random_images(2)
    separate = processor([images[0], images[0], images[1], images[1]], QUESTIONS)
    shared = processor.questions(QUESTIONS)
    shared["pixel_values"] = processor.images(images)
    shared["image_index"] = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(**shared).logits, model(**separate).logits)


def test_the_answer_loss_trains_the_film_generator(processor):
    model = make_model(processor, vision_conditioning="film").train()
    model(**batch(processor), labels=processor.labels(ANSWERS)).loss.backward()
    assert model.film.proj.weight.grad.abs().sum() > 0


def test_film_model_saves_and_reloads_identically(processor, tmp_path):
    model = make_model(processor, vision_conditioning="film")
    nudge_film(model)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vision_conditioning"] == "film"
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch(processor)).logits, reloaded(**batch(processor)).logits)


def test_film_needs_a_vision_encoder_that_runs_block_by_block():
    with pytest.raises(ValueError, match="'vision_conditioning' needs a vision encoder that runs"):
        HybridVQAConfig(
            vision_conditioning="film",
            vision_backend="transformers",
            vision_stem="patch",
            vision_config={"model_type": "beit"},
        )
    with pytest.raises(ValueError, match="'vision_conditioning' must be one of"):
        HybridVQAConfig(vision_conditioning="everywhere")


def test_train_takes_vision_conditioning(tmp_path, train_tiny, tiny_run):
    _, data = tiny_run
    assert train_tiny(data, tmp_path / "run", "--vision-conditioning", "film") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["vision_conditioning"] == "film"
