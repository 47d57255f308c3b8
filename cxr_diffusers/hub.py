"""Model cards and Hub upload helpers.

Cards are Jinja templates (`cxr_diffusers/model_cards/*.md`, shipped as package data, or any path) rendered with
`huggingface_hub.ModelCard.from_template`; the YAML front matter comes from `ModelCardData`. Pushing is one call,
`push_folder(folder, repo_id)`, which needs network access and a token (`hf auth login`); training scripts call
`create_hub_repo(args)` first, so that a bad token or no network fails before training.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .data.citations import TEXT as CITATION_TEXT
from .errors import CXRInputError, ModelLoadingError

#: The card templates, package data of `cxr_diffusers` (declared in setup.cfg `[options.package_data]`).
TEMPLATES_DIR = importlib.resources.files("cxr_diffusers") / "model_cards"

DATA_CITATIONS = CITATION_TEXT  # one home: cxr_diffusers.data.citations


def looks_like_hub_id(path: str) -> bool:
    """Whether `path` could be a Hub repo id (`name` or `owner/name`) rather than only a local path."""
    import re

    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) is not None and not path.startswith(".")


def check_model_location(path: str | os.PathLike, what: str = "model") -> str:
    """`path` as a string if it is an existing folder or could be a Hub id; else a one-sentence error."""
    if not isinstance(path, (str, os.PathLike)):
        raise ModelLoadingError(f"The {what} location must be a folder path or a Hub id, got {type(path).__name__}.")
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


def load_failure(path: str | os.PathLike, error: BaseException, what: str = "model",
                 cache_dir: str | os.PathLike | None = None) -> ModelLoadingError:
    """The one-sentence error for a failed `from_pretrained(path)`: a missing folder taken for a Hub id (offline
    or not found there) is said to be missing, rather than reported as the Hub cache's internal error; a Hub id that
    is in the Hub cache (`cache_dir`, default `HF_HUB_CACHE`) but does not load is reported with its error."""
    from huggingface_hub import is_offline_mode, try_to_load_from_cache

    text = os.fspath(path)
    first_line = str(error).strip().split("\n")[0] or type(error).__name__
    if not os.path.isdir(text) and not looks_like_hub_id(text):
        return ModelLoadingError(f"The {what} folder {text!r} does not exist.")
    if not os.path.isdir(text):
        try:
            cached = isinstance(try_to_load_from_cache(text, "model_index.json", cache_dir=cache_dir), str)
        except ValueError:  # not a valid repo id after all
            cached = False
        if cached:
            return ModelLoadingError(f"Could not load the {what} {text!r} from the Hub cache: {first_line}")
        missing = f"No {what} folder {text!r} exists (relative to {os.getcwd()})"
        if is_offline_mode():
            return ModelLoadingError(f"{missing}, and as a Hub id it is not in the local Hub cache while the Hub cannot "
                                     "be reached (HF_HUB_OFFLINE=1); give the folder's full path.")
        return ModelLoadingError(f"{missing}, and the Hub could not provide it either ({first_line}).")
    return ModelLoadingError(f"Could not load the {what} from {text!r}: {first_line}")


def download_snapshot(repo_id: str, cache_dir: str | os.PathLike | None = None, revision: str | None = None,
                      token: str | bool | None = None, force_download: bool = False,
                      local_files_only: bool | None = None) -> str:
    """
    The local folder of the Hub repo `repo_id` at `revision` (`huggingface_hub.snapshot_download`, from the Hub cache
    when `HF_HUB_OFFLINE=1` or `local_files_only`): every file but pickled weights (`UNSAFE_WEIGHT_SUFFIXES`), which
    cxr-diffusers never loads. `CXRPipeline.from_pretrained("owner/name")` downloads with it.
    """
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, cache_dir=cache_dir, revision=revision, token=token,
                             force_download=force_download, local_files_only=bool(local_files_only),
                             ignore_patterns=[f"*{suffix}" for suffix in UNSAFE_WEIGHT_SUFFIXES])


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
    """Render a Jinja model-card template (a path, or a name in `TEMPLATES_DIR`, see `list_templates`) with `fields`."""
    path = Path(template)
    resource = path if path.is_file() else TEMPLATES_DIR / f"{template}.md"
    if not resource.is_file():
        raise CXRInputError(f"Model card template {template!r} not found (looked in {TEMPLATES_DIR}; there are "
                            f"{', '.join(list_templates()) or 'none'}).")
    data = ModelCardData(**(card_data or {}))
    with importlib.resources.as_file(resource) as template_path:
        return ModelCard.from_template(data, template_path=str(template_path), **fields)


def list_templates() -> list[str]:
    """Names of the bundled model-card templates (`pipeline`, `vae`, `ddpm`, `classifier`, `lcm`, `synthetic_dataset`)."""
    if not TEMPLATES_DIR.is_dir():  # an install without its package data
        return []
    return sorted(entry.name[: -len(".md")] for entry in TEMPLATES_DIR.iterdir() if entry.name.endswith(".md"))


def save_model_card(folder: str | os.PathLike, template: str, card_data: dict[str, Any] | None = None, **fields) -> Path:
    """Render a card and write it as `README.md` in `folder`."""
    card = render_model_card(template, card_data, **fields)
    out = Path(folder) / "README.md"
    card.save(out)
    return out


def create_hub_repo(args: Any, private: bool = False) -> str | None:
    """
    Create (or find) the Hub repo of a training run before it trains, as diffusers' examples do, so that a bad token
    or no network fails in one sentence instead of after the training. Uses `args.push_to_hub`, `args.hub_model_id`
    (default: the name of `args.output_dir`) and `args.hub_token` (default: the saved login).

    Returns the full repo id (`owner/name`), or None when `--push_to_hub` is off or on processes other than the main
    one. Raises `CXRInputError` when the Hub cannot be reached or refuses the token.
    """
    if not getattr(args, "push_to_hub", False):
        return None
    from accelerate import PartialState
    from huggingface_hub import create_repo, is_offline_mode
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    if not PartialState().is_main_process:
        return None
    name = getattr(args, "hub_model_id", None) or Path(args.output_dir).name
    if is_offline_mode():
        raise CXRInputError(f"--push_to_hub cannot create the Hub repo {name!r} while HF_HUB_OFFLINE=1 is set; unset it "
                            "or drop --push_to_hub.")
    try:
        return create_repo(repo_id=name, exist_ok=True, private=private, token=getattr(args, "hub_token", None)).repo_id
    except HFValidationError as error:
        raise CXRInputError(f"--hub_model_id {name!r} is not a valid Hub repo id (use 'name' or 'owner/name').") from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            raise CXRInputError(f"--push_to_hub: the Hub refused the token for {name!r} (HTTP {status}); pass a write "
                                "token with --hub_token or run `hf auth login`.") from error
        first_line = str(error).strip().split("\n")[0]
        raise CXRInputError(f"--push_to_hub could not create the Hub repo {name!r}: {first_line}") from error
    except Exception as error:  # no network: httpx / OS errors, whose classes depend on the huggingface_hub version
        first_line = str(error).strip().split("\n")[0] or type(error).__name__
        raise CXRInputError(f"--push_to_hub cannot reach the Hub to create {name!r} ({first_line}); check the "
                            "network or drop --push_to_hub.") from error


def push_folder(folder: str | os.PathLike, repo_id: str, commit_message: str = "Upload cxr-diffusers model",
                private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` (weights, configs, README.md). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message,
                             ignore_patterns=["checkpoint-*", "*.pt", "*.bin", "logs/*"])
    return str(info)
