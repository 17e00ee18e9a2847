"""The whole Space journey in Debian's chromium, driven by playwright (sync API).

    python -m pytest -q -m browser tests/test_browser.py     # or: nox -s browser

Pick two users, move a slider, generate, read the streamed text and the card's data table, export,
then open a share link. Screenshots go to the test's tmp folder and /tmp/space-screenshot.png.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_space import build_space_zoo, serve

from zoo.registry import load_registry

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_model_dir):
    zoo = build_space_zoo(tmp_path_factory.mktemp("browser-zoo"), tiny_model_dir)
    demo, url = serve(zoo)
    try:
        yield zoo, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    sync_api.expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own 5 s default
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def pick(page, handle: str) -> None:
    """Type the handle into the multiselect (it filters the options) and take the first match."""
    box = page.locator("#users input")
    box.click()
    box.press_sequentially(f"@{handle}")
    option = page.get_by_role("option", name=re.compile(f"@{handle}")).first
    option.wait_for()
    option.click()  # Enter would add the typed text itself: the dropdown accepts custom values
    page.keyboard.press("Escape")


def test_space_journey(space, browser, tmp_path):
    from playwright.sync_api import expect

    zoo, url = space
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)

    # The zoo: escaped names, no injected markup.
    expect(page.get_by_text("<script>alert('carol')</script>").first).to_be_visible()
    assert page.locator(".zoo-card script").count() == 0

    pick(page, "alice")
    pick(page, "bob")
    expect(page.get_by_text("weight of Bob <b>Builder</b> (@bob)")).to_be_visible()
    share = page.locator("#share textarea")
    expect(share).to_have_value(re.compile(r"\?blend=alice~1~bob~1~live~d0\.5~s0$"))

    # Move alice's slider (a click on its track at ~1/4 sets about -1) and watch the link follow.
    track = page.locator("#weight-0 input[type=range]")
    box = track.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    expect(share).not_to_have_value(re.compile(r"alice~1~"))
    expect(share).to_have_value(re.compile(r"alice~-[0-9.]+~bob~1~live"))

    # The card's data table, one column per user.
    data = page.locator("#data")
    expect(data).to_contain_text("Tweets kept")
    expect(data).to_contain_text("Bob <b>Builder</b>")
    expect(data).to_contain_text("100")

    # Generate: the samples stream into the textbox.
    page.click("#generate")
    samples = page.locator("#samples textarea")
    expect(samples).to_have_value(re.compile(r"^My dream is.+", re.S))
    expect(page.locator("#generate")).to_be_enabled()
    assert samples.input_value().count("My dream is") == 2
    page.screenshot(path=str(tmp_path / "space.png"), full_page=True)
    shutil.copy(tmp_path / "space.png", "/tmp/space-screenshot.png")

    # Export the cyborg: a zip to download, and the zoo lists it.
    page.get_by_role("tab", name="Export cyborg").click()
    page.click("#export")
    expect(page.get_by_text("Exported @alice-bob")).to_be_visible()
    expect(page.locator("#export-file a")).to_have_attribute("href", re.compile(r"alice-bob\.zip$"))
    assert load_registry(zoo).get("alice-bob").kind == "cyborg"
    expect(page.locator(".zoo-card", has_text="@alice-bob")).to_be_visible()
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
    shutil.copy(tmp_path / "export.png", "/tmp/space-screenshot-export.png")

    # A share link restores users, weights, method and seed on load.
    blend_id = "alice~0.5~carol~-1~product~d0.5~s3"
    shared = browser.new_page(viewport={"width": 1400, "height": 1000})
    shared.set_default_timeout(TIMEOUT_MS)
    shared.goto(f"{url}?blend={blend_id}")
    expect(shared.locator("#share textarea")).to_have_value(re.compile(re.escape(blend_id) + "$"))
    expect(shared.get_by_text("weight of <script>alert('carol')</script> (@carol)")).to_be_visible()
    assert shared.locator("#weight-1 input[type=number]").input_value() == "-1"
