"""Every image the library writes from a synthetic image keeps the SYNTHETIC / NOT FOR CLINICAL USE provenance tag:
grids, PIL copies/resizes/crops/conversions saved as PNG/JPEG/WebP/TIFF, `cxr-diffusers enhance` (and --compare),
the evaluation's generated PNGs and grids, and the app's Enhancement tab; real (untagged) images stay untagged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cxr_diffusers import CXRInputError
from cxr_diffusers.cli import main
from cxr_diffusers.provenance import (
    NOT_FOR_CLINICAL_USE,
    PROVENANCE_KEY,
    attach_provenance,
    derive_provenance,
    make_record,
    read_provenance,
)

PROMPT = "PA chest radiograph. Findings: pneumonia."


def synthetic(seed: int = 7, size: int = 64) -> Image.Image:
    """A tagged mode-L image, as the pipeline returns."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    return attach_provenance(image, make_record(prompt=PROMPT, seed=seed, num_inference_steps=2))


def real(size: int = 64) -> Image.Image:
    return Image.fromarray(np.tile(np.arange(size, dtype=np.uint8) * 3, (size, 1)), mode="L")


def assert_synthetic(path, operation=None, seed=7):
    record = read_provenance(path)
    assert record is not None, f"{path} lost its provenance tag"
    assert record["synthetic"] is True and record["not_for_clinical_use"] is True
    assert record["notice"] == NOT_FOR_CLINICAL_USE
    if operation is None:
        assert record["prompt"] == PROMPT and record["seed"] == seed
    else:
        assert record["operation"] == operation
    return record


# ------------------------------------------------------------------------------------------------ derive / grids
def test_derive_provenance_only_for_tagged_sources():
    result = derive_provenance(real(), [real(), None], "grid")
    assert read_provenance(result) is None and PROVENANCE_KEY not in result.info
    source = synthetic()
    result = derive_provenance(real(), source, "enhance", enhancement={"name": "balanced"})
    record = read_provenance(result)
    assert record["derived_from"] == read_provenance(source) and record["operations"] == ["enhance"]
    assert record["enhancement"] == {"name": "balanced"}
    again = read_provenance(derive_provenance(real(), result, "resize"))
    assert again["operations"] == ["enhance", "resize"] and again["derived_from"] == record
    mixed = read_provenance(derive_provenance(real(), [real(), read_provenance(source)], "grid"))
    assert mixed["derived_from"][0] is None and mixed["derived_from"][1]["seed"] == 7
    with pytest.raises(CXRInputError, match="provenance source"):
        derive_provenance(real(), ["x.png"], "grid")


def test_make_grid_carries_source_records(tmp_path):
    from cxr_diffusers.utils.image_grid import make_grid

    grid = make_grid([synthetic(1), real(), synthetic(2)], cols=2, labels=["a", "b", "c"])
    grid.save(tmp_path / "grid.png")
    record = assert_synthetic(tmp_path / "grid.png", "grid")
    assert [r and r["seed"] for r in record["derived_from"]] == [1, None, 2]
    assert record["rows"] == 2 and record["cols"] == 2 and record["labels"] == ["a", "b", "c"]
    make_grid([real(), real()]).save(tmp_path / "real.png")
    assert read_provenance(tmp_path / "real.png") is None


# -------------------------------------------------------------------------------------------- PIL save hook
@pytest.mark.parametrize(
    "derive,suffix",
    [
        (lambda im: im.copy(), ".png"),
        (lambda im: im.resize((32, 32)), ".png"),
        (lambda im: im.crop((4, 4, 40, 40)), ".png"),
        (lambda im: im.rotate(90), ".png"),
        (lambda im: im.convert("RGB"), ".jpg"),
        (lambda im: im.resize((48, 48)), ".webp"),
        (lambda im: im.copy(), ".tiff"),
    ],
)
def test_pil_operations_keep_the_tag_when_saved(tmp_path, derive, suffix):
    path = tmp_path / f"x{suffix}"
    derive(synthetic()).save(path)
    assert_synthetic(path)


def test_reopened_file_keeps_the_tag(tmp_path):
    synthetic().save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as opened:
        opened.convert("RGB").save(tmp_path / "b.jpg")
    with Image.open(tmp_path / "b.jpg") as opened:
        opened.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "c.png")
    assert_synthetic(tmp_path / "c.png")


