"""cxr-diffusers Gradio app (also a Hugging Face Space): generate synthetic chest X-rays, compare enhancements,
inspect the models, explore datasets, read training/evaluation metrics, compare real and generated images and run
the pneumonia classifier. This file only wires the tabs (one module per tab) together and serves them.

    python spaces_app/app.py [--model pretrained/cxr-ldm-small] [--host 127.0.0.1] [--port 7860]

Serving: analytics off, bound to 127.0.0.1 unless --host says otherwise, a bounded queue (--queue-size) that runs one
generation at a time on a CPU (--concurrency), the pipeline loaded once and shared, Hugging Face libraries offline
(no network access at start or run; --allow-downloads lets a Hub id be fetched). Not for clinical use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Before gradio / huggingface_hub are imported: no analytics, no version checks.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
try:  # the package installed (pip install -e .), or next to this file (Space layout), or the repository root
    import cxr_diffusers  # noqa: F401
except ImportError:
    sys.path.insert(1, str(APP_DIR.parent))

TITLE = "cxr-diffusers: synthetic chest X-rays"
CSS = """
.cxr-warning {border-left: 4px solid #d08c3a; padding-left: 0.6rem;}
#cxr-header h1 {margin-bottom: 0.1rem;}
/* Gradio shrinks a gallery's grid to the number of images, so one square X-ray spans the whole width and the
   fixed height cut off its lower part. Keep two columns and let the gallery grow to show whole images. */
#generated-gallery .grid-container {grid-template-columns: repeat(2, minmax(100px, 1fr)) !important;}
#generated-gallery .fixed-height {max-height: none !important;}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from state import AppConfig

    defaults = AppConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=defaults.model, help="pipeline folder or Hub id (env CXR_MODEL)")
    parser.add_argument("--classifier", default=defaults.classifier, help="classifier folder (env CXR_CLASSIFIER)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind; 0.0.0.0 serves the local network")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size,
                        help="requests that may wait in the queue; more are refused with a 'queue full' message")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="generations run at the same time (1 on a CPU; more on a GPU)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images, help="images per request")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="denoising steps per request")
    parser.add_argument("--max-file-size", default=defaults.max_file_size, help="largest upload, e.g. 20mb")
    parser.add_argument("--data-dir", action="append", default=None,
                        help="folder holding saved datasets (repeatable; default data/; env CXR_DATA_DIRS)")
    parser.add_argument("--shared-data", default=defaults.shared_data, help="shared real-data folder (CXR_SHARED_DATA)")
    parser.add_argument("--runs-dir", action="append", default=None,
                        help="folder with training runs / evaluations / benchmark results (repeatable; CXR_RUNS_DIRS)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--allow-downloads", action="store_true",
                        help="let a Hub id be downloaded (by default the app never touches the network)")
    args = parser.parse_args(argv)
    for name in ("queue_size", "concurrency", "max_images", "max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def config_from_args(args: argparse.Namespace):
    from state import AppConfig

    config = AppConfig(model=args.model, classifier=args.classifier, shared_data=args.shared_data, device=args.device,
                       max_images=args.max_images, max_steps=args.max_steps, queue_size=args.queue_size,
                       concurrency=args.concurrency, max_file_size=args.max_file_size)
    if args.data_dir:
        config.data_dirs = args.data_dir
    if args.runs_dir:
        config.runs_dirs = args.runs_dir
    return config


def set_offline(allow_downloads: bool = False) -> None:
    """Hugging Face libraries read the offline switches when imported: set them first."""
    if not allow_downloads:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(name, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def build_demo(state):
    """The Blocks app: a header, the seven tabs, the cross-tab buttons and a bounded queue."""
    import gradio as gr
    import tab_classifier
    import tab_data
    import tab_enhance
    import tab_generate
    import tab_metrics
    import tab_models
    import tab_research
    from ui import NOT_FOR_CLINICAL_USE_MD

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        model_line = (f"Model `{state.config.model}`" if state.pipe is not None
                      else f"**No model loaded**: {state.pipe_error}")
        gr.Markdown(f"# {TITLE}\n{model_line}. {NOT_FOR_CLINICAL_USE_MD}", elem_id="cxr-header")
        with gr.Tabs(selected="generate") as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = tab_generate.build(state)
            with gr.Tab("Enhancement", id="enhance"):
                enhance = tab_enhance.build(state)
            with gr.Tab("Model analysis", id="models"):
                tab_models.build(state)
            with gr.Tab("Dataset explorer", id="data"):
                tab_data.build(state)
            with gr.Tab("Metrics", id="metrics"):
                tab_metrics.build(state)
            with gr.Tab("Research", id="research"):
                tab_research.build(state)
            with gr.Tab("Classifier", id="classifier"):
                classifier = tab_classifier.build(state)

        # Cross-tab wiring: send the selected generated image to another tab and switch to it.
        def pick(paths, index):
            if not paths:
                raise gr.Error("Generate an image first.")
            return paths[min(int(index or 0), len(paths) - 1)]

        for button, target, tab_id in ((generate.send_to_enhance, enhance.image, "enhance"),
                                       (generate.send_to_classifier, classifier.image, "classifier")):
            button.click(pick, [generate.paths, generate.selected], target, api_visibility="private", queue=False).then(
                lambda tab_id=tab_id: gr.Tabs(selected=tab_id), None, tabs, api_visibility="private", queue=False)
    demo.queue(max_size=state.config.queue_size, default_concurrency_limit=2)
    return demo


def create_app(argv: list[str] | None = None):
    """Parse `argv`, load the pipeline once and build the app: `(demo, state, args)`."""
    args = parse_args(argv)
    set_offline(args.allow_downloads)
    from state import AppState

    state = AppState(config_from_args(args))
    state.load_pipeline()
    if state.classifier_available():
        try:
            state.get_classifier()
        except Exception:  # reported in the tab
            pass
    return build_demo(state), state, args


def launch(demo, state, args, **kwargs):
    """Serve on `args.host:args.port`; extra keyword arguments go to `Blocks.launch`."""
    from ui import MAX_IMAGE_SIDE  # noqa: F401  (imported for its environment default)

    options = dict(server_name=args.host, server_port=args.port, share=False, max_file_size=args.max_file_size,
                   footer_links=["api", "settings"], css=CSS, show_error=False, quiet=False, mcp_server=False,
                   ssr_mode=False,
                   allowed_paths=[str(state.output_root)])
    options.update(kwargs)
    return demo.launch(**options)


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    demo, state, args = create_app(argv)
    print(f"cxr-diffusers app: model {'loaded' if state.pipe is not None else 'MISSING'} "
          f"({state.pipe_load_seconds:.1f} s), built in {time.perf_counter() - start:.1f} s; "
          f"serving on http://{args.host}:{args.port} (queue {args.queue_size}, concurrency {args.concurrency})")
    if state.pipe is None:
        print(f"warning: {state.pipe_error}", file=sys.stderr)
    launch(demo, state, args)


if __name__ == "__main__":
    main()
