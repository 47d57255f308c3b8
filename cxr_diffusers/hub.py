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

from .errors import CXRInputError, ModelLoadingError

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


def looks_like_hub_id(path: str) -> bool:
    """Whether `path` could be a Hub repo id (`name` or `owner/name`) rather than only a local path."""
    import re

    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) is not None and not path.startswith(".")


def check_model_location(path: str | os.PathLike, what: str = "model") -> str:
    """`path` as a string if it is an existing folder or could be a Hub id; else a one-sentence error."""
    text = os.fspath(path)
    if os.path.isdir(text) or looks_like_hub_id(text):
        return text
    if os.path.exists(text):
        raise ModelLoadingError(f"The {what} {text!r} is a file; give its folder.")
    raise ModelLoadingError(f"The {what} folder {text!r} does not exist (relative to {os.getcwd()}).")


#: Weight files that need unpickling, which can run arbitrary code: never loaded.
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_unsafe_weights(folder: str | os.PathLike) -> None:
    """One-sentence error when a model folder has pickled weights and no safetensors beside them."""
    root = Path(folder)
    for part in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        files = [p for p in part.iterdir() if p.is_file()]
        unsafe = [p.name for p in files if p.suffix in UNSAFE_WEIGHT_SUFFIXES]
        if unsafe and not any(p.suffix == ".safetensors" for p in files):
            raise ModelLoadingError(
                f"{part} holds pickled weights ({unsafe[0]}) and no .safetensors; cxr-diffusers loads safetensors only "
                "(convert them with safetensors.torch.save_file)."
            )


def load_failure(path: str | os.PathLike, error: BaseException, what: str = "model") -> ModelLoadingError:
    """The one-sentence error for a failed `from_pretrained(path)`: a missing folder taken for a Hub id (offline
    or not found there) is said to be missing, rather than reported as the Hub cache's internal error."""
    from huggingface_hub import is_offline_mode

    text = os.fspath(path)
    first_line = str(error).strip().split("\n")[0] or type(error).__name__
    if not os.path.isdir(text):
        missing = f"No {what} folder {text!r} exists (relative to {os.getcwd()})"
        if is_offline_mode():
            return ModelLoadingError(f"{missing}, and as a Hub id it is not in the local Hub cache while the Hub cannot "
                                     "be reached (HF_HUB_OFFLINE=1); give the folder's full path.")
        return ModelLoadingError(f"{missing}, and the Hub could not provide it either ({first_line}).")
    return ModelLoadingError(f"Could not load the {what} from {text!r}: {first_line}")


def load_pretrained(cls, path: str | os.PathLike, what: str = "model", **kwargs):
    """`cls.from_pretrained(path)` from safetensors only, with one-sentence errors (see `load_failure`)."""
    location = check_model_location(path, what)
    if os.path.isdir(location):
        refuse_unsafe_weights(location)
    try:
        return cls.from_pretrained(location, use_safetensors=True, **kwargs)
    except CXRInputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise load_failure(location, err, what) from err


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
