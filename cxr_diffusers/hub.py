"""Model cards and Hub upload helpers.

Cards are Jinja templates (`model_cards/*.md` in the repository, or any path) rendered with
`huggingface_hub.ModelCard.from_template`; the YAML front matter comes from `ModelCardData`. Pushing is one call,
`push_folder(folder, repo_id)`, which needs network access and a token (`huggingface-cli login`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .errors import CXRInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = REPO_ROOT / "model_cards"

DATA_CITATIONS = {
    "kermany": "Kermany D. et al. Identifying medical diagnoses and treatable diseases by image-based deep learning. "
    "Cell 172(5), 2018. Data: doi:10.17632/rscbjbr9sj.2 (CC BY 4.0).",
    "nih": "Wang X. et al. ChestX-ray8: Hospital-scale chest X-ray database and benchmarks. CVPR 2017 "
    "(NIH Clinical Center).",
    "covid": "Cohen J.P. et al. COVID-19 image data collection. arXiv:2006.11988, 2020 (per-image licenses).",
    "indiana": "Demner-Fushman D. et al. Preparing a collection of radiology examinations for distribution and "
    "retrieval. JAMIA 23(2), 2016.",
}


def render_model_card(template: str | os.PathLike, card_data: dict[str, Any] | None = None, **fields: Any) -> ModelCard:
    """Render a Jinja model-card template (a path, or a name in `model_cards/`) with `fields`."""
    path = Path(template)
    if not path.is_file():
        path = TEMPLATES_DIR / f"{template}.md"
    if not path.is_file():
        raise CXRInputError(f"Model card template {template!r} not found (looked in {TEMPLATES_DIR}).")
    data = ModelCardData(**(card_data or {}))
    return ModelCard.from_template(data, template_path=str(path), **fields)


def save_model_card(folder: str | os.PathLike, template: str, card_data: dict[str, Any] | None = None, **fields) -> Path:
    """Render a card and write it as `README.md` in `folder`."""
    card = render_model_card(template, card_data, **fields)
    out = Path(folder) / "README.md"
    card.save(out)
    return out


def push_folder(folder: str | os.PathLike, repo_id: str, commit_message: str = "Upload cxr-diffusers model",
                private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` (weights, configs, README.md). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                             ignore_patterns=["checkpoint-*", "*.pt", "*.bin", "logs/*"])
    return str(info)
