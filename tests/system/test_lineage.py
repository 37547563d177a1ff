"""Lineage in a real browser: the static Kedro-Viz site of the project, rendered by headless Chromium.

``kedro viz build`` writes the React app and its JSON (``build/``); the test serves that folder on
127.0.0.1 (a free port, shut down after), loads it in headless Chromium and reads the DOM *after*
the app rendered it (``--dump-dom`` once the virtual-time budget has run out): the node names are
looked for in the flowchart's SVG labels, the layers in the layer bands, the pipelines in the
pipeline selector. A screenshot of the full lineage is kept in ``data/08_reporting/`` of the copy.

Chromium comes from the Debian package (``make browser``); without it these tests are skipped.
The browser runs with a fresh profile, without sandbox/GPU/sync/background networking, and with
every host name except 127.0.0.1 unresolvable, so nothing leaves the machine (the page asks for a
Google font, which is then simply not there).
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import find_chromium, make_project

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: run `make browser` (apt-get install chromium)"
)

TRAINING_NODES = {"image_ft": "train_image_lora", "motion_ft": "train_motion_lora"}
WINDOW = (1600, 1000)
SCREENSHOT_WINDOW = (2400, 1500)  # the whole __default__ chain with readable labels
# Marks Kedro-Viz's onboarding hints as seen (what a returning user has in localStorage), so the
# screenshot shows the flowchart instead of the hint pop-up. Everything else is served unchanged.
_HINTS_SEEN = (b'<script>try{const k="KedroViz";const s=JSON.parse(localStorage.getItem(k)||"{}");'
               b's.showFeatureHints=false;localStorage.setItem(k,JSON.stringify(s))}catch(e){}</script>')


def _catalog_layers(project: Path) -> set[str]:
    """Every ``metadata.kedro-viz.layer`` declared in the catalog files (Kedro's ``catalog*`` pattern)."""
    layers = set()
    base = project / "conf" / "base"
    for path in {*base.glob("catalog*.yml"), *base.glob("catalog*/**/*.yml")}:
        for entry in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).values():
            viz = ((entry.get("metadata") or {}).get("kedro-viz") or {}) if isinstance(entry, dict) else {}
            if "layer" in viz:
                layers.add(viz["layer"])
    return layers


