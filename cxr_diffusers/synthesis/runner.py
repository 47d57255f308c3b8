"""The engine of `cxr-diffusers synthesize`: N images of a spec, split over processes, resumable, filtered.

    from cxr_diffusers.synthesis import QualityFilter, SamplingConfig, load_spec, synthesize
    summary = synthesize("pretrained/cxr-ldm-small", load_spec("balanced.yaml"), "outputs/synthetic",
                         num_images=1000, sampling=SamplingConfig(steps=25, guidance=4.0))

Work split: the image indices form fixed batches of `batch_size` consecutive indices (batch g holds indices
g*B .. g*B+B-1); the batches that are not complete are dealt round-robin to the processes of the Accelerate
`PartialState` (one per GPU, or per CPU core with `accelerate launch --multi_gpu --num_processes P` on a machine
without GPUs). Image i is sampled from `image_seed(seed, i, attempt)` on a CPU `torch.Generator`, in its batch, so
a run gives the same images at any process count and on restart. A batch that a killed run left half-written is
sampled again as a whole and only its missing images are written.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import CXRInputError, ModelLoadingError
from .filter import QualityFilter, folder_digest
from .spec import PlanItem, SynthesisSpec, expand_plan, image_seed, plan_digest
from .writer import (
    CARD_FILE,
    METADATA_FILE,
    ProgressCounter,
    ProgressLog,
    append_run_log,
    check_output_folder,
    image_path,
    read_runs,
    remove_partials,
    save_png,
    scan_completed,
    write_metadata,
    write_run,
)

__all__ = ["STOP_AFTER_ENV", "SamplingConfig", "SimulatedInterruption", "model_identity", "synthesize"]

#: Test hook: a process stops with `SimulatedInterruption` after writing this many images (a deterministic "kill").
STOP_AFTER_ENV = "CXR_DIFFUSERS_SYNTHESIZE_STOP_AFTER"
MAX_BATCH_SIZE = 64


class SimulatedInterruption(RuntimeError):
    """Raised by the `CXR_DIFFUSERS_SYNTHESIZE_STOP_AFTER` test hook, as if the process had been killed."""


@dataclass(frozen=True)
class SamplingConfig:
    """How every image is sampled (part of the run's fingerprint)."""

    steps: int = 25
    guidance: float = 4.0
    scheduler: str | None = None  # None: the model's own scheduler
    height: int | None = None  # None: the model's size
    width: int | None = None
    negative_prompt: str | None = None
    enhancement: str | None = None

    def identity(self) -> dict[str, Any]:
        return asdict(self)


def model_identity(model: str, revision: str | None = None) -> tuple[str, dict[str, Any]]:
    """`(local folder, {"id", "revision"})` of a model folder or Hub id, without loading it.

    A Hub id is resolved to its snapshot in the Hub cache (downloaded when online) and its revision is the commit;
    a local folder's revision is a sha256 of its configs and weights (`folder_digest`).
    """
    from ..hub import check_model_location

    location = check_model_location(model, "model")
    if os.path.isdir(location):
        if not os.path.isfile(os.path.join(location, "model_index.json")):
            raise ModelLoadingError(f"{location!r} is a folder but has no model_index.json: it is not a saved "
                                    "CXRPipeline.")
        if revision is not None:
            raise CXRInputError(f"--revision applies to Hub ids; {location} is a local folder.")
        return location, {"id": str(model), "revision": folder_digest(location)}
    from ..pipelines import CXRPipeline

    try:
        local = CXRPipeline.download(location, revision=revision)
    except Exception as err:
        from ..hub import load_failure

        raise load_failure(location, err, "CXRPipeline") from err
    return local, {"id": str(model), "revision": Path(local).name}


def _model_license(folder: str) -> dict[str, Any]:
    """The license fields of a model's card (README.md front matter), for the dataset card to inherit."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {"license": "unknown"}
    try:
        from huggingface_hub.repocard import metadata_load

        meta = metadata_load(readme) or {}
    except Exception:  # a card without valid YAML front matter
        return {"license": "unknown"}
    out = {k: meta[k] for k in ("license", "license_name", "license_link") if meta.get(k)}
    out.setdefault("license", "unknown")
    return out


def _make_state(force_cpu: bool = False):
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    cpu = force_cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or (distributed and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


class _ProgressBar:
    """The one progress bar of a run, on the main process: it counts the rows all processes log, in a thread."""

    def __init__(self, root: Path, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        self._stop = threading.Event()
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.counter = ProgressCounter(root)
        self.base = self.counter.poll()
        self.initial = initial
        self.bar = tqdm(total=total, initial=initial, desc="synthesize", unit="img", dynamic_ncols=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _refresh(self) -> None:
        new = self.counter.poll() - self.base
        shown = self.bar.n - self.initial
        if new > shown:
            self.bar.update(new - shown)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self.thread.join()
        self._refresh()
        self.bar.close()


def _row(item: PlanItem, seed: int, attempts: int, rejected: list[tuple[int, list[str]]], result, sampling,
         pipe_scheduler: str, height: int, width: int, model: dict[str, Any], filtered: bool) -> dict[str, Any]:
    return {
        "file_name": image_path(item.index),
        "index": item.index,
        "prompt": item.prompt,
        "label": item.label,
        "labels": None if item.labels is None else list(item.labels),
        "age": item.age,
        "sex": item.sex,
        "view": item.view,
        "population": item.population,
        "seed": seed,
        "attempts": attempts,
        "rejected_seeds": [s for s, _ in rejected],
        "rejection_reasons": ["; ".join(r) for _, r in rejected],
        "filter_passed": bool(result.passed) if filtered else None,
        "classifier_score": result.classifier_score,
        "nearest_train_ssim": result.nearest_train_ssim,
        "steps": sampling.steps,
        "guidance": float(sampling.guidance),
        "scheduler": pipe_scheduler,
        "negative_prompt": sampling.negative_prompt,
        "enhancement": sampling.enhancement,
        "height": height,
        "width": width,
        "model": model["id"],
        "model_revision": model["revision"],
        "synthetic": True,
        "not_for_clinical_use": True,
    }


def _tag(image, item: PlanItem, row: dict[str, Any], fingerprint: str):
    """Add the dataset fields to the provenance record the pipeline attached (the PNG keeps both)."""
    from ..provenance import attach_provenance, make_record, read_provenance

    record = read_provenance(image) or make_record()
    record.update({"dataset_index": item.index, "dataset_run": fingerprint[:16], "attempt": row["attempts"],
                   "filter_passed": row["filter_passed"], "classifier_score": row["classifier_score"],
                   "nearest_train_ssim": row["nearest_train_ssim"]})
    return attach_provenance(image, record)


def synthesize(
    model: str,
    spec: SynthesisSpec,
    output_dir: str | os.PathLike,
    *,
    num_images: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    quality_filter: QualityFilter | None = None,
    revision: str | None = None,
    threads: int | None = None,
    force_cpu: bool = False,
    push_to_hub: str | None = None,
    hub_token: str | None = None,
    private: bool = False,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Make (or finish) the dataset of `spec` in `output_dir`; returns a summary (on every process).

    Runs in every process of an `accelerate launch`; each makes its share, the main process shows the progress bar
    and writes metadata.jsonl and the card when all images exist. See the module docstring and `writer`.
    """
    from .spec import MAX_SEED

    sampling = sampling or SamplingConfig()
    quality_filter = quality_filter or QualityFilter()
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        raise CXRInputError(f"--batch-size must be in 1-{MAX_BATCH_SIZE}, got {batch_size}.")
    if not 0 <= int(seed) <= MAX_SEED:
        raise CXRInputError(f"--seed must be in [0, 2**63 - 1], got {seed}.")
    if threads is not None and threads < 1:
        raise CXRInputError(f"--threads must be at least 1, got {threads}.")
    n = spec.resolve_num_images(num_images)
    plan = expand_plan(spec, n, seed)
    quality_filter.check_inputs()
    root = Path(output_dir).expanduser()

    state = _make_state(force_cpu)
    is_main, rank, world = state.is_main_process, state.process_index, state.num_processes
    with state.main_process_first():  # a Hub download happens once
        local_model, model_info = model_identity(model, revision)
    # the model is identified by its revision (Hub commit or content hash), not by the path it was given as
    identity = {"spec": spec.public(), "num_images": n, "seed": int(seed), "plan_sha256": plan_digest(plan),
                "model": {"revision": model_info["revision"]}, "sampling": sampling.identity(),
                "filter": quality_filter.identity()}

    if push_to_hub and is_main:
        from .card import create_dataset_repo

        create_dataset_repo(push_to_hub, token=hub_token, private=private)  # fail now, not after the images
    state.wait_for_everyone()
    status = check_output_folder(root, identity)  # every process reads the same folder before anyone writes
    state.wait_for_everyone()
    if is_main and status == "new":
        root.mkdir(parents=True, exist_ok=True)
        write_run(root, identity, {"model_id": model_info["id"]})
    state.wait_for_everyone()
    from .writer import load_run

    run_record = load_run(root)
    fingerprint = run_record["fingerprint"]
    model_info = {"id": run_record.get("model_id", model_info["id"]), "revision": model_info["revision"]}
    done = scan_completed(root, n)
    summary: dict[str, Any] = {"output_dir": str(root), "num_images": n, "already_done": len(done), "made": 0,
                               "processes": world, "fingerprint": fingerprint}
    finished = len(done) == n and (root / METADATA_FILE).is_file() and (root / CARD_FILE).is_file()
    if finished:
        if is_main:
            log(f"{root}: all {n} images are already made; nothing to do. Synthetic images: not for clinical use.")
            if push_to_hub:  # a finished folder can be uploaded later: the same command with --push_to_hub
                from .card import push_dataset

                log(f"Pushed to {push_dataset(root, push_to_hub, token=hub_token, private=private)}")
        state.wait_for_everyone()
        return {**summary, "status": "complete"}

    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        made_before = len(done)
        seconds = 0.0
        rejected_now = 0
        if len(done) < n:
            pipe, scheduler_name, height, width = _load_pipeline(local_model, sampling, state.device)
            quality_filter.device = state.device
            quality_filter.load()
            groups = [g for g in range(math.ceil(n / batch_size))
                      if any(i not in done for i in range(g * batch_size, min(n, (g + 1) * batch_size)))]
            mine = groups[rank::world]
            stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
            state.wait_for_everyone()
            bar = _ProgressBar(root, n, len(done), enabled=is_main and progress)
            start = time.perf_counter()
            try:
                with ProgressLog(root, rank) as progress_log:
                    for g in mine:
                        indices = list(range(g * batch_size, min(n, (g + 1) * batch_size)))
                        rejected_now += _make_batch(
                            pipe, plan, indices, {i for i in indices if i not in done}, seed, sampling,
                            quality_filter, scheduler_name, height, width, model_info, fingerprint, root,
                            progress_log, stop_after)
                state.wait_for_everyone()
            finally:
                bar.close()
            seconds = time.perf_counter() - start
        done = scan_completed(root, n)
        summary.update(made=len(done) - made_before, seconds=round(seconds, 3),
                       images_per_s=round((len(done) - made_before) / seconds, 4) if seconds > 0 else None)
        if is_main:
            if len(done) != n:
                missing = sorted(set(range(n)) - set(done))
                raise CXRInputError(f"{len(missing)} image(s) are missing after the run (first index {missing[0]}); "
                                    "run the same command again to make them.")
            _finish(root, done, n, summary, run_record, local_model, world, state, threads, rejected_now,
                    quality_filter, push_to_hub, hub_token, private, log)
        state.wait_for_everyone()
    finally:
        torch.set_num_threads(previous_threads)
    return {**summary, "status": "complete"}


def _load_pipeline(local_model: str, sampling: SamplingConfig, device):
    from ..pipelines import CXRPipeline
    from ..schedulers import scheduler_from_name

    pipe = CXRPipeline.from_pretrained(local_model)
    if sampling.scheduler:
        pipe.scheduler = scheduler_from_name(sampling.scheduler, pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    height = sampling.height or pipe.default_size
    width = sampling.width or pipe.default_size
    return pipe, type(pipe.scheduler).__name__, int(height), int(width)


def _make_batch(pipe, plan, indices, missing, seed, sampling, quality_filter, scheduler_name, height, width,
                model_info, fingerprint, root, progress_log, stop_after) -> int:
    """Sample one batch (and the retries of its rejected images); write its missing images. Returns rejections."""
    import torch

    pending = list(indices)
    rejected: dict[int, list[tuple[int, list[str]]]] = {i: [] for i in indices}
    count = 0
    for attempt in range(quality_filter.max_attempts if quality_filter.enabled else 1):
        seeds = [image_seed(seed, i, attempt) for i in pending]
        images = pipe(
            [plan[i].prompt for i in pending],
            negative_prompt=sampling.negative_prompt,
            height=height,
            width=width,
            num_inference_steps=sampling.steps,
            guidance_scale=sampling.guidance,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            enhancement=sampling.enhancement,
        ).images
        results = quality_filter(images, [plan[i].labels for i in pending], [plan[i].prompt for i in pending])
        last = attempt == quality_filter.max_attempts - 1 or not quality_filter.enabled
        retry = []
        for index, image, result, image_seed_value in zip(pending, images, results, seeds):
            if not result.passed and not last:
                rejected[index].append((image_seed_value, result.reasons))
                count += 1
                retry.append(index)
                continue
            if not result.passed:
                count += 1  # kept after its last try, flagged filter_passed false
            if index not in missing:
                continue
            row = _row(plan[index], image_seed_value, attempt + 1, rejected[index], result, sampling,
                       scheduler_name, height, width, model_info, quality_filter.enabled)
            save_png(root, row["file_name"], _tag(image, plan[index], row, fingerprint))
            progress_log.append(row)
            if stop_after and progress_log.written >= stop_after:
                raise SimulatedInterruption(f"{STOP_AFTER_ENV}={stop_after}: stopped after {stop_after} images")
        pending = retry
        if not pending:
            break
    return count


def _finish(root, done, n, summary, run_record, local_model, world, state, threads, rejected_now, quality_filter,
            push_to_hub, hub_token, private, log) -> None:
    import datetime as _dt

    import torch

    from .card import push_dataset, write_dataset_card

    rows = [done[i] for i in range(n)]
    write_metadata(root, rows)
    remove_partials(root)
    if summary["made"]:
        append_run_log(root, {
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "processes": world, "threads_per_process": threads or torch.get_num_threads(),
            "device": str(state.device), "images": summary["made"], "seconds": summary["seconds"],
            "images_per_s": summary["images_per_s"], "rejected_tries": rejected_now,
        })
    write_dataset_card(root, run_record, rows, read_runs(root), _model_license(local_model),
                       training_images=quality_filter.training_count or None)
    rate = f"; {summary['images_per_s']:.3g} images/s over {world} process(es)" if summary.get("images_per_s") else ""
    log(f"Wrote {n} images to {root}/ ({summary['made']} now{rate}): metadata.jsonl, README.md. "
        "Synthetic images: not for clinical use.")
    if push_to_hub:
        url = push_dataset(root, push_to_hub, token=hub_token, private=private)
        log(f"Pushed to {url}")
