"""Input checks shared by the loaders: files, columns, images, and the load report.

Every problem with user input raises `cxr_diffusers.errors.DataError` with one sentence that names the missing file
or column. Problems that only lose some rows (rows whose image is missing, images without a row, unreadable or
truncated images) are counted in a `LoadReport`, listed in one `DataWarning`, and become a `DataError` under
`strict=True`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

__all__ = [
    "DataWarning",
    "LoadReport",
    "find_bad_images",
    "read_csv",
    "require_columns",
    "require_dir",
    "require_file",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CHECK_MODES = ("none", "exists", "header", "full")


class DataWarning(UserWarning):
    """Some rows or images were skipped while loading a dataset."""


def require_dir(path: str | os.PathLike, what: str = "dataset root") -> Path:
    """The folder as a `Path`; DataError when it does not exist."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"The {what} {root} does not exist.")
    if not root.is_dir():
        raise DataError(f"The {what} {root} is not a folder.")
    return root


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"The {what} {path} is missing.")
    return path


def find_file(folders: Iterable[Path], names: Sequence[str], what: str) -> Path | None:
    """First `folder/name` that exists, or None."""
    folders = [f for f in folders if f is not None]
    for folder in folders:
        for name in names:
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    return None


def find_required_file(folders: Iterable[Path | None], names: Sequence[str], what: str) -> Path:
    """Like `find_file`, but a DataError naming the file and the folders searched when it is absent."""
    folders = [Path(f) for f in folders if f is not None]
    found = find_file(folders, names, what)
    if found is None:
        where = " or ".join(str(f) for f in dict.fromkeys(folders))
        raise DataError(f"The {what} {names[0]} is missing from {where}.")
    return found


def require_columns(frame, columns: Iterable[str], file: str | os.PathLike) -> None:
    """DataError naming the columns of `columns` that `frame` lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        plural = "columns" if len(missing) > 1 else "column"
        raise DataError(f"The file {file} lacks the {plural} {names}.")


def read_csv(path: str | os.PathLike, required: Iterable[str] = (), **kwargs):
    """Read a CSV with pandas; DataError when it is missing, unreadable or lacks a required column."""
    import pandas as pd

    path = require_file(path, "CSV file")
    try:
        frame = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"The CSV file {path} cannot be read ({type(err).__name__}: {err}).") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(frame, required, path)
    return frame


# --------------------------------------------------------------------------------------------------- images


def _check_image(path: str, mode: str) -> str | None:
    """None when the image is fine, else the reason it is not."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    if mode == "exists":
        return None if size > 0 else "empty file"
    if size == 0:
        return "empty file"
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            fmt = image.format
            if mode == "full":
                image.load()
            else:
                _ = image.size
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if mode == "header":
        # cheap truncation check on the last bytes: PNG ends with the IEND chunk, JPEG with the EOI marker
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 2048))
            tail = fh.read()
        if fmt == "PNG" and b"IEND" not in tail[-64:]:
            return "truncated (no PNG IEND chunk)"
        if fmt in {"JPEG", "MPO"} and b"\xff\xd9" not in tail:
            return "truncated (no JPEG end marker)"
    return None


def find_bad_images(paths: Sequence[str], mode: str = "header", num_proc: int | None = 1) -> dict[str, str]:
    """Check image files without decoding them all into memory; returns `{path: reason}` for the bad ones.

    Modes: `none` (no check), `exists` (file present and not empty), `header` (default: the header parses and the
    file ends with its format's end marker, which catches truncated PNG and JPEG files; two small reads per file),
    `full` (decode every image, one at a time: slow, catches corrupt pixel data).
    """
    if mode not in CHECK_MODES:
        raise DataError(f"check_images must be one of {', '.join(CHECK_MODES)}, not {mode!r}.")
    if mode == "none" or not paths:
        return {}
    workers = max(1, int(num_proc or 1))
    if workers == 1:
        results = [_check_image(p, mode) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda p: _check_image(p, mode), paths, chunksize=64))
    return {p: r for p, r in zip(paths, results) if r is not None}


def index_images(folders: Iterable[Path], recursive: bool = True) -> tuple[dict[str, str], list[str]]:
    """Map file name -> absolute path for the image files under `folders`.

    Returns the index and the list of duplicate file names (the first occurrence wins).
    """
    index: dict[str, str] = {}
    duplicates: list[str] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
        for dirpath, dirnames, filenames in walker:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if name in index:
                    duplicates.append(name)
                    continue
                index[name] = os.path.abspath(os.path.join(dirpath, name))
    return index, duplicates


# ------------------------------------------------------------------------------------------------ the report


@dataclass
class LoadReport:
    """What a loader read, kept and skipped. Attached to the returned `DatasetDict` as `.report`."""

    source: str
    root: str
    steps: list[tuple[str, int]] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    unmatched_images: list[str] = field(default_factory=list)
    bad_images: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    allowed_overlaps: list[tuple[str, str]] = field(default_factory=list)

    def keep(self, frame, mask, name: str, hint: str = ""):
        """Apply one filter to `frame`, record it, and raise DataError when it leaves nothing."""
        before = len(frame)
        frame = frame[mask] if mask is not None else frame
        self.steps.append((name, len(frame)))
        if len(frame) == 0:
            extra = f" {hint}" if hint else ""
            raise DataError(
                f"No {self.source} images are left after the filter {name!r} ({before} rows before it) "
                f"under {self.root}.{extra}".rstrip()
            )
        return frame

    def start(self, name: str, count: int) -> None:
        self.steps.append((name, count))
        if count == 0:
            raise DataError(f"No {self.source} rows or images found: {name} under {self.root} is empty.")

    @property
    def problems(self) -> int:
        return len(self.missing_images) + len(self.unmatched_images) + len(self.bad_images)

    def summary(self, limit: int = 10) -> str:
        parts = []
        if self.missing_images:
            shown = ", ".join(self.missing_images[:limit])
            parts.append(f"{len(self.missing_images)} rows without an image file (e.g. {shown})")
        if self.unmatched_images:
            shown = ", ".join(self.unmatched_images[:limit])
            parts.append(f"{len(self.unmatched_images)} images without a metadata row (e.g. {shown})")
        if self.bad_images:
            shown = "; ".join(f"{p}: {r}" for p, r in list(self.bad_images.items())[:limit])
            parts.append(f"{len(self.bad_images)} unreadable or truncated images skipped ({shown})")
        return f"{self.source} at {self.root}: " + "; ".join(parts) + "."

    def finish(self, strict: bool) -> None:
        """Warn about (or, with strict=True, refuse) skipped rows and images."""
        if not self.problems:
            return
        if strict:
            raise DataError(self.summary(limit=3) + " Fix the data or pass strict=False to skip them.")
        warnings.warn(self.summary(), DataWarning, stacklevel=4)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "root": self.root,
            "steps": [list(s) for s in self.steps],
            "missing_images": len(self.missing_images),
            "unmatched_images": len(self.unmatched_images),
            "bad_images": dict(self.bad_images),
            "notes": list(self.notes),
            "splits": dict(self.splits),
        }
