"""Drive the app in a real browser and save a screenshot of every tab (the browser test and docs/screenshots).

Uses the `playwright` pip package with Debian's chromium (never `playwright install`):

    python spaces_app/screenshots.py --url http://127.0.0.1:7860 --out docs/screenshots
    python spaces_app/screenshots.py --out docs/screenshots -- --model pretrained/cxr-ldm-small   # starts the app

Every request to a host other than the app's is blocked and recorded (the app must work without network access).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TABS = ["generate", "enhance", "models", "data", "metrics", "metrics_evaluation", "research", "classifier"]
DEFAULT_PROMPT = "AP chest radiograph of a 5 year old child. Findings: bacterial pneumonia."
DEFAULT_UPLOAD = REPO_ROOT / "tests" / "fixtures" / "kermany" / "PNEUMONIA" / "person10_virus_35.jpeg"


def launch_browser(playwright, executable: str = CHROMIUM):
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)


def _choose(page, elem_id: str, option_text: str | None = None, index: int = 0) -> str:
    """Open the gradio dropdown `#elem_id` and click an option (by text, else the index-th); returns its text."""
    page.locator(f"#{elem_id} input").first.click()
    options = page.locator("ul.options li, [role='option']")
    options.first.wait_for(state="visible", timeout=10_000)
    target = options.filter(has_text=option_text).first if option_text else options.nth(index)
    text = target.inner_text().strip()
    target.click()
    return text


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _visible_image_box(page, gallery: str) -> dict:
    """Width, height and the visible fraction of a gallery's first image (1.0 when nothing is cut off by the
    gallery's scroll box)."""
    return page.evaluate("""(sel) => {
        const img = document.querySelector(sel + ' img');
        const box = img.getBoundingClientRect();
        let visible = {top: box.top, bottom: box.bottom, left: box.left, right: box.right};
        for (let el = img.parentElement; el; el = el.parentElement) {
            const style = getComputedStyle(el);
            if (['auto', 'scroll', 'hidden', 'clip'].includes(style.overflowY)) {
                const r = el.getBoundingClientRect();
                visible = {top: Math.max(visible.top, r.top), bottom: Math.min(visible.bottom, r.bottom),
                           left: Math.max(visible.left, r.left), right: Math.min(visible.right, r.right)};
            }
        }
        const area = Math.max(0, visible.bottom - visible.top) * Math.max(0, visible.right - visible.left);
        return {width: box.width, height: box.height, visible_fraction: area / (box.width * box.height)};
    }""", gallery)


def _shot(page, out: Path, name: str, shots: dict) -> None:
    page.wait_for_timeout(400)  # let plots and images settle
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shots[name] = str(path)