def test_caller_pnginfo_and_exif_are_kept(tmp_path):
    info = PngInfo()
    info.add_text("Mine", "kept")
    synthetic().copy().save(tmp_path / "x.png", pnginfo=info)
    assert_synthetic(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as opened:
        assert opened.text["Mine"] == "kept" and NOT_FOR_CLINICAL_USE in opened.text["Description"]
    assert len(info.chunks) == 1  # the caller's object is not modified
    exif = Image.Exif()
    exif[0x013B] = "Artist Name"
    synthetic().convert("RGB").save(tmp_path / "x.jpg", exif=exif)
    assert_synthetic(tmp_path / "x.jpg")
    with Image.open(tmp_path / "x.jpg") as opened:
        assert opened.getexif()[0x013B] == "Artist Name"


def test_untagged_images_are_saved_untouched(tmp_path):
    real().save(tmp_path / "r.png")
    real().convert("RGB").save(tmp_path / "r.jpg")
    assert read_provenance(tmp_path / "r.png") is None and read_provenance(tmp_path / "r.jpg") is None
    with Image.open(tmp_path / "r.png") as opened:
        assert "Description" not in opened.info


def test_large_grid_record_fits_a_jpeg(tmp_path):
    sources = [make_record(prompt="x" * 400, seed=i) for i in range(300)]
    grid = derive_provenance(real(), sources, "grid")
    grid.save(tmp_path / "g.jpg")
    grid.save(tmp_path / "g.png")
    assert "derived_from_omitted" in assert_synthetic(tmp_path / "g.jpg", "grid")
    assert len(assert_synthetic(tmp_path / "g.png", "grid")["derived_from"]) == 300


# ------------------------------------------------------------------------------------------------ enhancement
def test_enhancement_of_a_tagged_image_is_tagged(tmp_path):
    from cxr_diffusers.enhancement import enhance

    enhance(synthetic(), "balanced").save(tmp_path / "e.png")
    record = assert_synthetic(tmp_path / "e.png", "enhance")
    assert record["enhancement"]["name"] == "balanced" and record["derived_from"]["seed"] == 7
    enhance(real(), "balanced").save(tmp_path / "r.png")
    assert read_provenance(tmp_path / "r.png") is None


def test_enhance_cli_on_a_tagged_png(tmp_path, capsys):
    src = tmp_path / "synthetic_cxr.png"
    synthetic().save(src)
    out = tmp_path / "out"
    assert main(["enhance", str(src), "--preset", "high_contrast", "--compare", "-o", str(out)]) == 0
    record = assert_synthetic(out / "synthetic_cxr_high_contrast.png", "enhance")
    assert record["derived_from"]["seed"] == 7 and record["derived_from"]["prompt"] == PROMPT
    assert record["enhancement"]["name"] == "high_contrast" and record["source"] == src.name
    with Image.open(out / "synthetic_cxr_high_contrast.png") as opened:
        assert opened.text["Source"] == src.name  # the command's own text chunks are still there
    compare = assert_synthetic(out / "synthetic_cxr_compare.png", "enhance_compare")
    assert compare["derived_from"]["seed"] == 7 and compare["panels"][0] == "original"


def test_enhance_cli_leaves_real_images_untagged(tmp_path, fixtures_dir, capsys):
    src = fixtures_dir / "nih1000_64" / "NIH1000" / "test" / "0_normal" / "00000231_013.png"
    assert read_provenance(src) is None
    assert main(["enhance", str(src), "--compare", "--preset", "balanced", "-o", str(tmp_path)]) == 0
    for path in tmp_path.iterdir():
        assert read_provenance(path) is None, path.name


# ------------------------------------------------------------------------------------------------- evaluation
def test_evaluation_grids_carry_the_tag(tmp_path):
    import torch

    from cxr_diffusers.evaluation.memorization import (
        memorization_audit,
        save_nearest_grid,
    )
    from cxr_diffusers.evaluation.report import save_real_vs_generated_grid
    from cxr_diffusers.evaluation.runner import (
        EvaluationConfig,
        _generation_records,
        _tagged_images,
    )

    generated = torch.rand(4, 1, 32, 32)
    train = torch.rand(3, 1, 32, 32)
    path = save_real_vs_generated_grid([real(32)] * 2, {"pneumonia": generated}, tmp_path / "rg.png", n=2, tile=32)
    record = assert_synthetic(path, "grid")
    assert record["derived_from"][:2] == [None, None]  # the real row
    assert record["derived_from"][2]["generated_set"] == "pneumonia"

    pipe = SimpleNamespace(config={"_name_or_path": "tiny"}, scheduler=object())  # what _generation_records reads
    records = _generation_records(pipe, [PROMPT] * 4, [7, 8, 9, 10], EvaluationConfig(), (32, 32))
    path = save_real_vs_generated_grid(real(32), {"pneumonia": generated}, tmp_path / "rg2.png", n=2, tile=32,
                                       records={"pneumonia": records})
    assert [r and r["seed"] for r in assert_synthetic(path, "grid")["derived_from"]] == [None, None, 7, 8]
    images = _tagged_images(generated, records)
    report = memorization_audit(generated, train, size=32)
    path = save_nearest_grid(report, images, train, tmp_path / "nn.png", k=2, tile=32)
    sources = assert_synthetic(path, "grid")["derived_from"]
    assert sources[0]["prompt"] == PROMPT and sources[1] is None  # [generated | nearest training image] rows


def test_run_evaluation_writes_tagged_images(tmp_path):
    import torch

    from cxr_diffusers import CXRPipeline, create_components
    from cxr_diffusers.evaluation.runner import EvaluationConfig, run_evaluation

    torch.manual_seed(0)
    pipe = CXRPipeline(**create_components("tiny"))
    pipe.set_progress_bar_config(disable=True)
    reference = [real(64), real(64).rotate(90), real(64).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    config = EvaluationConfig(prompts=[PROMPT], num_images_per_prompt=2, batch_size=2, num_inference_steps=1,
                              features=(), ms_ssim_pairs=2, reconstruction_images=0, grid_images=2, progress=False)
    run_evaluation(pipe, reference, tmp_path, config, train_images=reference)
    files = sorted((tmp_path / "generated").glob("*.png"))
    assert len(files) == 2
    for file, seed in zip(files, (0, 1)):
        record = assert_synthetic(file, seed=seed)
        assert record["num_inference_steps"] == 1 and record["height"] == 64
    for name in ("real_vs_generated.png", "nearest_neighbours.png"):
        assert_synthetic(tmp_path / name, "grid")


# -------------------------------------------------------------------------------------------------------- app
@pytest.fixture()
def app_modules(monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "spaces_app"))
    import tab_enhance
    import ui

    return tab_enhance, ui


@pytest.mark.filterwarnings("ignore:The RGB colour image was converted")
def test_app_enhancement_outputs_carry_the_tag(tmp_path, app_modules, monkeypatch):
    tab_enhance, ui = app_modules

    class State:
        def new_output_dir(self):
            folder = tmp_path / f"request{len(list(tmp_path.iterdir()))}"
            folder.mkdir()
            return folder

    compare, custom = tab_enhance.make_fns(State())
    controls = [False, 128, 200, False, 3, True, 2.0, 8, False, True, 0.5, 1.0, False, 5.0, 0.5, False, 0.15]
    src = tmp_path / "synthetic_cxr_seed7.png"
    synthetic().save(src)  # what the Generate tab writes and sends to the Enhancement tab
    image = ui.open_xray(src)
    assert read_provenance(image)["seed"] == 7
    gallery, _, custom_path, _, _ = compare(image, *controls)
    assert_synthetic(gallery[0][0])  # the raw version: the input's own record
    for path, name in gallery[1:]:
        record = assert_synthetic(path, "enhance")
        assert record["derived_from"]["seed"] == 7 and record["enhancement"]["name"] == name
    assert_synthetic(custom_path, "enhance")
    path, _, _ = custom(image, *controls)
    assert assert_synthetic(path, "enhance")["enhancement"]["name"] == "custom"

    monkeypatch.setattr(tab_enhance, "COMPARE_SIDE", 32)  # large images are compared smaller
    path, _, _ = custom(image, *controls)
    assert assert_synthetic(path, "enhance")["operations"] == ["resize", "enhance"]

    real_src = tmp_path / "real.png"
    real().convert("RGB").save(real_src)
    gallery, *_ = compare(ui.open_xray(real_src), *controls)
    assert all(read_provenance(p) is None for p, _ in gallery)


def test_app_upload_conversion_keeps_the_record(tmp_path, app_modules):
    _, ui = app_modules
    src = tmp_path / "synthetic.png"
    synthetic().convert("RGBA").save(src)
    image = ui.open_xray(src)
    record = read_provenance(image)
    assert record["operation"] == "convert_to_grayscale" and record["derived_from"]["seed"] == 7
    assert ui.NOTE_KEY in image.info
