"""The Gradio app (spaces_app/) through its API: every endpoint called with gradio_client against the app served on
a free local port, with a tiny random pipeline, a tiny random classifier, the fixture X-rays as a saved dataset and a
runs folder; bad input gets one clear sentence and the app keeps serving."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[1] / "spaces_app"
sys.path.insert(0, str(APP_DIR))
import demo_assets  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROMPT = "PA chest radiograph of an adult. Findings: pneumonia."
ENDPOINTS = {
    "/generate", "/enhance_compare", "/enhance_custom", "/model_info", "/data_sources", "/data_open", "/data_browse",
    "/metrics_scan", "/metrics_evaluation", "/metrics_training", "/research_open", "/research_pick",
    "/research_random", "/research_generate", "/research_nearest", "/classify",
}
# Custom-preset controls of the Enhancement tab, in order (see tab_enhance.CUSTOM_STEPS).
CUSTOM = [False, 128, 200, False, 3, True, 2.0, 8, False, True, 0.5, 1.0, False, 5.0, 0.5, False, 0.15]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    import torch

    torch.set_num_threads(1)  # tests share the machine
    return demo_assets.shared_test_app(tmp_path_factory.getbasetemp() / "cxr-app")


@pytest.fixture(scope="module")
def client(running):
    return Client(running.url, verbose=False, download_files=str(running.assets["model"].parent / "downloads"))


def generate(client, prompt=PROMPT, negative="", size=64, steps=2, guidance=4.0, scheduler="dpm++", seed=7,
             random_seed=False, count=1, enhancement="none"):
    return client.predict(prompt, negative, size, steps, guidance, scheduler, seed, random_seed, count, enhancement,
                          api_name="/generate")


def xray(name="nih/No_1000_1980.png") -> str:
    return str(FIXTURES / name)


def test_every_endpoint_is_tested(client):
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert named == ENDPOINTS


def test_generate_lossless_grayscale_png_with_provenance(client):
    from cxr_diffusers import read_provenance

    gallery, timing, download, records = generate(client, count=2, enhancement="balanced")  # (+ 2 gr.State)
    assert len(gallery) == 2 and [g["caption"] for g in gallery] == ["seed 7", "seed 8"]
    for item, seed in zip(gallery, (7, 8)):
        with Image.open(item["image"]) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (64, 64)
        record = read_provenance(item["image"])
        assert record["synthetic"] and record["seed"] == seed and record["prompt"] == PROMPT
        assert record["num_inference_steps"] == 2 and record["enhancement"]["name"] == "balanced"
    assert "2 images of 64x64 in" in timing and "ms per step" in timing
    download = download["value"] if isinstance(download, dict) else download  # a gr.DownloadButton update
    assert download.endswith(".zip") and Path(download).stat().st_size > 0
    assert [r["seed"] for r in records] == [7, 8]


def test_generate_same_seed_same_pixels_and_random_seed(client):
    first = np.asarray(Image.open(generate(client, seed=3)[0][0]["image"]))
    again = np.asarray(Image.open(generate(client, seed=3)[0][0]["image"]))
    assert np.array_equal(first, again)
    records = generate(client, random_seed=True, scheduler="ddim")[3]
    assert records[0]["scheduler"] == "DDIMScheduler" and isinstance(records[0]["seed"], int)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"steps": 1000}, "Steps must be between 1 and 100"),
        ({"steps": 2.5}, "Steps must be a whole number"),
        ({"guidance": -1}, "Guidance must be between 0 and 20"),
        ({"guidance": "lots"}, "Guidance must be a number"),
        ({"count": 50}, "Number of images must be between 1 and 4"),
        ({"seed": -5}, "Seed must be between 0 and"),
        ({"size": 1000}, "1000"),
        ({"scheduler": "warp-drive"}, "warp-drive"),
        ({"enhancement": "sepia"}, "sepia"),
        ({"prompt": "x" * 5000}, "keep it under 1000"),
    ],
)
def test_generate_bad_input_is_one_sentence(client, kwargs, message):
    with pytest.raises(AppError) as info:
        generate(client, **kwargs)
    text = str(info.value)
    assert message in text and "Traceback" not in text and text.count("\n") == 0


def test_app_keeps_serving_after_errors(client):
    with pytest.raises(AppError):
        generate(client, prompt="")
    assert len(generate(client)[0]) == 1


def test_enhance_compare_every_preset_with_metrics(client):
    gallery, table, custom, custom_table, config = client.predict(handle_file(xray()), *CUSTOM,
                                                                  api_name="/enhance_compare")
    names = [g["caption"] for g in gallery]
    assert names == ["raw", "balanced", "high_contrast", "sharp_detail", "radiographic_film", "custom"]
    assert [row[0] for row in table["data"]] == names
    assert "SSIM vs raw" in table["headers"] and "entropy" in table["headers"]
    raw_row, balanced_row = table["data"][0], table["data"][1]
    assert raw_row[table["headers"].index("SSIM vs raw")] in (None, "", "nan")
    assert 0 < balanced_row[table["headers"].index("SSIM vs raw")] < 1
    assert [row[0] for row in custom_table["data"]] == ["raw", "custom"] and Image.open(custom).mode == "L"
    assert [step["name"] for step in config["steps"]] == ["clahe", "edge_enhance"]


def test_enhance_custom_preset(client):
    settings = list(CUSTOM)
    settings[0] = True  # window on
    settings[16] = 0.3  # vignette amount (off, so ignored)
    image, table, config = client.predict(handle_file(xray()), *settings, api_name="/enhance_custom")
    assert [s["name"] for s in config["steps"]] == ["window", "clahe", "edge_enhance"]
    assert config["steps"][1]["params"]["tile_grid_size"] == [8, 8]
    with Image.open(image) as out:
        assert out.mode == "L"
    assert [row[0] for row in table["data"]] == ["raw", "custom"]


@pytest.mark.parametrize("mode", ["I;16", "RGB", "RGBA", "P"])
def test_uploads_of_other_modes_are_converted(client, tmp_path, mode):
    base = Image.open(xray()).convert("L").resize((96, 96))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(base, dtype=np.uint16) * 64 + 100).astype(np.uint16))
        assert image.mode in ("I;16", "I")
    elif mode == "RGBA":
        image = base.convert("RGBA")
        image.putalpha(200)
    else:
        image = base.convert(mode)
    path = tmp_path / f"upload_{mode.replace(';', '')}.png"
    image.save(path)
    out, table, _ = client.predict(handle_file(str(path)), *CUSTOM, api_name="/enhance_custom")
    with Image.open(out) as result:
        assert result.mode == "L" and result.size == (96, 96)
        if mode == "I;16":  # scaled from its own range, not clipped at 255
            assert np.asarray(result).std() > 20


def test_bad_uploads_get_one_sentence(client, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, 20)).save(huge)
    tiny = tmp_path / "tiny.png"
    Image.new("L", (4, 4)).save(tiny)
    for path, message in ((not_image, "is not a readable image"), (huge, "at most 4096 pixels"),
                          (tiny, "at least 16 pixels")):
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(path)), *CUSTOM, api_name="/enhance_custom")
        assert message in str(info.value) and "Traceback" not in str(info.value)
    with pytest.raises(AppError, match="Upload an X-ray first"):
        client.predict(None, *CUSTOM, api_name="/enhance_compare")
    bad = list(CUSTOM)
    bad[6] = 99.0  # CLAHE clip limit beyond its slider
    with pytest.raises(AppError, match="CLAHE clip limit must be between 0.5 and 10"):
        client.predict(handle_file(xray()), *bad, api_name="/enhance_custom")


def test_upload_larger_than_the_limit_is_refused(running, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (21 * 2**20))
    with pytest.raises(Exception) as info:
        Client(running.url, verbose=False).predict(handle_file(str(big)), *CUSTOM, api_name="/enhance_custom")
    assert "size" in str(info.value).lower() or "large" in str(info.value).lower()
    assert len(generate(Client(running.url, verbose=False))[0]) == 1  # still serving


def test_model_info(client):
    (summary, table, plot, configs, scheduler, c_summary, c_table, c_plot, c_config) = client.predict(
        api_name="/model_info")
    assert "parameters" in summary and "MB of weights" in summary
    components = {row[0]: row for row in table["data"]}
    assert {"vae", "unet", "text_encoder", "tokenizer", "scheduler"} <= set(components)
    assert components["unet"][2] > 0 and components["unet"][3] == components["unet"][2]
    assert plot is not None and plot.get("plot")
    assert configs["unet"]["sample_size"] == 8 and scheduler["class"] == "DPMSolverMultistepScheduler"
    assert "ResNetForImageClassification" in c_summary and "parameters" in c_summary
    assert [row[0] for row in c_table["data"]][-1] == "head"
    assert c_config["id2label"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    assert c_plot.get("plot")


def test_dataset_explorer(client, running):
    source, note = client.predict(api_name="/data_sources")
    saved = [value for label, value in source["choices"] if value.startswith("saved:")]
    assert saved and "found" in note
    split, label, view, gallery, table, plot, summary, page = client.predict(saved[0], api_name="/data_open")
    assert split["value"] == "train" and {c[1] for c in split["choices"]} == {"train", "test"}
    assert [c[1] for c in label["choices"]] == ["any", "no finding", "pneumonia"] or \
        [c[1] for c in label["choices"]] == ["any", "pneumonia", "no finding"]
    assert len(gallery) == 4 and len(table["data"]) == 4 and page == 1 and "4** of 4 images" in summary
    assert all(row[6] for row in table["data"])  # prompts
    gallery, table, plot, summary, page = client.predict(saved[0], "train", "pneumonia", "any", 5,
                                                         api_name="/data_browse")
    assert page == 1 and all("pneumonia" in row[1] for row in table["data"]) and len(gallery) == len(table["data"])
    assert plot.get("plot")
    with pytest.raises(AppError, match="Unknown dataset"):
        client.predict("saved:/etc", api_name="/data_open")
    with pytest.raises(AppError, match="no split"):
        client.predict(saved[0], "nope", "any", "any", 1, api_name="/data_browse")


def test_metrics_dashboard(client):
    evaluation, training, bench, summary, note = client.predict(api_name="/metrics_scan")
    assert evaluation["value"].endswith("eval-tiny") and training["value"].endswith("ldm-tiny")
    assert "1 evaluation run(s), 1 training run(s) and 1 benchmark file(s)" in note
    assert bench["headers"][:3] == ["file", "benchmark", "device"] and len(bench["data"]) == 2
    assert ["bench_sampling.json", "goals.default.s_per_image", "0.4"] in summary["data"]
    table, plots, text = client.predict(evaluation["value"], api_name="/metrics_evaluation")
    metrics = {row[0]: row[1] for row in table["data"]}
    assert metrics["distribution.vae.frechet_distance"] == "12.5" and len(plots) == 2
    curves, latest, images, text = client.predict(training["value"], api_name="/metrics_training")
    assert curves.get("plot") and {row[0] for row in latest["data"]} >= {"step", "loss", "lr"}
    assert [i["caption"] for i in images][0] == "loss.png" and len(images) == 3
    with pytest.raises(AppError, match="not a known training run"):
        client.predict("/etc", api_name="/metrics_training")


def test_research_dashboard(client):
    source = next(v for _, v in client.predict(api_name="/data_sources")[0]["choices"] if v.startswith("saved:"))
    split, index, real, prompt, info = client.predict(source, api_name="/research_open")
    assert split["value"] == "test" and index == 0 and prompt.startswith("AP chest radiograph")
    real, prompt, info = client.predict(source, "test", 1, api_name="/research_pick")
    assert prompt.startswith("PA chest radiograph") and "test #1" in info
    index, real, prompt, info = client.predict(source, "train", api_name="/research_random")
    assert 0 <= index < 4
    generated, pair, table, hist = client.predict(source, "test", 1, prompt, 2, 0, api_name="/research_generate")
    assert "SSIM" in pair and "PSNR" in pair and table["headers"] == ["metric", "real", "generated"]
    assert {r[0] for r in table["data"]} >= {"entropy", "sharpness", "contrast_ratio"}
    assert hist.get("plot")
    nearest, text = client.predict(handle_file(generated), source, 16, api_name="/research_nearest")
    assert "Nearest of 4 train images" in text and "SSIM" in text
    with pytest.raises(AppError, match="Image index must be between 0 and 1"):
        client.predict(source, "test", 7, api_name="/research_pick")


def test_classifier(client, running):
    label, overlay, note = client.predict(handle_file(xray("kermany/PNEUMONIA/person10_virus_35.jpeg")),
                                          "predicted class", api_name="/classify")
    probabilities = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(probabilities) == {"NORMAL", "PNEUMONIA"} and abs(sum(probabilities.values()) - 1) < 1e-4
    with Image.open(overlay) as image:
        assert image.mode == "RGB"
    assert "Grad-CAM" in note
    with pytest.raises(AppError, match="Upload an X-ray first"):
        client.predict(None, "NORMAL", api_name="/classify")
    with pytest.raises(AppError, match="is not a readable image"):
        client.predict(handle_file(str(FIXTURES / "ATTRIBUTION.md")), "NORMAL", api_name="/classify")


def test_missing_classifier_is_reported(client, running):
    state = running.state
    saved, path = state._classifier, state.config.classifier
    state._classifier, state.config.classifier = None, str(Path(path).parent / "no-classifier")
    try:
        with pytest.raises(AppError, match="No pneumonia classifier"):
            client.predict(handle_file(xray()), "predicted class", api_name="/classify")
        assert "No classifier yet" in client.predict(api_name="/model_info")[5]
    finally:
        state._classifier, state.config.classifier = saved, path


def test_app_without_a_model_starts_and_says_so(tmp_path):
    missing = demo_assets.start_app(["--model", str(tmp_path / "no-model"), "--classifier", str(tmp_path / "none"),
                                     "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path),
                                     "--shared-data", str(tmp_path / "none")])
    try:
        client = Client(missing.url, verbose=False)
        with pytest.raises(AppError, match="No model could be loaded"):
            generate(client, size=256)
        assert "Model not available" in client.predict(api_name="/model_info")[0]
        assert "No dataset found" in client.predict(api_name="/data_sources")[1]
    finally:
        missing.close()


def test_serving_defaults(monkeypatch):
    import app

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.queue_size >= 8 and args.concurrency == 1
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    with pytest.raises(SystemExit):
        app.parse_args(["--queue-size", "0"])


def test_png_bytes_are_lossless(client):
    """The gallery serves the pipeline's own PNG file: decoding it gives the pipeline's pixels exactly."""
    path = generate(client, seed=11)[0][0]["image"]
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(data)).mode == "L"


def test_no_network_access_at_start_or_run(running, monkeypatch):
    """Starting the app and generating through it opens no connection beyond the loopback interface."""
    import socket

    attempts = []
    local = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in local and not host.startswith("127."):
            attempts.append(host)
            raise OSError(f"network access to {host} blocked by the test")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in local and not str(host).startswith("127."):
            attempts.append(host)
            raise OSError(f"DNS lookup of {host} blocked by the test")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    with pytest.raises(OSError):  # the guard works
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    assert attempts == ["192.0.2.1"]
    attempts.clear()
    guarded = demo_assets.start_app(demo_assets.app_args(running.assets))
    try:
        client = Client(guarded.url, verbose=False)
        assert len(generate(client)[0]) == 1
        assert client.predict(api_name="/model_info")[0]
    finally:
        guarded.close()
    assert attempts == []


def test_generate_says_which_resolution_route_it_took(running):
    assert running.state.resolution_route(64)[0] is None and running.state.pipe.super_resolution is None
    route, text = running.state.resolution_route(256)
    assert route is None and "no super-resolution stage" in text and "tiles its 64 px layout" in text


def test_generate_uses_the_super_resolution_stage_where_the_model_has_one(tmp_path):
    """The app's generator on a model with a stage (its AppState and handler, without a server)."""
    import torch
    import tab_generate
    import tab_models
    from state import AppConfig, AppState

    from cxr_diffusers import CXRPipeline, CXRSuperResolutionModel, read_provenance

    folder = demo_assets.tiny_pipeline(tmp_path / "model")
    pipe = CXRPipeline.from_pretrained(folder)
    torch.manual_seed(0)
    pipe.super_resolution = CXRSuperResolutionModel(block_out_channels=8, num_blocks=1)
    pipe.save_pretrained(folder)
    state = AppState(AppConfig(model=str(folder), data_dirs=[str(tmp_path)], runs_dirs=[str(tmp_path)]))
    state.load_pipeline()
    assert state.pipe.super_resolution is not None and state.size_choices == [64, 128, 192, 256, 512, 768]
    assert "128 and 192 px: 64 px images upscaled by the super-resolution stage" in tab_generate.resolution_info(state)
    assert "super-resolution stage to 128 and 192 px" in tab_models.pipeline_info(state)[0]
    generate_fn = tab_generate.make_generate_fn(state)
    quiet = lambda *args, **kwargs: None  # noqa: E731  (gr.Progress outside a request)
    gallery, timing, _, records, paths, _ = generate_fn(PROMPT, "", 192, 2, 4.0, "dpm++", 7, False, 1, "none",
                                                        progress=quiet)
    assert Image.open(paths[0]).size == (192, 192) and records[0]["super_resolution"]["scale"] == 3
    assert "192 px through the super-resolution stage: 64 px sampled, upscaled 3x." in timing
    gallery, timing, _, records, paths, _ = generate_fn(PROMPT, "", 256, 1, 4.0, "dpm++", 7, False, 1, "none",
                                                        progress=quiet)
    assert Image.open(paths[0]).size == (256, 256) and "super_resolution" not in read_provenance(paths[0])
    assert "256 px sampled directly: the super-resolution stage makes 128 and 192 px only" in timing