def capture(url: str, out_dir: str | Path, *, prompt: str = DEFAULT_PROMPT, upload: str | Path = DEFAULT_UPLOAD,
            data_option: str | None = None, steps: int | None = None, timeout_ms: int = 180_000,
            executable: str = CHROMIUM, width: int = 1360, height: int = 900) -> dict:
    """Visit every tab, use it as a person would, save `<tab>.png` in `out_dir`; returns timings and findings."""
    from playwright.sync_api import sync_playwright

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    app_host = urlparse(url).hostname
    report: dict = {"screenshots": {}, "external_requests": [], "console_errors": []}
    with sync_playwright() as p:
        browser = launch_browser(p, executable)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(timeout_ms)

        def route(route_obj):
            host = urlparse(route_obj.request.url).hostname
            if host in (app_host, "localhost", "127.0.0.1") or route_obj.request.url.startswith(("data:", "blob:")):
                return route_obj.continue_()
            report["external_requests"].append(route_obj.request.url)
            return route_obj.abort()

        page.route("**/*", route)
        try:
            _visit(page, url, out, report, prompt, upload, data_option, steps)
        except Exception:
            page.screenshot(path=str(out / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    return report


def _visit(page, url, out, report, prompt, upload, data_option, steps) -> None:
    page.on("console", lambda msg: report["console_errors"].append(msg.text) if msg.type == "error" else None)

    # First render: from navigation to the Generate button being visible.
    start = time.perf_counter()
    page.goto(url)
    page.locator("#generate-button").wait_for(state="visible")
    report["first_render_s"] = round(time.perf_counter() - start, 3)

    # Generate: type a prompt, click Generate, wait for the image.
    page.locator("#prompt textarea").fill(prompt)
    if steps is not None:
        slider = page.get_by_label("number input for Steps")
        if slider.count():
            slider.fill(str(steps))
            slider.press("Enter")
    start = time.perf_counter()
    page.locator("#generate-button").click()
    page.locator("#generated-gallery img").first.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#generation-time')?.innerText.includes(' s')")
    report["generation_ui_s"] = round(time.perf_counter() - start, 3)
    report["generation_text"] = page.locator("#generation-time").inner_text().strip()
    report["generated_image_box"] = _visible_image_box(page, "#generated-gallery")
    _shot(page, out, "generate", report["screenshots"])

    # Enhancement: send the generated image, compare every preset.
    page.get_by_role("button", name="Send to Enhancement").click()
    page.locator("#enhance-input img").first.wait_for(state="visible")
    page.locator("#compare-button").click()
    page.locator("#enhance-gallery img").nth(5).wait_for(state="visible")
    page.locator("#enhance-metrics table").first.wait_for(state="visible")
    _shot(page, out, "enhance", report["screenshots"])

    # Model analysis: static content.
    _tab(page, "Model analysis")
    page.locator("#model-summary").wait_for(state="visible")
    _shot(page, out, "models", report["screenshots"])

    # Dataset explorer: open a dataset, wait for its first page.
    _tab(page, "Dataset explorer")
    report["data_source"] = _choose(page, "data-source", data_option)
    page.locator("#data-open").click()
    page.locator("#data-gallery img").first.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#data-summary')?.innerText.includes('images in')")
    _shot(page, out, "data", report["screenshots"])

    # Metrics: the newest training run.
    _tab(page, "Metrics")
    try:
        report["training_run"] = _choose(page, "train-run")
        page.locator("#train-curves img").first.wait_for(state="visible", timeout=30_000)
    except Exception as err:  # no training run found: the screenshot shows the empty dashboard
        report["training_run"] = f"none ({type(err).__name__})"
        page.keyboard.press("Escape")
    _shot(page, out, "metrics", report["screenshots"])
    page.get_by_role("tab", name="Evaluations", exact=True).click()
    try:
        report["evaluation_run"] = _choose(page, "eval-run")
        page.locator("#eval-table table").first.wait_for(state="visible", timeout=30_000)
        page.wait_for_function("document.querySelector('#eval-note')?.innerText.includes('values')")
        _shot(page, out, "metrics_evaluation", report["screenshots"])
    except Exception as err:  # no evaluation run found
        report["evaluation_run"] = f"none ({type(err).__name__})"
        page.keyboard.press("Escape")

    # Research: a real image, one generated from its prompt, the nearest training image.
    _tab(page, "Research")
    report["research_source"] = _choose(page, "research-source", data_option)
    page.locator("#research-real img").first.wait_for(state="visible")
    page.locator("#research-generate").click()
    page.locator("#research-generated img").first.wait_for(state="visible")
    page.locator("#research-nearest").click()
    page.locator("#research-nearest-image img").first.wait_for(state="visible")
    _shot(page, out, "research", report["screenshots"])

    # Classifier: upload an X-ray, classify.
    _tab(page, "Classifier")
    page.locator("#classifier-input input[type=file]").set_input_files(str(upload))
    page.locator("#classifier-input img").first.wait_for(state="visible")
    page.locator("#classify-button").click()
    page.locator("#classifier-overlay img").first.wait_for(state="visible")
    _shot(page, out, "classifier", report["screenshots"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_argv = argv[argv.index("--") + 1 :] if "--" in argv else None
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running app; without it the app is started here with the arguments after --")
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "screenshots"))
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--data-option", default=None, help="text of the dataset to open (default: the first)")
    parser.add_argument("--steps", type=int, default=None, help="set the Steps slider before generating")
    args = parser.parse_args(argv)
    running = None
    if args.url is None:
        sys.path.insert(0, str(APP_DIR))
        import demo_assets

        running = demo_assets.start_app(app_argv or [])
        args.url = running.url
    try:
        report = capture(args.url, args.out, prompt=args.prompt, data_option=args.data_option, steps=args.steps)
    finally:
        if running is not None:
            running.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
