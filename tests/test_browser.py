"""The app in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped only where Chromium or Playwright is missing and this is not CI (``CI=true`` fails
instead: ``.ci/run`` installs Chromium). The screenshot lands in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vqa.app import AppModel, build_app, launch

QUESTION = "what colour is the large circle?"

# gradio's queue statistics use pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(reason: str) -> None:
    """Fail in CI, where the browser must be there; skip on a developer's machine."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser test: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        missing("Chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as driver:
        yield driver


def test_page_answers_an_uploaded_example_image(
    chromium, playwright, tiny_run, free_port, tmp_path_factory
):
    run, dataset = tiny_run
    scene = dataset / "images" / "test" / "000000.png"
    with Image.open(scene) as image:
        expected = AppModel(run).predict(image, QUESTION, "hybrid", 4).answers[0][0]
    app = build_app(run, examples_dir=dataset)
    url = launch(app, port=free_port(), quiet=True)
    browser = playwright.chromium.launch_persistent_context(
        tmp_path_factory.mktemp("chromium-profile"),
        executable_path=chromium,
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 1000},
    )
    try:
        page = browser.new_page()
        page.goto(url)
        page.locator("#image input[type=file]").set_input_files(scene)
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#ask").click()
        page.locator("#details").get_by_text("in the model").wait_for(timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "browser-answer.png", full_page=True)
        # the label's headline is the top answer, the confidences list the top 5 below it
        top = page.locator("#answer [data-testid=label-output-value]").inner_text()
        assert top.strip() == expected
        assert page.locator("#picture img").is_visible()
    finally:
        browser.close()
        app.close()