@pytest.fixture(scope="module")
def viz_project(tmp_path_factory) -> Path:
    """A project copy with its Kedro-Viz static site built in ``build/``."""
    project = make_project(tmp_path_factory.mktemp("lineage") / "project")
    kedro = os.path.join(os.path.dirname(sys.executable), "kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    result = subprocess.run([kedro, "viz", "build"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=300)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"kedro viz build failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    build = project / "build"
    assert (build / "index.html").is_file() and (build / "api" / "main").is_file(), sorted(os.listdir(build))
    print(f"kedro viz build: {seconds:.1f} s")
    return project


class _BuildHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def send_head(self):
        if self.path.split("?", 1)[0] not in ("/", "/index.html"):
            return super().send_head()
        page = (Path(self.directory) / "index.html").read_bytes().replace(b"</head>", _HINTS_SEEN + b"</head>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        return io.BytesIO(page)


@pytest.fixture(scope="module")
def viz_url(viz_project):
    """The built site served on 127.0.0.1 at a free port for the module's tests."""
    handler = functools.partial(_BuildHandler, directory=str(viz_project / "build"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="viz-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run_chromium(url: str, *action: str, window: tuple[int, int] = WINDOW, timeout: float = 120) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; return its stdout (the DOM for --dump-dom)."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--window-size={window[0]},{window[1]}", "--virtual-time-budget=20000", *action, url,
    ]  # fmt: skip
    # Own process group, so a hung browser and all its helper processes can be killed together.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s on {url}")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert process.returncode == 0, f"chromium exited with {process.returncode}:\n{stderr[-3000:]}"
    return stdout


def rendered_dom(url: str) -> str:
    """The DOM of ``url`` once the app has drawn its flowchart. Chromium's virtual-time budget can run out
    before the app draws on a loaded machine (seen once in a full suite run); one more try is made then."""
    dom = run_chromium(url, "--dump-dom")
    return dom if flowchart_labels(dom) else run_chromium(url, "--dump-dom")


def flowchart_labels(dom: str) -> set[str]:
    """Text of the node boxes the app drew in its SVG flowchart."""
    return set(re.findall(r'<text class="pipeline-node__text"[^>]*>([^<]+)</text>', dom))


def layer_bands(dom: str) -> set[str]:
    return set(re.findall(r'data-id="layer-label--([^"]+)"', dom))


def active_pipeline(dom: str) -> str | None:
    match = re.search(r'pipeline-list__option--active"[^>]*><div class="menu-option__content" title="([^"]+)"', dom)
    return match.group(1) if match else None


def test_served_page_is_the_bare_react_shell(viz_url):
    """What the server sends holds no node names: anything found later was rendered by the app."""
    import urllib.request

    with urllib.request.urlopen(viz_url, timeout=10) as response:
        shell = response.read().decode()
    assert '<div id="root"></div>' in shell
    assert not any(name in shell for name in TRAINING_NODES.values())


def test_default_view_renders_both_trainings_with_layers(viz_project, viz_url):
    dom = rendered_dom(viz_url)
    labels = flowchart_labels(dom)
    assert labels, f"no flowchart was rendered; page starts with:\n{dom[:1500]}"
    assert active_pipeline(dom) == "__default__"
    assert {"train_image_lora", "train_motion_lora", "extract_frames_and_clips", "build_captions",
            "raw_videos", "image_lora", "motion_lora"} <= labels
    assert {"build_model_cards", "image_lora_card", "motion_lora_card"} <= labels  # the cards beside the LoRAs
    layers = layer_bands(dom)
    assert {"raw", "primary", "model_input", "models", "reporting"} <= layers
    assert layers <= _catalog_layers(viz_project), "a layer band that no catalog entry declares"
    selector = set(re.findall(r'class="menu-option__content" title="([^"]+)"', dom))
    assert {"sample_data", "frames", "captions", "data_prep", "image_ft", "motion_ft", "__default__"} <= selector


@pytest.mark.parametrize("pipeline", ["image_ft", "motion_ft"])
def test_each_training_pipeline_shows_its_own_chain(viz_url, pipeline):
    """Selecting a pipeline (``?pid=``) draws its whole chain and only its own training node."""
    dom = rendered_dom(f"{viz_url}?pid={pipeline}")
    assert active_pipeline(dom) == pipeline
    labels = flowchart_labels(dom)
    other = next(node for name, node in TRAINING_NODES.items() if name != pipeline)
    assert TRAINING_NODES[pipeline] in labels
    assert other not in labels
    assert {"render_sample_videos", "extract_frames_and_clips", "build_captions"} <= labels, labels


def _drawn_share(screenshot) -> float:
    """Share of the flowchart canvas (right of the side panels) that differs from its background."""
    import numpy as np
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == SCREENSHOT_WINDOW
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    canvas = pixels[:, int(pixels.shape[1] * 0.3):]
    values, counts = np.unique(canvas, return_counts=True)
    return float((np.abs(canvas - values[counts.argmax()]) > 8).mean())


def test_screenshot_of_the_lineage_is_kept(viz_project, viz_url):
    target = viz_project / "data" / "08_reporting" / "kedro_viz_lineage.png"
    # The canvas holds node boxes, labels and edges (measured: ~3 % of its pixels differ from the
    # background; blank: ~0). On a loaded machine the app can still be laying the graph out when
    # Chromium's time budget ends: one more screenshot is taken before calling the canvas empty.
    for _ in range(2):
        run_chromium(viz_url, f"--screenshot={target}", window=SCREENSHOT_WINDOW)
        assert target.is_file()
        drawn = _drawn_share(target)
        if drawn > 0.01:
            break
    assert drawn > 0.01, f"the flowchart area of the screenshot looks empty ({drawn:.2%} drawn)"
    print(f"lineage screenshot: {target}")
