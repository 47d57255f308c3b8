"""A saved folder put into a huggingface_hub cache as a download leaves it, for offline loading by Hub id."""

import hashlib
import os
from pathlib import Path

REVISION = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(folder: Path, cache: Path, repo_id: str, revision: str = REVISION) -> Path:
    """`folder` as the snapshot of `repo_id` in the Hub cache `cache`, laid out as `snapshot_download` writes it:
    `models--owner--name/blobs/<sha>`, `snapshots/<revision>/<path>` linking to the blobs, `refs/main`, and the repo's
    tree listing (`trees/<revision>.json`, huggingface_hub >= 1.x), which diffusers' download reads offline as the
    repo's file list. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / sha).write_bytes(data)
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(repo / "blobs" / sha, target.parent), target)
        entries[path.relative_to(folder).as_posix()] = (len(data), hashlib.sha1(data).hexdigest())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    try:
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    except ImportError:  # an older huggingface_hub: no tree listing, and diffusers reads none
        return snapshot
    write_tree_cache(str(repo), revision, {name: TreeCacheEntry(size=size, blob_id=blob)
                                           for name, (size, blob) in entries.items()})
    assert (repo / "trees" / f"{revision}.json").is_file()
    return snapshot
