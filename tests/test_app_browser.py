"""End-to-end in a real browser: the `playwright` pip package drives Debian's chromium (never `playwright install`)
through every tab of the app: type a prompt, click Generate, wait for the image, switch tabs, use each one, save a
screenshot of each. No request may leave the app's host. Skipped where playwright or chromium is missing.

Set CXR_APP_SCREENSHOTS=docs/screenshots to write the screenshots there (otherwise a temporary folder)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright.sync_api", reason="the playwright pip package is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces_app"))
import demo_assets  # noqa: E402
import screenshots  # noqa: E402

if not Path(screenshots.CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip(f"chromium is not installed at {screenshots.CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return demo_assets.shared_test_app(tmp_path_factory.getbasetemp() / "cxr-app")


def test_every_tab_in_a_real_browser(running, tmp_path):
    out = Path(os.environ.get("CXR_APP_SCREENSHOTS") or tmp_path / "screenshots")
    executable = screenshots.CHROMIUM if Path(screenshots.CHROMIUM).exists() else shutil.which("chromium")
    report = screenshots.capture(running.url, out, steps=2, executable=executable, timeout_ms=120_000)

    assert set(report["screenshots"]) == set(screenshots.TABS)
    for path in report["screenshots"].values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert report["external_requests"] == []  # nothing leaves the machine
    assert report["generation_text"].startswith("1 image of 64x64 in") and "2 steps" in report["generation_text"]
    box = report["generated_image_box"]  # one square image, shown whole (not cut off by the gallery's height)
    assert box["visible_fraction"] > 0.99 and abs(box["width"] - box["height"]) < 2, box
    assert report["data_source"].startswith("fixture-xrays")
    assert report["training_run"].endswith("ldm-tiny")
    print(f"\nbrowser: first render {report['first_render_s']:.2f} s, generation through the UI "
          f"{report['generation_ui_s']:.2f} s ({report['generation_text']}); console errors: "
          f"{len(report['console_errors'])}")
