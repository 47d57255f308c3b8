#!/usr/bin/env python
"""Check that every marked copy of a shared code block is identical to its source (the idea of diffusers'
`utils/check_copies.py`, for the inline blocks that the training scripts in `train_scripts/` share).

diffusers' examples keep their training loops inline, so the scripts repeat some blocks on purpose (the Accelerator,
the optimizer step, checkpointing). One copy is the source; every other copy says where it comes from, and this
checker keeps them from drifting apart. Markers are comment lines, at any indentation:

    # <copy-source: NAME>                    opens the source block NAME (a name is unique within its file)
    ...
    # </copy-source>                         closes it

    # Copied from PATH:NAME                  opens a copy of the block NAME of PATH (relative to the repository root)
    ...
    # End copy                               closes it

`# Copied from PATH:NAME with OLD->NEW, OLD2->NEW2` compares against the source with those plain-text replacements
made first, in order (e.g. `with unet->vae` or `with "train_ldm"->"train_vae"`); a replacement that no longer occurs
in the source is an error. Blocks do not nest. A copy must equal its source after whitespace normalisation: blank
lines, trailing whitespace and the indentation common to the whole block are ignored (a copy may sit at another
depth), indentation within the block is not (it is Python).

    python scripts/check_copies.py            # exit 0: every copy matches; 1: a diff per drifted copy, or bad markers
    python scripts/check_copies.py --fix      # rewrite drifted copies from their source (re-indented to the copy)

By default it reads the `.py` files of train_scripts/, cxr_diffusers/, scripts/ and benchmarks/ under `--root` (the
repository); give files or folders to read others. `make check-copies` runs it, and so does `make test`.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATHS = ("train_scripts", "cxr_diffusers", "scripts", "benchmarks")
SOURCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)# <copy-source: (?P<name>[\w.-]+)>\s*$")
SOURCE_CLOSE = re.compile(r"^[ \t]*# </copy-source>\s*$")
COPY_OPEN = re.compile(r"^(?P<indent>[ \t]*)# Copied from (?P<path>[^\s:]+):(?P<name>[\w.-]+)(?: with (?P<with>.+?))?\s*$")
COPY_CLOSE = re.compile(r"^[ \t]*# End copy\s*$")
# Anything that looks like a marker but does not parse (a typo would otherwise silently not be checked).
# (diffusers-style `# Copied from diffusers.models...` comments, which name no .py file, are left alone.)
MARKER_LIKE = re.compile(r"^[ \t]*#\s*(</?\s*copy-source\b|copied from\s+\S*\.py\b|end\s+copy\s*$)", re.IGNORECASE)


@dataclass
class Block:
    kind: str  # "source" or "copy"
    path: Path  # the file, absolute
    name: str
    open_line: int  # 0-based index of the opening marker line
    close_line: int = -1  # 0-based index of the closing marker line
    source_path: str = ""  # copies: PATH of the marker, relative to the root
    replacements: list[tuple[str, str]] = field(default_factory=list)

    def content(self, lines: list[str]) -> list[str]:
        return lines[self.open_line + 1 : self.close_line]


class MarkerError(Exception):
    pass


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def parse_replacements(text: str | None, where: str) -> list[tuple[str, str]]:
    if not text:
        return []
    pairs = []
    for part in text.split(","):
        if part.count("->") != 1 or not part.split("->")[0].strip():
            raise MarkerError(f"{where}: cannot read the replacement {part.strip()!r} (write OLD->NEW, comma-separated)")
        old, new = (side.strip() for side in part.split("->"))
        pairs.append((old, new))
    return pairs


def parse_blocks(path: Path, lines: list[str], root: Path) -> list[Block]:
    """The source and copy blocks of one file; MarkerError for a malformed, unclosed or nested marker."""
    blocks: list[Block] = []
    current: Block | None = None
    shown = display(path, root)
    for index, line in enumerate(lines):
        where = f"{shown}:{index + 1}"
        source_open, copy_open = SOURCE_OPEN.match(line), COPY_OPEN.match(line)
        if source_open or copy_open:
            if current is not None:
                raise MarkerError(f"{where}: a block opens inside the {current.kind} block {current.name!r} opened at "
                                  f"line {current.open_line + 1} (blocks do not nest; close it first)")
            if source_open:
                current = Block("source", path, source_open["name"], index)
            else:
                current = Block("copy", path, copy_open["name"], index, source_path=copy_open["path"],
                                replacements=parse_replacements(copy_open["with"], where))
        elif SOURCE_CLOSE.match(line) or COPY_CLOSE.match(line):
            kind = "source" if SOURCE_CLOSE.match(line) else "copy"
            if current is None or current.kind != kind:
                opened = f"the {current.kind} block {current.name!r}" if current else "no block"
                raise MarkerError(f"{where}: {line.strip()!r} closes a {kind} block, but {opened} is open")
            current.close_line = index
            blocks.append(current)
            current = None
        elif MARKER_LIKE.match(line):
            raise MarkerError(f"{where}: {line.strip()!r} looks like a copy marker but is not one (see "
                              "scripts/check_copies.py for the syntax)")
    if current is not None:
        closing = "# </copy-source>" if current.kind == "source" else "# End copy"
        raise MarkerError(f"{shown}:{current.open_line + 1}: the {current.kind} block {current.name!r} is never closed "
                          f"(add {closing!r})")
    names = [b.name for b in blocks if b.kind == "source"]
    for name in sorted({n for n in names if names.count(n) > 1}):
        raise MarkerError(f"{shown}: the source block {name!r} is defined more than once")
    return blocks


def display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def indentation(line: str) -> int:
    return len(line) - len(line.lstrip())


def normalise(lines: list[str]) -> list[str]:
    """Blank lines and trailing whitespace dropped, the block's common indentation removed."""
    kept = [line.expandtabs(4).rstrip() for line in lines if line.strip()]
    common = min((indentation(line) for line in kept), default=0)
    return [line[common:] for line in kept]


