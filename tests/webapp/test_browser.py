"""The page in a real browser: Debian's headless Chromium driven by Playwright over the DevTools protocol.

A Korean instruction is typed, *Generate* pressed; the player must show the denoising progress, the
prompt the instruction became must show up in the prompt box and the player must hold an H.264 clip
the browser can play. Every host name but 127.0.0.1 is
unresolvable for the browser and each request is recorded, so the page is shown to need nothing
from the internet. The screenshot is kept as ``data/08_reporting/web_page.png``.
"""

from __future__ import annotations

import pytest

from machining_t2v.webapp.app import launch
from machining_t2v.webapp.studio import Studio
from tests.conftest import PROJECT_ROOT, find_chromium
from tests.webapp.conftest import KOREAN_SLOT, SLOT_PROMPT, copy_loras, free_port, settings_for

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: run `make browser` (apt-get install chromium)"
)
SCREENSHOT = PROJECT_ROOT / "data" / "08_reporting" / "web_page.png"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
# Records whether the player ever showed the denoising progress (every DOM change is seen, however short).
WATCH_PROGRESS = """() => { window.sawProgress = false;
    new MutationObserver(() => { const clip = document.querySelector('#clip');
        if (clip && clip.textContent.includes('denoising')) window.sawProgress = true; })
    .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
# Whether the player's clip has loaded far enough to play: decoded frames, a duration, no media error.
PLAYABLE = """() => { const v = document.querySelector('#clip video');
    return !!v && !!v.currentSrc && v.error === null && v.readyState >= 2 && v.duration > 0; }"""


@pytest.fixture
def page_url(tiny_dir, trained_loras, tmp_path):
    copy_loras(trained_loras, tmp_path / "06_models")
    app = launch(Studio(settings_for(tiny_dir, tmp_path)), port=free_port())
    try:
        yield app.local_url
    finally:
        app.close()


def test_a_korean_instruction_becomes_a_playable_clip_in_chromium(page_url):
    from playwright.sync_api import expect, sync_playwright

    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_url, wait_until="load")
            page.locator("#instruction textarea").fill(KOREAN_SLOT)
            page.locator("#steps input[type=number]").fill("8")
            page.locator("#steps input[type=number]").press("Enter")
            page.evaluate(WATCH_PROGRESS)
            page.locator("#generate").click()
            expect(page.locator("#prompt textarea")).to_have_value(SLOT_PROMPT, timeout=120_000)
            expect(page.locator("#status")).to_contain_text("Done: 4 frames, 64x64 px, 8 steps", timeout=120_000)
            assert page.evaluate("() => window.sawProgress"), "no progress was shown while generating"
            page.wait_for_function(PLAYABLE, timeout=60_000)
            source = page.evaluate("() => document.querySelector('#clip video').currentSrc")
            assert source.startswith(page_url) and source.endswith(".mp4")
            assert page.evaluate("() => document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.640015\"')")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    outside = [url for url in requests if not url.startswith((page_url, "data:", "blob:"))]
    assert outside == [], f"the page asked the internet for {outside}"
    assert SCREENSHOT.stat().st_size > 10_000
