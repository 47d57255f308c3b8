"""The app's shared state: configuration, the pipeline (loaded once, shared by every tab and user), the classifier
(loaded once on first use), the data sources, the run folders of the metrics dashboard and the output folder.

Concurrency: gradio runs event handlers in worker threads. The pipeline's weights are shared read-only; every
generation runs on a light per-request view of the pipeline with its own scheduler (schedulers keep per-call state),
so concurrent calls are safe when `--concurrency` allows several (useful on a GPU). On a CPU the queue runs one
generation at a time (`concurrency_id="pipeline"` in the tabs): torch already uses every core for one.

Fast mode: where the model's fast folder exists (`<model>-lcm`, e.g. pretrained/cxr-ldm-small-lcm, or `CXR_FAST_MODEL`),
the generator offers a distilled few-step UNet with its LCMScheduler and, if the folder has `vae_tiny/`, the tiny
decoder; they load on first use and share the base pipeline's text encoder.

Resolution: where the pipeline has a super-resolution stage (`super_resolution/`), 512 and 768 px are its native 256 px
images upscaled 2x / 3x; other sizes above the native one (and every one without the stage) are sampled directly, where
the UNet tiles its layout. `resolution_route` names the route; the generator says which one each request took.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent


def find_path(relative: str) -> Path:
    """`relative` under the repository root, the app folder (Space layout) or the working directory, first found."""
    for base in (REPO_ROOT, APP_DIR, Path.cwd()):
        candidate = base / relative
        if candidate.exists():
            return candidate
    return REPO_ROOT / relative


def _split_env(name: str) -> list[str]:
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p]


@dataclass
class AppConfig:
    """Everything the command line (or the environment) decides."""

    model: str = field(
        default_factory=lambda: os.environ.get("CXR_MODEL") or str(find_path("pretrained/cxr-ldm-small"))
    )
    classifier: str = field(
        default_factory=lambda: os.environ.get("CXR_CLASSIFIER") or str(find_path("pretrained/pneumonia-classifier"))
    )
    data_dirs: list[str] = field(default_factory=lambda: _split_env("CXR_DATA_DIRS") or [str(find_path("data"))])
    shared_data: str = field(
        default_factory=lambda: os.environ.get("CXR_SHARED_DATA") or str(REPO_ROOT.parent / "shared" / "data")
    )
    runs_dirs: list[str] = field(
        default_factory=lambda: _split_env("CXR_RUNS_DIRS")
        or [str(REPO_ROOT / d) for d in ("runs", "outputs", "benchmarks/results", "pretrained")]
    )
    # The fast folder (distilled UNet + LCMScheduler + optional vae_tiny/); None: `<model>-lcm` where it exists.
    fast_model: str | None = field(default_factory=lambda: os.environ.get("CXR_FAST_MODEL") or None)
    device: str = "auto"
    max_images: int = 4
    max_steps: int = 100
    queue_size: int = 16
    concurrency: int = 1
    max_file_size: str = "20mb"
    research_train_images: int = 256


@dataclass
class Source:
    """A dataset the explorer and the research tab can open."""

    id: str
    label: str
    kind: str  # "saved" or "shared"
    path: str
    loader: Callable[[], Any]


# Shared-data folders (see ../shared/data/README.md) and how to load each; only those present are offered.
def _shared_loaders(root: Path) -> list[tuple[str, str, Path, Callable[[], Any]]]:
    def kermany():
        from cxr_diffusers.data import load_pneumonia

        return load_pneumonia(root / "kermany_pneumonia_224", check_images="none")

    def nih_subset():
        from cxr_diffusers.data import load_nih_subset

        return load_nih_subset(root / "nih_subset_300", check_images="none")

    def covid():
        from cxr_diffusers.data import load_covid_notes

        return load_covid_notes(root / "covid_ieee8023_notes", check_images="none")

    def nih1000():
        import warnings

        from cxr_diffusers.data import load_nih

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_nih(root / "nih1000_64", labels_dir=root / "nih_cxr14_labels", check_images="none")

    return [
        ("shared:kermany", "Kermany pediatric pneumonia (shared data)", root / "kermany_pneumonia_224", kermany),
        ("shared:nih_subset", "NIH + COVID-19 subset, 300 px (shared data)", root / "nih_subset_300", nih_subset),
        ("shared:covid", "COVID-19 collection with clinical notes (shared data)", root / "covid_ieee8023_notes", covid),
        ("shared:nih1000", "NIH ChestX-ray14, 1000 images at 64 px (shared data)", root / "nih1000_64", nih1000),
    ]


class AppState:
    """Created once per app; every tab holds the same instance."""

    def __init__(self, config: AppConfig | None = None):
        self.config = config or AppConfig()
        self.pipe = None
        self.pipe_error: str | None = None
        self.pipe_load_seconds: float | None = None
        self.default_scheduler = "dpm++"
        self._fast = None  # (unet, scheduler config, tiny decoder or None), loaded on first use
        self._fast_lock = threading.Lock()
        self._classifier = None
        self._classifier_lock = threading.Lock()
        self._datasets: OrderedDict[str, Any] = OrderedDict()
        self._frames: dict[tuple[str, str], Any] = {}
        self._data_lock = threading.RLock()
        self._train_cache: dict[tuple[str, int], Any] = {}
        self._stats_lock = threading.Lock()
        self.active_generations = 0
        self.max_active_generations = 0
        self.generations = 0
        self.output_root = Path(tempfile.gettempdir()) / "cxr_app_outputs"
        self.output_root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------------ pipeline
    def load_pipeline(self) -> None:
        """Load the pipeline once (at start). A missing model is reported in the UI, not fatal."""
        start = time.perf_counter()
        try:
            import torch

            from cxr_diffusers import CXRPipeline
            from cxr_diffusers.schedulers import SCHEDULERS

            pipe = CXRPipeline.from_pretrained(self.config.model)
            device = self.config.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            for module in (pipe.vae, pipe.unet, pipe.text_encoder, pipe.super_resolution):
                if module is not None:
                    module.eval()
            self.pipe = pipe
            self.pipe_error = None
            for name, cls in SCHEDULERS.items():
                if type(pipe.scheduler) is cls:
                    self.default_scheduler = name
                    break
        except Exception as err:  # missing folder, corrupt weights, ...: the app starts and says so
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.pipe = None
            self.pipe_error = (
                f"No model could be loaded from {self.config.model!r} ({first.rstrip('.')}); start the app with "
                "--model PATH_OR_HUB_ID or set CXR_MODEL."
            )
        self.pipe_load_seconds = time.perf_counter() - start

    def require_pipeline(self):
        if self.pipe is None:
            raise gr.Error(self.pipe_error or "The model is not loaded.")
        return self.pipe

    @property
    def size_choices(self) -> list[int]:
        """256 / 512 / 768, the model's own size and the sizes of its super-resolution stage, those it can make."""
        if self.pipe is None:
            return [256, 512, 768]
        multiple = self.pipe.size_multiple
        staged = set(self.pipe.super_resolution_sizes)
        sizes = {256, 512, 768, int(self.pipe.default_size)} | staged
        return sorted(s for s in sizes if s % multiple == 0 or s in staged)

    def resolution_route(self, size: int) -> tuple[bool | None, str]:
        """`(super_resolution argument, sentence)` for a `size` x `size` request: the stage where it makes that size,
        else the direct canvas (False where the pipeline has a stage that cannot make it; None without one)."""
        pipe = self.require_pipeline()
        native = int(pipe.default_size)
        if size in pipe.super_resolution_sizes:
            return True, (f"{size} px through the super-resolution stage: {native} px sampled, upscaled "
                          f"{size // native}x.")
        if size <= native:
            return None, f"{size} px sampled directly (the model's native size is {native} px)."
        if pipe.super_resolution is not None:
            return False, (f"{size} px sampled directly: the super-resolution stage makes "
                           f"{' and '.join(map(str, pipe.super_resolution_sizes))} px only, and the UNet tiles its "
                           f"{native} px layout on a larger canvas.")
        return None, (f"{size} px sampled directly: this model has no super-resolution stage, so the UNet tiles its "
                      f"{native} px layout (several small lung fields).")

    @property
    def default_size(self) -> int:
        return int(self.pipe.default_size) if self.pipe is not None else 256

    # ------------------------------------------------------------------------------------------------ fast mode
    @property
    def fast_folder(self) -> str | None:
        """The fast folder of the model (`fast_model`, or the sibling `<model>-lcm`) when it holds a distilled UNet."""
        from cxr_diffusers.fast import default_fast_folder, has_distilled_unet

        folder = self.config.fast_model or (default_fast_folder(self.config.model)
                                            if os.path.isdir(self.config.model) else None)
        return folder if has_distilled_unet(folder) else None

    @property
    def fast_available(self) -> bool:
        return self.pipe is not None and self.fast_folder is not None

    def fast_parts(self):
        """`(unet, scheduler config, tiny decoder or None)` of the fast folder, loaded once on the pipeline's device."""
        with self._fast_lock:
            if self._fast is not None:
                return self._fast
            pipe = self.require_pipeline()
            folder = self.fast_folder
            if folder is None:
                raise gr.Error("Fast mode needs a distilled model beside the model (a '-lcm' folder with unet/ and "
                               "scheduler/); none was found.")
            from cxr_diffusers import CXRInputError
            from cxr_diffusers.fast import (
                TINY_DECODER_FOLDER,
                has_tiny_decoder,
                load_distilled_unet,
                load_tiny_decoder,
            )

            try:
                unet, scheduler = load_distilled_unet(folder)
                tiny_folder = os.path.join(folder, TINY_DECODER_FOLDER)
                tiny = load_tiny_decoder(tiny_folder) if has_tiny_decoder(tiny_folder) else None
                pipe._check_vae(tiny if tiny is not None else pipe.vae, unet)
            except CXRInputError as err:
                raise gr.Error(f"The fast model at {folder!r} could not be loaded: {err}") from None
            unet.to(pipe.device, pipe.unet.dtype)
            if tiny is not None:
                tiny.to(pipe.device)
            self._fast = (unet, scheduler.config, tiny)
            return self._fast

    @contextlib.contextmanager
    def _track(self):
        with self._stats_lock:
            self.active_generations += 1
            self.max_active_generations = max(self.max_active_generations, self.active_generations)
        try:
            yield
        finally:
            with self._stats_lock:
                self.active_generations -= 1
                self.generations += 1

    def generate(self, prompt: str, *, negative_prompt: str | None, size: int, steps: int, guidance: float,
                 scheduler: str, seeds: list[int], enhancement: Any = None,
                 on_step: Callable[[int, int], None] | None = None, fast: bool = False):
        """Images (PIL, mode L, with provenance) for `prompt`, one per seed, and the seconds it took. `fast`: the
        distilled UNet with its LCMScheduler (`scheduler` is not used) and the tiny decoder where there is one. The
        super-resolution stage makes `size` where it can (`resolution_route`)."""
        import torch

        from cxr_diffusers import CXRInputError, CXRPipeline
        from cxr_diffusers.schedulers import scheduler_from_name

        pipe = self.require_pipeline()
        super_resolution, _ = self.resolution_route(size)
        fast_parts = self.fast_parts() if fast else None
        try:
            components = dict(pipe.components)
            if fast_parts is not None:
                from diffusers import LCMScheduler

                unet, scheduler_config, tiny = fast_parts
                components["unet"] = unet
                components["scheduler"] = LCMScheduler.from_config(scheduler_config)
                if tiny is not None:
                    components["vae"] = tiny
            else:
                components["scheduler"] = scheduler_from_name(scheduler, pipe.scheduler.config)
            view = CXRPipeline(**components)  # shares the weights; own scheduler state
            view.register_to_config(_name_or_path=self.config.model)
            view.set_progress_bar_config(disable=True)
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

            def callback(_pipe, step, _t, _kwargs):
                if on_step is not None:
                    on_step(step + 1, steps)
                return {}

            with self._track():
                start = time.perf_counter()
                images = view(
                    prompt, negative_prompt=negative_prompt or None, height=size, width=size,
                    num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=len(seeds),
                    generator=generators, output_type="pil", callback_on_step_end=callback, enhancement=enhancement,
                    super_resolution=super_resolution,
                ).images
                seconds = time.perf_counter() - start
        except CXRInputError as err:
            raise gr.Error(str(err)) from None
        return images, seconds

    # ------------------------------------------------------------------------------------------------ classifier
    def get_classifier(self):
        """`(model, processor)` of the pneumonia classifier, loaded once; `gr.Error` when it is not available."""
        with self._classifier_lock:
            if self._classifier is not None:
                return self._classifier
            path = self.config.classifier
            if not path or (not Path(path).exists() and ("/" not in path or path.startswith((".", "/")))):
                raise gr.Error(
                    f"No pneumonia classifier at {path!r} yet; train one with train_scripts/train_classifier.py "
                    "or start the app with --classifier PATH."
                )
            try:
                from cxr_diffusers.classification.model import load_classifier
            except ImportError as err:
                raise gr.Error(f"The classification module is not available in this version ({err}).") from None
            try:
                self._classifier = load_classifier(path)
            except Exception as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise gr.Error(f"The classifier at {path!r} could not be loaded: {first}") from None
            return self._classifier

    def classifier_available(self) -> bool:
        path = self.config.classifier
        return bool(path) and (Path(path) / "config.json").is_file()

    # ------------------------------------------------------------------------------------------------ data
    def sources(self) -> dict[str, Source]:
        """Saved datasets (folders with dataset_dict.json under the data folders) and the shared-data sources."""
        found: dict[str, Source] = {}
        for folder in self.config.data_dirs:
            root = Path(folder)
            if not root.is_dir():
                continue
            candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
            candidates += sorted(q for p in candidates[1:] for q in p.iterdir() if q.is_dir())
            for path in candidates:
                if (path / "dataset_dict.json").is_file():
                    sid = f"saved:{path.resolve()}"

                    def loader(path=path):
                        from cxr_diffusers.data import load_saved

                        return load_saved(path)

                    found[sid] = Source(sid, f"{path.name} (saved dataset)", "saved", str(path), loader)
        shared = Path(self.config.shared_data) if self.config.shared_data else None
        if shared is not None and shared.is_dir():
            for sid, label, path, loader in _shared_loaders(shared):
                if path.exists():
                    found[sid] = Source(sid, label, "shared", str(path), loader)
        return found

    def source(self, source_id: str) -> Source:
        sources = self.sources()
        if not source_id:
            raise gr.Error("Choose a dataset first.")
        if source_id not in sources:
            raise gr.Error(f"Unknown dataset {source_id!r}; press Refresh and choose one from the list.")
        return sources[source_id]

    def dataset(self, source_id: str):
        """The `DatasetDict` of a source, loaded once (the 4 most recent are kept)."""
        with self._data_lock:
            if source_id in self._datasets:
                self._datasets.move_to_end(source_id)
                return self._datasets[source_id]
            src = self.source(source_id)
            try:
                dsd = src.loader()
            except gr.Error:
                raise
            except Exception as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise gr.Error(f"Could not load {src.label}: {first}") from None
            self._datasets[source_id] = dsd
            while len(self._datasets) > 4:
                old, _ = self._datasets.popitem(last=False)
                for key in [k for k in self._frames if k[0] == old]:
                    del self._frames[key]
            return dsd

    def split(self, source_id: str, split: str):
        dsd = self.dataset(source_id)
        if split not in dsd:
            raise gr.Error(f"The dataset has no split {split!r}; choose one of {', '.join(dsd)}.")
        return dsd[split]

    def frame(self, source_id: str, split: str):
        """The split's metadata (every column but the image) as a pandas DataFrame, cached."""
        with self._data_lock:
            key = (source_id, split)
            if key not in self._frames:
                ds = self.split(source_id, split)
                columns = [c for c in ds.column_names if c != "image"]
                frame = ds.select_columns(columns).to_pandas()
                for name in ("labels",):
                    if name in frame:
                        frame[name] = frame[name].apply(lambda v: [str(x) for x in v] if v is not None else [])
                self._frames[key] = frame
            return self._frames[key]

    def training_images(self, source_id: str, limit: int):
        """Up to `limit` images of the source's train split (evenly spaced), decoded once, with their row indices."""
        with self._data_lock:
            key = (source_id, int(limit))
            if key not in self._train_cache:
                dsd = self.dataset(source_id)
                split = "train" if "train" in dsd else next(iter(dsd))
                ds = dsd[split]
                n = len(ds)
                if n == 0:
                    raise gr.Error(f"The {split} split of this dataset is empty.")
                step = max(1, n // max(1, int(limit)))
                indices = list(range(0, n, step))[: int(limit)]
                images = [ds[i]["image"].convert("L") for i in indices]
                self._train_cache = {key: (split, indices, images)}  # keep one set in memory
            return self._train_cache[key]

    # ------------------------------------------------------------------------------------------------ outputs
    def new_output_dir(self) -> Path:
        """A fresh folder for one request's files; folders older than an hour are removed."""
        now = time.time()
        for old in self.output_root.iterdir():
            try:
                if now - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(prefix="gen-", dir=self.output_root))

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "generations": self.generations,
                "active": self.active_generations,
                "max_active": self.max_active_generations,
            }
