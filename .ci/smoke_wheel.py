"""Smoke test of an installed cxr-diffusers wheel, run by .ci/smoke_wheel.sh from a folder outside the checkout.

Fails (non-zero, with a traceback) if the installed package misses anything it reads at run time.
"""

import os
import sys
from pathlib import Path

import torch

import cxr_diffusers
from cxr_diffusers import CXRPipeline, create_components, read_provenance
from cxr_diffusers.evaluation.runner import find_classifier
from cxr_diffusers.hub import list_templates, save_model_card
from cxr_diffusers.remote_code import ENTRY_POINT, write_remote_code

PACKAGE_DIR = Path(cxr_diffusers.__file__).resolve().parent
assert PACKAGE_DIR.is_relative_to(Path(sys.prefix).resolve()), f"not the installed wheel: {PACKAGE_DIR}"
assert not Path("setup.cfg").exists(), "run me outside the checkout"
out = Path("smoke-output").resolve()  # inside the throwaway folder of smoke_wheel.sh

# 1. every model-card template is package data
templates = list_templates()
expected = sorted(os.environ["CXR_EXPECTED_TEMPLATES"].split(","))
assert templates == expected and "pipeline" in templates, (templates, expected)
for name in (t for t in templates if t != "synthetic_dataset"):  # that one is a dataset card (synthesis.card)
    card = save_model_card(out / name, name, {"license": "apache-2.0", "library_name": "diffusers"},
                           model_name=f"smoke-{name}", repo_id=f"me/smoke-{name}")
    text = card.read_text()
    assert text.startswith("---\n") and f"smoke-{name}" in text, name

# 2. run-time lookups of repository folders do not fail outside the checkout
find_classifier()

# 3. the tiny pipeline generates, saves, loads back and exports its remote code from the installed sources
torch.manual_seed(0)
pipe = CXRPipeline(**create_components("tiny"))
image = pipe("PA chest radiograph of an adult.", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
assert image.size == (64, 64) and image.mode == "L", (image.size, image.mode)
image.save(out / "smoke.png")
assert read_provenance(out / "smoke.png")["synthetic"] is True
pipe.save_pretrained(out / "tiny")
assert type(CXRPipeline.from_pretrained(out / "tiny").unet).__module__ == "cxr_diffusers.models.unet_cxr"
written = write_remote_code(out / "tiny")
assert (out / "tiny" / ENTRY_POINT) in written and (out / "tiny" / "pipelines" / "pipeline_cxr.py").is_file()

# 4. a synthetic dataset with its card, from the installed command (the dataset-card template is package data)
import json  # noqa: E402

from cxr_diffusers.cli import main  # noqa: E402

(out / "spec.json").write_text(json.dumps({"findings": {"normal": 1, "pneumonia": 1}}))
assert main(["synthesize", str(out / "tiny"), "--spec", str(out / "spec.json"), "-o", str(out / "synthetic"),
             "--steps", "2", "--batch-size", "2"]) == 0
card = (out / "synthetic" / "README.md").read_text()
assert "NOT FOR CLINICAL USE" in card and len((out / "synthetic" / "metadata.jsonl").read_text().splitlines()) == 2

print(f"wheel smoke test passed: cxr-diffusers {cxr_diffusers.__version__} from {PACKAGE_DIR} "
      f"({len(templates)} card templates, a 64 px image, {len(written)} remote-code files)")