def reindent(lines: list[str], delta: int) -> list[str]:
    out = []
    for line in lines:
        line = line.expandtabs(4).rstrip()
        if not line:
            out.append("")
        elif delta >= 0:
            out.append(" " * delta + line)
        else:
            out.append(line[min(-delta, indentation(line)) :])
    return out


def expected_copy(source_lines: list[str], copy: Block, copy_lines: list[str], marker: str, where: str) -> list[str]:
    """The source block as the copy should read: replacements made, at the copy's indentation."""
    text = "\n".join(source_lines)
    for old, new in copy.replacements:
        if old not in text:
            raise MarkerError(f"{where}: the replacement {old}->{new} does not occur in the source block "
                              f"{copy.source_path}:{copy.name} (remove it from the marker)")
        text = text.replace(old, new)
    lines = text.split("\n") if source_lines else []
    source_indent = min((indentation(l.expandtabs(4)) for l in lines if l.strip()), default=0)
    content = [l for l in copy_lines if l.strip()]
    if content:
        copy_indent = min(indentation(l.expandtabs(4)) for l in content)
    else:  # an empty copy: the indentation of its marker
        copy_indent = indentation(marker.expandtabs(4))
    return reindent(lines, copy_indent - source_indent)


def python_files(paths: list[Path], skip: set[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_file() and path.suffix == ".py":
            files.append(path.resolve())
        elif path.is_dir():
            files += [p.resolve() for p in sorted(path.rglob("*.py")) if "__pycache__" not in p.parts]
    return [f for f in dict.fromkeys(files) if f not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help=f"files or folders to read (default: {', '.join(DEFAULT_PATHS)})")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                        help="the repository root that the PATH of `# Copied from PATH:NAME` is relative to")
    parser.add_argument("--fix", action="store_true", help="rewrite every drifted copy from its source")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    paths = [Path(p) if Path(p).is_absolute() else root / p for p in args.paths] or \
        [root / p for p in DEFAULT_PATHS if (root / p).exists()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(missing)}")

    errors: list[str] = []
    texts: dict[Path, list[str]] = {}
    blocks: dict[Path, list[Block]] = {}

    def load(path: Path) -> list[Block] | None:
        if path not in blocks:
            try:
                texts[path] = read_lines(path)
                blocks[path] = parse_blocks(path, texts[path], root)
            except MarkerError as error:
                errors.append(str(error))
                blocks[path] = []
                return None
        return blocks[path]

    for path in python_files(paths, skip={Path(__file__).resolve()}):
        load(path)

    drifted: list[tuple[Block, list[str]]] = []
    checked = 0
    for path in list(blocks):
        for copy in [b for b in blocks[path] if b.kind == "copy"]:
            where = f"{display(path, root)}:{copy.open_line + 1}"
            source_file = (root / copy.source_path).resolve()
            if not source_file.is_file():
                errors.append(f"{where}: the source file {copy.source_path} does not exist (relative to {root})")
                continue
            if load(source_file) is None:
                continue
            sources = [b for b in blocks[source_file] if b.kind == "source" and b.name == copy.name]
            if not sources:
                errors.append(f"{where}: {copy.source_path} has no block '# <copy-source: {copy.name}>'")
                continue
            source = sources[0]
            actual = copy.content(texts[path])
            try:
                expected = expected_copy(source.content(texts[source_file]), copy, actual,
                                         texts[path][copy.open_line], where)
            except MarkerError as error:
                errors.append(str(error))
                continue
            checked += 1
            if normalise(expected) != normalise(actual):
                drifted.append((copy, expected))

    for copy, expected in drifted:
        shown = display(copy.path, root)
        replaced = f" with {', '.join(f'{a}->{b}' for a, b in copy.replacements)}" if copy.replacements else ""
        if args.fix:
            print(f"{shown}:{copy.open_line + 1}: rewrote the copy of {copy.source_path}:{copy.name}")
            continue
        print(f"{shown}:{copy.open_line + 1}: this copy of {copy.source_path}:{copy.name} differs from its source:")
        diff = difflib.unified_diff(
            expected, [line.expandtabs(4).rstrip() for line in copy.content(texts[copy.path])],
            fromfile=f"{copy.source_path}:{copy.name} (the source{replaced})",
            tofile=f"{shown}:{copy.open_line + 2}-{copy.close_line} (the copy)", lineterm="")
        print("\n".join(diff))
        print()

    if args.fix and drifted:  # bottom-up within each file, so that earlier line numbers stay valid
        for path in dict.fromkeys(copy.path for copy, _ in drifted):
            lines = texts[path]
            for copy, expected in sorted((d for d in drifted if d[0].path == path), key=lambda d: -d[0].open_line):
                lines[copy.open_line + 1 : copy.close_line] = expected
            original = path.read_text(encoding="utf-8")
            path.write_text("\n".join(lines) + ("\n" if original.endswith("\n") else ""), encoding="utf-8")

    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    sources = sum(1 for found in blocks.values() for b in found if b.kind == "source")
    if errors or (drifted and not args.fix):
        print(f"check_copies: {len(drifted)} of {checked} copies differ from their source, {len(errors)} marker "
              f"error(s){'' if args.fix else '; run `python scripts/check_copies.py --fix` to rewrite the copies'}",
              file=sys.stderr)
        return 1
    verb = f"fixed {len(drifted)}, " if drifted else ""
    print(f"check_copies: {verb}{checked} copies of {sources} source blocks match their source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
