"""The Gradio app: its handlers, and the served app through gradio_client."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vqa.app import (
    AppModel,
    answer,
    attention_overlay,
    build_app,
    compare,
    find_examples,
    launch,
    model_info,
    regions_table,
)
from vqa.cache import training_data_dir
from vqa.cli import build_parser, main

QUESTION = "what colour is the large circle?"
MAX_FILE_SIZE = "200kb"

# gradio's queue statistics use pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run[0]


@pytest.fixture(scope="module")
def dataset(tiny_run) -> Path:
    return tiny_run[1]


@pytest.fixture(scope="module")
def app_model(run) -> AppModel:
    return AppModel(run)


@pytest.fixture(scope="module")
def selecting_model(tiny_selecting_run) -> AppModel:
    """A model whose vision encoder keeps 8 of the 16 patches."""
    return AppModel(tiny_selecting_run)


@pytest.fixture(scope="module")
def scene(dataset) -> Path:
    return dataset / "images" / "test" / "000000.png"


@pytest.fixture(scope="module")
def client(run, dataset, free_port):
    app = build_app(run, examples_dir=dataset)
    url = launch(app, port=free_port(), max_file_size=MAX_FILE_SIZE, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    yield Client(url, verbose=False)
    app.close()


def ask(client: Client, image, question: str = QUESTION, mode: str = "hybrid", k: int = 4):
    return client.predict(image, question, mode, k, api_name="/answer")


def check_answered(result, k: int = 4) -> None:
    label, picture, table, details = result
    assert len(label["confidences"]) == 5
    assert label["label"] == label["confidences"][0]["label"]
    with Image.open(picture) as image:
        assert min(image.size) >= 384
    assert [row[0] for row in table["data"]] == list(range(1, k + 1))
    assert "ms** in the model" in details


def saved(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


# The handlers, called directly.


def test_overlay_keeps_selected_regions_bright_and_dims_the_rest(app_model, scene):
    with Image.open(scene) as image:
        image.load()
    prediction = app_model.predict(image, QUESTION, "hard", 2)
    picture = np.asarray(attention_overlay(image, prediction), dtype=float)
    assert picture.shape == (384, 384, 3)
    scale = 384 / image.width
    selected = {region["region"] for region in prediction.regions}
    rows, cols = prediction.grid
    brightness = picture.reshape(rows, 384 // rows, cols, 384 // cols, 3).mean(axis=(1, 3, 4))
    ignored = [brightness.flat[i] for i in range(rows * cols) if i not in selected]
    x0, y0, x1, y1 = (round(v * scale) for v in prediction.regions[0]["box"])
    inside = picture[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8].mean()  # away from the outline
    assert inside > 1.5 * max(ignored)


def cell_changes(before: Image.Image, after: Image.Image, grid: tuple[int, int]) -> np.ndarray:
    """(rows * cols,) bool: whether any pixel of each region differs between two pictures."""
    rows, cols = grid
    changed = np.any(np.asarray(before) != np.asarray(after), axis=-1)  # (H, W)
    height, width = changed.shape
    return changed.reshape(rows, height // rows, cols, width // cols).any(axis=(1, 3)).flatten()


def test_overlay_hatches_exactly_the_patches_the_encoder_dropped(selecting_model, scene):
    with Image.open(scene) as image:
        image.load()
    prediction = selecting_model.predict(image, QUESTION, "hybrid", 4)
    assert len(prediction.encoder_kept) == 8
    hatched = attention_overlay(image, prediction)
    plain = attention_overlay(image, replace(prediction, encoder_kept=None))
    dropped = [region not in prediction.encoder_kept for region in range(16)]
    assert cell_changes(plain, hatched, prediction.grid).tolist() == dropped


def test_answer_says_how_many_patches_the_encoder_kept(selecting_model, app_model, scene):
    with Image.open(scene) as image:
        *_, details = answer(selecting_model, image, QUESTION, "hard", 4)
        *_, soft = answer(selecting_model, image, QUESTION, "soft", 4)
        prediction = app_model.predict(image, QUESTION, "hybrid", 4)
        *_, without = answer(app_model, image, QUESTION, "hybrid", 4)
    assert "encoder kept 8 of 16 patches before its first block (hatched: dropped)" in details
    assert prediction.encoder_kept is None
    assert "encoder kept" not in soft and "encoder kept" not in without


def test_compare_lists_the_patches_the_encoder_kept_per_mode(selecting_model, app_model, scene):
    with Image.open(scene) as image:
        *_, summary = compare(selecting_model, image, QUESTION, 4)
        *_, without = compare(app_model, image, QUESTION, 4)
    header, _, *rows = summary.splitlines()
    assert header.endswith("| patches the encoder kept |")
    assert [row.split("|")[-2].strip() for row in rows] == ["all 16", "8 of 16", "8 of 16"]
    assert "encoder" not in without


def test_the_app_moves_or_resizes_the_encoder_selection(tiny_selecting_run, app_model, scene):
    moved = AppModel(tiny_selecting_run, select_after=1, encoder_k=12)
    with Image.open(scene) as image:
        prediction = moved.predict(image, QUESTION, "hybrid", 4)
    assert (len(prediction.encoder_kept), prediction.encoder_select_after) == (12, 1)
    assert "keeps 12 of 16 patches after block 1 (hard and hybrid modes)" in model_info(moved)
    assert "encoder selection" not in model_info(app_model)


def test_regions_table_has_rank_box_weight_and_what_the_region_sees(app_model, scene):
    with Image.open(scene) as image:
        prediction = app_model.predict(image, QUESTION, "hard", 3)
    table = regions_table(prediction)
    assert [row[0] for row in table] == [1, 2, 3]
    assert all(row[2] == pytest.approx(1 / 3, abs=1e-4) for row in table)
    assert [float(v) for v in table[0][1].split(", ")] == prediction.regions[0]["box"]
    # the tiny preset trains the region attribute head on the scenes
    assert all(row[3] == "no object" or "=" in row[3] for row in table)


def test_concurrent_requests_each_get_their_own_mode_and_k(app_model, scene):
    with Image.open(scene) as image:
        image.load()
    wrong: list[str] = []

    def worker(mode: str, k: int) -> None:
        for _ in range(10):
            prediction = app_model.predict(image, QUESTION, mode, k)
            if (prediction.mode, prediction.k, len(prediction.regions)) != (mode, k, k):
                wrong.append(f"asked {mode} k={k}, got {prediction.mode} k={prediction.k}")

    threads = [
        threading.Thread(target=worker, args=settings)
        for settings in [("hard", 2), ("hybrid", 3), ("soft", 5), ("hard", 1)]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
    assert (app_model.mode, app_model.k) == ("hybrid", 4)  # the trained settings are kept


def test_long_question_is_cut_with_a_warning(app_model, scene):
    with Image.open(scene) as image, pytest.warns(UserWarning, match="it was cut"):
        *_, details = answer(app_model, image, "is there a circle " * 40, "soft", 4)
    assert "it was cut" in details


def test_model_info_names_checkpoint_fusion_encoders_and_accuracy(app_model):
    info = model_info(app_model)
    for expected in (str(app_model.directory), "hybrid, k = 4 of 16", "estimator ste", "timm"):
        assert expected in info
    assert "best" in info and "after the last epoch (1 epochs)" in info


def test_examples_come_from_the_training_data_by_default(run, dataset):
    assert training_data_dir(run) == dataset


def test_examples_pair_each_image_with_questions_of_different_types(dataset):
    examples = find_examples(dataset, images=3, per_image=2)
    assert 3 <= len(examples) <= 6
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image, _ in examples)
    assert all(question.endswith("?") for _, question in examples)


# The served app, through gradio_client.


def test_good_question_gets_top5_answers_picture_regions_and_time(client, scene):
    check_answered(ask(client, handle_file(scene)))


def test_hard_mode_weights_the_k_regions_equally(client, scene):
    *_, table, details = ask(client, handle_file(scene), mode="hard", k=2)
    assert [row[2] for row in table["data"]] == [0.5, 0.5]
    assert "mode **hard**, k = 2" in details


def test_compare_answers_in_every_mode_side_by_side(client, scene):
    *pairs, summary = client.predict(handle_file(scene), QUESTION, 3, api_name="/compare")
    assert len(pairs) == 6
    for label, picture in zip(pairs[::2], pairs[1::2], strict=True):
        assert len(label["confidences"]) == 3 and Path(picture).is_file()
    assert [line.split("|")[1].strip() for line in summary.splitlines()[2:]] == [
        "soft",
        "hard",
        "hybrid",
    ]


@pytest.mark.parametrize(
    ("convert", "suffix"),
    [
        (lambda image: image.convert("L"), "png"),
        (lambda image: image.convert("RGBA"), "png"),
        (lambda image: image.convert("P", palette=Image.Palette.ADAPTIVE), "gif"),
        (lambda image: Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257), "png"),
        (lambda image: image.convert("CMYK"), "jpg"),
    ],
    ids=["greyscale", "rgba", "palette", "16-bit", "cmyk-jpeg"],
)
def test_any_image_mode_is_answered(client, scene, tmp_path, convert, suffix):
    with Image.open(scene) as image:
        converted = convert(image.convert("RGB"))
    check_answered(ask(client, handle_file(saved(tmp_path / f"scene.{suffix}", converted))))


def test_large_image_is_scaled_down_and_answered(client, tmp_path):
    big = saved(tmp_path / "big.png", Image.new("RGB", (3000, 2000), (200, 200, 200)))
    result = ask(client, handle_file(big))
    check_answered(result)
    assert "The image (3000×2000) was scaled down to 1024×683." in result[3]


def test_long_question_is_answered_and_says_it_was_cut(client, scene):
    result = ask(client, handle_file(scene), question="what colour is it " * 300)
    check_answered(result)
    assert "longer than the model reads (32 tokens): it was cut" in result[3]


BAD_INPUTS = {
    "no image": ([None, QUESTION, "hybrid", 4], "Add an image first"),
    "empty question": (["scene", "", "hybrid", 4], "Type a question"),
    "blank question": (["scene", " \n\t ", "hybrid", 4], "Type a question"),
    "not an image": (["notes.png", QUESTION, "hybrid", 4], "notes.png is not an image that can"),
    "too many pixels": (["bomb.png", QUESTION, "hybrid", 4], "8000×6000 pixels, more than the 40"),
    "k too large": (["scene", QUESTION, "hard", 17], "this model has 16 regions"),
    "k zero": (["scene", QUESTION, "hard", 0], "k must be a whole number from 1 to 16"),
    "k not a number": (["scene", QUESTION, "hard", "four"], "k='four' is not possible"),
    "unknown mode": (["scene", QUESTION, "sharp", 4], "Unknown mode 'sharp'"),
}


@pytest.fixture(scope="module")
def bad_files(scene, tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bad")
    (directory / "notes.png").write_text("not an image")
    return {
        "scene": scene,
        "notes.png": directory / "notes.png",
        "bomb.png": saved(directory / "bomb.png", Image.new("1", (8000, 6000))),
    }


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_message_and_the_app_goes_on(client, scene, bad_files, case):
    (image, *rest), message = BAD_INPUTS[case]
    image = handle_file(bad_files[image]) if image else None
    with pytest.raises(AppError, match=message):
        client.predict(image, *rest, api_name="/answer")
    check_answered(ask(client, handle_file(scene)))


def test_upload_over_the_size_limit_is_refused_by_the_server(client, scene, tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(np.random.default_rng(0).bytes(300_000))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 204800 bytes"):
        ask(client, handle_file(huge))  # gradio_client checks before sending
    with huge.open("rb") as file:
        response = httpx.post(f"{client.src}gradio_api/upload", files={"files": file})
    assert response.status_code == 413, response.text
    check_answered(ask(client, handle_file(scene)))


def test_files_that_were_not_uploaded_are_not_read(client, scene):
    request = {"data": [{"path": str(scene), "meta": {"_type": "gradio.FileData"}}, QUESTION]}
    request["data"] += ["hybrid", 4]
    event = httpx.post(f"{client.src}gradio_api/call/answer", json=request).json()["event_id"]
    events = httpx.get(f"{client.src}gradio_api/call/answer/{event}").text
    assert events.startswith("event: error")


def test_served_model_with_an_encoder_selection_shows_what_it_kept(
    tiny_selecting_run, dataset, free_port, scene
):
    app = build_app(tiny_selecting_run, examples_dir=dataset)
    url = launch(app, port=free_port(), max_file_size=MAX_FILE_SIZE, quiet=True)
    try:
        result = ask(Client(url, verbose=False), handle_file(scene))
    finally:
        app.close()
    check_answered(result)
    assert "encoder kept 8 of 16 patches before its first block" in result[3]


# The command line.


def test_serve_binds_to_loopback_on_7860_by_default():
    args = build_parser().parse_args(["serve", "--model", "runs/x"])
    assert (args.host, args.port, args.share, args.examples) == ("127.0.0.1", 7860, False, None)


def test_serve_takes_the_encoder_selection_of_a_model_trained_with_one(run, capsys):
    command = ["serve", "--model", "runs/x", "--select-after", "1", "--encoder-k", "0.5"]
    args = build_parser().parse_args(command)
    assert (args.select_after, args.encoder_k) == (1, 0.5)
    assert main(["serve", "--model", str(run), "--encoder-k", "8"]) == 2
    assert "has no token selection in its vision encoder" in capsys.readouterr().err


def test_serve_without_a_model_is_one_line_error(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vqa serve: error: {tmp_path} is not a model directory (no config.json)"
    ]


def test_k_above_what_the_encoder_keeps_is_a_clear_message():
    import gradio as gr

    from vqa.app.inputs import check_k

    assert check_k(8, 16, kept=8) == 8
    with pytest.raises(gr.Error, match="the vision encoder keeps 8 patches"):
        check_k(12, 16, kept=8)
