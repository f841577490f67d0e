"""FiLM and the encoder's token selection on transformers vision encoders, family by family.

The encoders are tiny checkpoints written as on the hub (the helpers of test_pretrained), made
for 32 px and run at 48 px, so their position encodings are interpolated.
"""

from __future__ import annotations

import pytest
import torch
from test_pretrained import (
    IMAGE_SIZE,
    VISION,
    idle_weights,
    new_model,
    question_batch,
    tiny_transformers_vision,
)
from transformers import AutoModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from vqa.configuration import HybridVQAConfig
from vqa.encoders import pretrained_fields
from vqa.transformers_blocks import layout_of

PREFIX = {  # kind -> tokens before the patch tokens
    "vit_scratch": 1,  # randomly initialised ViTModel sized by the config
    "vit": 1,
    "clip_vision": 1,
    "clip": 1,  # a whole CLIP: its vision half
    "dinov2": 1,
    "dinov2_registers": 3,  # CLS + 2 registers
    "siglip_vision": 0,
}
KINDS = list(PREFIX)
REGIONS = (IMAGE_SIZE // VISION["patch_size"]) ** 2  # 36
SCRATCH = {
    "vision_backend": "transformers",
    "vision_stem": "patch",
    "vision_hidden_size": 32,
    "vision_layers": 2,
    "vision_heads": 2,
    "patch_size": 8,
}


def tiny_vision(kind: str) -> torch.nn.Module:
    """The tiny transformers vision model of ``kind`` (not ``vit_scratch``)."""
    if kind == "dinov2_registers":
        torch.manual_seed(0)
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**VISION, num_register_tokens=2))
    return tiny_transformers_vision(kind)


@pytest.fixture(scope="module")
def encoder_fields(tmp_path_factory) -> dict[str, dict]:
    """Config fields of the vision encoder of each kind, the checkpoints written once."""
    fields = {"vit_scratch": SCRATCH}
    for kind in KINDS[1:]:
        directory = tmp_path_factory.mktemp(kind)
        tiny_vision(kind).save_pretrained(directory)
        fields[kind] = pretrained_fields(vision=str(directory))
    return fields


def questions_about_one_image() -> dict[str, torch.Tensor]:
    """Two questions about one image (image_index [0, 0]), without labels."""
    inputs = question_batch()
    return {
        "pixel_values": inputs["pixel_values"][:1],
        "input_ids": inputs["input_ids"],
        "image_index": torch.tensor([0, 0]),
    }


def twin_without(model, part: str, fields: dict):
    """A model of ``fields`` with ``model``'s weights, but for the ``part`` it lacks."""
    plain = new_model(**fields).eval()
    plain.load_state_dict({name: v for name, v in model.state_dict().items() if part not in name})
    return plain


def layer_inputs(model) -> list[tuple[int, int]]:
    """Record (batch, tokens) of the input of every encoder layer during the next passes."""
    lengths: list[tuple[int, int]] = []
    for block in model.vision.blocks:
        block.layer.register_forward_hook(
            lambda module, args, out: lengths.append(tuple(args[0].shape[:2]))
        )
    return lengths


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_run_one_by_one_give_the_forward_pass(kind, encoder_fields):
    vision = new_model(**encoder_fields[kind]).vision.eval()
    pixels = question_batch()["pixel_values"]
    with torch.no_grad():
        tokens = vision.embed(pixels)  # (2, P + 36, 32)
        assert tokens.shape[1] - REGIONS == vision.num_prefix_tokens == PREFIX[kind]
        for block in vision.blocks:
            tokens = block(tokens)
        torch.testing.assert_close(vision.finish(tokens), vision(pixels))


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_every_region_gives_the_unselected_answers(kind, encoder_fields):
    fields = encoder_fields[kind]
    model = new_model(**fields, encoder_select_after=1, encoder_k=REGIONS).eval()
    plain = twin_without(model, "encoder_selector", fields)
    inputs = questions_about_one_image()
    with torch.no_grad():
        question = model.encode_questions(inputs["input_ids"], torch.ones_like(inputs["input_ids"]))
        vision = model.encode_images(inputs["pixel_values"], question, inputs["image_index"])
        torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits)
    assert vision.regions.tolist() == [list(range(REGIONS))] * 2  # selected, kept in place


@pytest.mark.parametrize("kind", KINDS)
def test_layers_after_the_selection_run_on_the_kept_tokens_only(kind, encoder_fields):
    model = new_model(**encoder_fields[kind], encoder_select_after=1, encoder_k=8).eval()
    lengths = layer_inputs(model)
    with torch.no_grad():
        output = model(**questions_about_one_image())
    prefix = PREFIX[kind]
    assert lengths == [(1, prefix + REGIONS), (2, prefix + 8)]  # once per image, then per question
    assert output.attention_weights.shape == (2, 1, REGIONS)
    assert output.attention_weights.ne(0).sum(-1).le(8).all()


@pytest.mark.parametrize("kind", KINDS)
def test_film_conditions_every_layer_on_the_question(kind, encoder_fields):
    fields = encoder_fields[kind]
    model = new_model(**fields, vision_conditioning="film").eval()
    plain = twin_without(model, "film", fields)
    inputs = questions_about_one_image()
    lengths = layer_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits)  # FiLM at 0
        model.film.proj.weight.normal_(0, 0.3)
        question = model.encode_questions(inputs["input_ids"], torch.ones_like(inputs["input_ids"]))
        features = model.encode_images(inputs["pixel_values"], question, inputs["image_index"])
    assert lengths[-2:] == [(2, PREFIX[kind] + REGIONS)] * 2  # every layer per question
    assert features.features.shape == (2, REGIONS, 32)
    assert not torch.allclose(features.features[0], features.features[1])
    assert idle_weights(model.train()) == []  # FiLM and the encoder train, nothing idle
    assert model.film.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["clip", "dinov2_registers"])
def test_a_guided_model_reloads_identically(kind, encoder_fields, tmp_path):
    fields = {**encoder_fields[kind], "vision_conditioning": "film"}
    model = new_model(**fields, encoder_select_after=1, encoder_k=8).eval()
    with torch.no_grad():
        model.film.proj.weight.normal_(0, 0.3)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    inputs = questions_about_one_image()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)


def test_other_transformers_families_are_refused_naming_the_supported_ones():
    fields = {"vision_backend": "transformers", "vision_stem": "patch", "image_size": 32}
    fields |= {"fusion_k": 4, "vision_config": {"model_type": "beit"}}
    for guided in ({"encoder_select_after": 1}, {"vision_conditioning": "film"}):
        (name,) = guided
        with pytest.raises(ValueError, match=rf"'{name}' needs a vision encoder that runs block"):
            HybridVQAConfig(**fields, **guided)
    HybridVQAConfig(**fields)  # unguided, any transformers vision model will do
    with pytest.raises(ValueError, match=r"'beit' does not run block by block.*siglip"):
        layout_of("beit")
