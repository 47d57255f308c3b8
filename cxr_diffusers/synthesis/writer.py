"""The output folder of `cxr-diffusers synthesize`: a Hugging Face imagefolder dataset, written resumably.

    DIR/
      README.md                    dataset card (YAML front matter), written when the run is complete
      metadata.jsonl               one row per image (file_name, prompt, label, labels, age, sex, view, seed, ...),
                                   written when the run is complete: `datasets.load_dataset("imagefolder", data_dir=DIR)`
      data/0000/0000000.png        the images (1000 per folder), each with its provenance record
      .synthesis/run.json          the run's identity: spec, number of images, seed, plan digest, model revision,
                                   sampling and filter settings, and their fingerprint (sha256); the model id
      .synthesis/progress/*.jsonl  one log per process and launch: the metadata row of every image once it is on disk
      .synthesis/runs.jsonl        one line per launch: processes, images made, seconds, images/s, rejections

(`datasets` ignores hidden files and folders, so `.synthesis/` is invisible to `load_dataset`.)

Writing is crash-safe: an image is written to a hidden temporary file and renamed into place, then its row is
appended to the process's own log (flushed and synced). An image counts as done when its row is in a log and its
file exists; anything else is made again on restart, so a killed run leaves neither duplicates nor holes. Processes
never share a file: each writes the images of its own indices and its own log.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import CXRInputError
from ..provenance import NOT_FOR_CLINICAL_USE

__all__ = [
    "FORMAT",
    "ProgressLog",
    "check_output_folder",
    "image_path",
    "load_run",
    "make_run_record",
    "read_runs",
    "save_png",
    "scan_completed",
    "write_metadata",
    "write_run",
]

FORMAT = "cxr-diffusers synthesize v1"
STATE_DIR = ".synthesis"
RUN_FILE = "run.json"
PROGRESS_DIR = "progress"
RUNS_LOG = "runs.jsonl"
METADATA_FILE = "metadata.jsonl"
CARD_FILE = "README.md"
PARTIAL_MARK = ".partial-"

#: The columns of metadata.jsonl, in their order (`datasets` adds `image` from `file_name`).
COLUMNS = (
    "file_name", "index", "prompt", "label", "labels", "age", "sex", "view", "population", "seed", "attempts",
    "rejected_seeds", "rejection_reasons", "filter_passed", "classifier_score", "nearest_train_ssim", "steps",
    "guidance", "scheduler", "negative_prompt", "enhancement", "height", "width", "model", "model_revision",
    "synthetic", "not_for_clinical_use",
)

#: The parts of a run's identity, in the order a difference is reported.
IDENTITY_KEYS = ("spec", "num_images", "seed", "plan_sha256", "model", "sampling", "filter")


def image_path(index: int) -> str:
    """The file of image `index`, relative to the output folder (1000 images per sub-folder)."""
    return f"data/{index // 1000:04d}/{index:07d}.png"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}")
    with open(staging, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, path)


def save_png(root: Path, relative: str, image) -> Path:
    """Write `image` (a PIL image, keeping its provenance) to `root/relative` through a temporary file and a rename."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}")
    image.save(staging, format="PNG")
    os.replace(staging, path)
    return path


