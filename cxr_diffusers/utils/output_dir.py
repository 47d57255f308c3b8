"""Output folders that never lose a user's files.

Every command and training script checks its output folder before it loads a model (`check_output_dir`): it must be
creatable and writable, must not be the source it reads from, and must be empty unless `overwrite` is given. Folders
that are replaced as a whole (an exported pipeline, a final classifier) are written next to the target and moved into
place only when complete (`staged_output_dir`), so a crash or a bad input leaves the old folder as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import CXRInputError


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable_dir(path: str | os.PathLike, flag: str = "--output-dir") -> Path:
    """`path` as a Path if it is a folder that exists or can be created and written to; else one-sentence error."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise CXRInputError(f"{flag} {target} is a file, not a folder; give a folder path.")
    ancestor = _nearest_existing(target.absolute())
    if not ancestor.is_dir():
        raise CXRInputError(f"{flag} {target} cannot be created: {ancestor} is a file, not a folder.")
    try:  # a real probe: permission bits say nothing for root, read-only mounts or /proc
        probe = tempfile.mkdtemp(prefix=".cxr-write-test-", dir=ancestor)
        os.rmdir(probe)
    except OSError as err:
        raise CXRInputError(f"{flag} {target} is not writable ({err.strerror or err} in {ancestor}).") from None
    return target


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.relative_to(outer)
        return True
    except ValueError:
        return False


def check_output_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    protected: Iterable[str | os.PathLike | None] = (),
    flag: str = "--output_dir",
    overwrite_flag: str = "--overwrite",
) -> Path:
    """
    Check, before any work starts, that `path` can be written as a whole new folder: writable, not one of the
    `protected` folders (the run's inputs) nor a folder that contains one, and empty unless `overwrite`.
    """
    target = check_writable_dir(path, flag)
    resolved = target.resolve()
    for source in protected:
        if source is None:
            continue
        source_path = Path(source).expanduser().resolve()
        if _is_within(source_path, resolved):
            raise CXRInputError(
                f"{flag} {target} is (or contains) {source}, an input of this run; write to another folder."
            )
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise CXRInputError(f"{flag} {target} is not empty; pass {overwrite_flag} to replace it, or choose a new folder.")
    return target


@contextlib.contextmanager
def staged_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """
    Yield a fresh temporary folder beside `path`; when the block finishes without an error it replaces `path`
    (the old folder, if any, is removed only after the new one is in place). On an error the temporary folder is
    removed and `path` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