# ------------------------------------------------------------------------------------------------ identity
def make_run_record(identity: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json: the identity, its fingerprint, the labels every file written by this library carries, and `extra`
    (facts that are not part of the identity, such as the model id as it was given)."""
    from ..version import __version__

    missing = [k for k in IDENTITY_KEYS if k not in identity]
    if missing:
        raise ValueError(f"run identity lacks {missing}")
    fingerprint = hashlib.sha256(json.dumps({k: identity[k] for k in IDENTITY_KEYS}, sort_keys=True,
                                            default=str).encode("utf-8")).hexdigest()
    return {
        "format": FORMAT,
        "synthetic": True,
        "not_for_clinical_use": True,
        "notice": NOT_FOR_CLINICAL_USE,
        "software": f"cxr-diffusers {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        **(extra or {}),
        **{k: identity[k] for k in IDENTITY_KEYS},
    }


def load_run(root: Path) -> dict[str, Any] | None:
    """The run.json of an output folder, or None when there is none."""
    path = root / STATE_DIR / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CXRInputError(f"{path} is unreadable or not JSON; restore it, or choose a new --output-dir.") from None
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise CXRInputError(f"{path} is not a run file of this version of cxr-diffusers synthesize ({FORMAT}); "
                            "choose a new --output-dir.")
    return run


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two identities, as words for an error message (None: nothing)."""
    for key in IDENTITY_KEYS:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    name = {"spec": "spec", "model": "model", "sampling": "sampling setting",
                            "filter": "filter setting"}[key]
                    return f"{name} {sub!r} ({_short(a.get(sub))} there, {_short(b.get(sub))} now)"
        if key == "plan_sha256":
            return "plan (the prompts the spec expands to differ)"
        return f"{key.replace('_', ' ')} ({_short(a)} there, {_short(b)} now)"
    return None


def check_output_folder(root: Path, identity: dict[str, Any]) -> str:
    """`"new"` for an empty or missing folder, `"resume"` for a folder of the same run; else a one-sentence error.

    A folder of another run (a changed spec, model, seed, number of images or sampling setting) is refused, and so
    is a non-empty folder that is not a synthesize folder: nothing in it is ever changed or deleted.
    """
    from ..utils.output_dir import check_writable_dir

    check_writable_dir(root, "--output-dir")
    run = load_run(root)
    if run is None:
        if root.is_dir() and any(root.iterdir()):
            raise CXRInputError(f"--output-dir {root} is not empty and holds no synthesize run "
                                f"({STATE_DIR}/{RUN_FILE}); choose a new or empty folder.")
        return "new"
    difference = _difference(run, identity)
    if difference is not None:
        raise CXRInputError(f"--output-dir {root} holds a synthesize run with a different {difference}; resume it "
                            "with its original arguments, or choose a new --output-dir.")
    return "resume"


def write_run(root: Path, identity: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create `.synthesis/run.json` (first launch only)."""
    record = make_run_record(identity, extra)
    _atomic_write_text(root / STATE_DIR / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


# ------------------------------------------------------------------------------------------------ progress
class ProgressLog:
    """The append-only log of one process in one launch: one metadata row (JSON) per image on disk."""

    def __init__(self, root: Path, rank: int):
        folder = root / STATE_DIR / PROGRESS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{rank:03d}-{time.time_ns()}-{os.getpid()}.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self.written = 0

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _log_rows(path: Path):
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # the last line of a log whose process was killed while writing it
            continue
        if isinstance(row, dict) and isinstance(row.get("index"), int) and isinstance(row.get("file_name"), str):
            yield row


def scan_completed(root: Path, num_images: int | None = None) -> dict[int, dict[str, Any]]:
    """`{index: metadata row}` of the images that are done: logged by some process and present on disk."""
    done: dict[int, dict[str, Any]] = {}
    folder = root / STATE_DIR / PROGRESS_DIR
    if not folder.is_dir():
        return done
    for log in sorted(folder.glob("*.jsonl")):
        for row in _log_rows(log):
            index = row["index"]
            if index in done or (num_images is not None and not 0 <= index < num_images):
                continue
            if row["file_name"] == image_path(index) and (root / row["file_name"]).is_file():
                done[index] = row
    return done


class ProgressCounter:
    """Counts the rows in the progress logs as they grow, reading each log only from where it stopped last time."""

    def __init__(self, root: Path):
        self.folder = root / STATE_DIR / PROGRESS_DIR
        self.offsets: dict[Path, int] = {}
        self.rows = 0

    def poll(self) -> int:
        """The number of complete rows in all logs now."""
        if not self.folder.is_dir():
            return self.rows
        for log in self.folder.glob("*.jsonl"):
            start = self.offsets.get(log, 0)
            try:
                with open(log, "rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # only whole lines
            self.rows += chunk[:end].count(b"\n")
            self.offsets[log] = start + end
        return self.rows


# ------------------------------------------------------------------------------------------------ the dataset
def write_metadata(root: Path, rows: list[dict[str, Any]]) -> Path:
    """metadata.jsonl, one row per image in index order (written to a temporary file, then renamed)."""
    ordered = sorted(rows, key=lambda r: r["index"])

    def in_order(row: dict[str, Any]) -> dict[str, Any]:
        return {**{k: row.get(k) for k in COLUMNS}, **{k: v for k, v in row.items() if k not in COLUMNS}}

    text = "".join(json.dumps(in_order(row), ensure_ascii=False) + "\n" for row in ordered)
    path = root / METADATA_FILE
    _atomic_write_text(path, text)
    return path


def remove_partials(root: Path) -> int:
    """Remove the hidden temporary files left by processes killed while writing an image (only ours)."""
    removed = 0
    patterns = [f"data/*/.*.png{PARTIAL_MARK}*", f".{METADATA_FILE}{PARTIAL_MARK}*", f".{CARD_FILE}{PARTIAL_MARK}*",
                f"{STATE_DIR}/.{RUN_FILE}{PARTIAL_MARK}*"]
    for pattern in patterns:
        for path in root.glob(pattern):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def append_run_log(root: Path, entry: dict[str, Any]) -> None:
    path = root / STATE_DIR / RUNS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def read_runs(root: Path) -> list[dict[str, Any]]:
    """The launches of a run (`.synthesis/runs.jsonl`), oldest first."""
    path = root / STATE_DIR / RUNS_LOG
    if not path.is_file():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue
    return runs
