"""Ship a saved `CXRPipeline`'s code beside its weights, so that diffusers alone (without cxr-diffusers) can load it.

    write_remote_code("exported")    # after pipe.save_pretrained("exported"); export_pipeline.py does this
    # then, with only diffusers and transformers installed:
    pipe = DiffusionPipeline.from_pretrained("exported", trust_remote_code=True)
    # (`custom_pipeline="exported"` as well still works; from a Hub repo, pass the local folder of
    # `huggingface_hub.snapshot_download(repo_id)`)

Layout written into the folder (the package's own sources, byte for byte, at their paths inside `cxr_diffusers/`),
diffusers' "community pipeline" layout:

    pipeline.py                      the custom-pipeline entry point (generated, see `ENTRY_POINT`)
    pipelines/pipeline_cxr.py        the pipeline module, and every module it imports from the package, also lazily
    models/unet_cxr.py, ...          (the components', errors, provenance, ...), found by following relative imports
    unet/ vae/ text_encoder/ ...     unchanged, as `save_pretrained` wrote them
    model_index.json                 `"_class_name": ["pipeline", "CXRPipeline"]` (`custom_class_name`); components
                                     keep their `cxr_diffusers.models.*` module paths; the optional
                                     `super_resolution` stage is one of them where present (`[null, null]` where not;
                                     its module ships either way, since the pipeline module imports it)

How diffusers resolves it (diffusers/pipelines/pipeline_loading_utils.py): a list `_class_name` `[module, class]`
whose `<module>.py` is at the folder's root is a custom pipeline (`_resolve_custom_pipeline_and_cls`), so
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` runs `pipeline.py` and copies the files it
imports (relative imports, one folder deep at most, not followed further) into its module cache. A component library
that is neither diffusers nor transformers nor a `<component>/<library>.py` file it then takes from `sys.modules`
(`_get_library_or_raise`). Where cxr-diffusers is installed, `pipeline.py` hands diffusers the package's own classes
(the same as `CXRPipeline.from_pretrained`); where it is not, it binds each `cxr_diffusers.models.*` path of
model_index.json in `sys.modules` to the shipped copy (the name `cxr_diffusers` itself stays unimportable).

`CXRPipeline.from_pretrained(folder)` never runs these files: it reads the list `_class_name` as its own class name.
A pipeline diffusers loaded from the shipped code saves the same way (`CXRPipeline.save_config` calls
`write_remote_code` again, from the shipped copies), so its `save_pretrained` folder loads as the export did.

From a Hub repo id, diffusers 0.42 does not load this layout with `trust_remote_code`: its download step accepts a
custom component library only as a `<component>/<library>.py` file of the repo, it fetches Hub code only online
(`model_info`), and it follows the shipped modules' nested relative imports (`from ..errors import`) to wrong paths.
Load the snapshot folder instead, as above (`CXRPipeline.from_pretrained(repo_id)` downloads it itself).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
from pathlib import Path

from .errors import ModelLoadingError

PACKAGE = "cxr_diffusers"
#: The folder of the package's sources: the installed package, or diffusers' module cache where this module is itself
#: a shipped copy (`diffusers_modules.local.remote_code`), which holds the shipped modules at the same relative paths.
PACKAGE_DIR = Path(__file__).resolve().parent
#: The name this module's package is imported under (`cxr_diffusers`, or `diffusers_modules.local` in a shipped copy).
IMPORTED_AS = __name__.rpartition(".")[0]
#: diffusers' `CUSTOM_PIPELINE_FILE_NAME`: the file `custom_pipeline=<folder>` loads, and the module of the list
#: `_class_name` (`custom_class_name`) that makes `trust_remote_code=True` alone load it.
ENTRY_POINT = "pipeline.py"

__all__ = ["ENTRY_POINT", "custom_class_name", "remote_code_modules", "write_remote_code"]


def custom_class_name(pipeline_class_name: str) -> list[str]:
    """model_index.json's `_class_name` of an export: `[entry-point module, class]`, diffusers' custom pipeline."""
    return [Path(ENTRY_POINT).stem, pipeline_class_name]


def _package_name(module: str) -> str:
    """The `cxr_diffusers.*` name of a module of this package, also where it was imported as a shipped copy."""
    if IMPORTED_AS != PACKAGE and module.startswith(f"{IMPORTED_AS}."):
        return PACKAGE + module[len(IMPORTED_AS):]
    return module


def _module_file(module: str) -> Path | None:
    """The source file of a `cxr_diffusers` module (None for a name that is not a module of the package)."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    path = PACKAGE_DIR.joinpath(*parts)
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _package_imports(module: str) -> dict[str, set[str]]:
    """`{imported cxr_diffusers module: names imported from it}` for every import statement of `module`, including
    those inside functions. Raises RuntimeError for imports that cannot be shipped as remote code."""
    tree = ast.parse(_module_file(module).read_text(encoding="utf-8"))
    package = module.split(".")[:-1]
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    raise RuntimeError(f"{module} imports {alias.name} absolutely; shipped code must import the "
                                       "package's modules relatively.")
            continue
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        if node.level == 0:
            if (node.module or "").split(".")[0] == PACKAGE:
                raise RuntimeError(f"{module} imports from {node.module} absolutely; shipped code must import the "
                                   "package's modules relatively.")
            continue
        base = package[: len(package) - (node.level - 1)]
        if node.module is None:  # `from . import x`: x must be a module, not an attribute of a package __init__
            for alias in node.names:
                target = ".".join([*base, alias.name])
                if _module_file(target) is None:
                    raise RuntimeError(f"{module} imports {alias.name!r} from the package {'.'.join(base)!r}; only "
                                       "modules can be shipped (move it into a module of its own).")
                found.setdefault(target, set())
            continue
        target = ".".join([*base, node.module])
        if _module_file(target) is None:
            raise RuntimeError(f"{module} imports {target}, which is a package or missing; import from its module.")
        found.setdefault(target, set()).update(alias.name for alias in node.names if alias.name != "*")
    return found


def remote_code_modules(roots: list[str]) -> dict[str, set[str]]:
    """Every `cxr_diffusers` module that the modules `roots` need, directly or not, with the names imported from
    each (empty for the roots themselves)."""
    missing = [root for root in roots if _module_file(root) is None]
    if missing:
        raise RuntimeError(f"{missing[0]} is not a module of this cxr_diffusers, so its code cannot be shipped.")
    modules: dict[str, set[str]] = {root: set() for root in roots}
    pending = list(roots)
    while pending:
        for target, names in _package_imports(pending.pop()).items():
            if target not in modules:
                modules[target] = set()
                pending.append(target)
            modules[target] |= names
    for module in modules:
        relative = module.split(".")[1:]
        if len(relative) > 2:  # diffusers copies `from .a.b import` at most
            raise RuntimeError(f"{module} is nested too deep for diffusers' remote code (one folder at most).")
    return modules


def _relative(module: str) -> str:
    return "." + ".".join(module.split(".")[1:])


def _entry_point(pipeline: tuple[str, str], components: dict[str, tuple[str, str]],
                 modules: dict[str, set[str]]) -> str:
    from .version import __version__

    lines = [
        f'"""Remote code of a cxr-diffusers {pipeline[1]} (written by cxr-diffusers {__version__}).',
        "",
        "Loads this folder with diffusers alone, no cxr-diffusers needed:",
        "",
        "    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)",
        "",
        f"model_index.json's _class_name {custom_class_name(pipeline[1])} names this file and class: diffusers runs it",
        "and copies the modules it imports (the package's own sources, shipped beside it). model_index.json names the",
        "components by their cxr_diffusers module paths, which diffusers looks up in sys.modules: where cxr-diffusers",
        "is installed its own classes are used, else the paths name the shipped copies.",
        '"""',
        "",
        "import importlib",
        "import importlib.util",
        "import sys",
        "from typing import TYPE_CHECKING",
        "",
    ]
    for library, class_name in sorted({pipeline, *components.values()}):  # the pipeline class is the one diffusers picks
        lines.append(f"from {_relative(library)} import {class_name}")
    entry = {pipeline[0], *(library for library, _ in components.values())}
    rest = sorted(m for m in modules if m not in entry)
    if rest:
        lines += ["", "if TYPE_CHECKING:  # imported by the pipeline when needed; named so that diffusers ships them"]
        for module in rest:
            names = ", ".join(sorted(modules[module])) or "*"
            lines.append(f"    from {_relative(module)} import {names}  # noqa: F401")
    lines += ["", "_COMPONENTS = {"]
    for library, class_name in sorted(set(components.values())):
        lines.append(f'    "{library}": {class_name},')
    lines += [
        "}",
        f'if importlib.util.find_spec("{PACKAGE}") is not None:  # installed: its classes, as {pipeline[1]}.from_pretrained',
        f'    {pipeline[1]} = importlib.import_module("{pipeline[0]}").{pipeline[1]}',
        "    for _library in _COMPONENTS:",
        "        importlib.import_module(_library)",
        "else:",
        "    for _library, _cls in _COMPONENTS.items():",
        "        sys.modules.setdefault(_library, sys.modules[_cls.__module__])",
        "",
    ]
    return "\n".join(lines)


def write_remote_code(folder: str | os.PathLike, pipeline_class: type | None = None) -> list[Path]:
    """Write `pipeline.py` and the package modules the pipeline needs into a folder saved by `save_pretrained`, and
    name `pipeline.py` in its model_index.json (see the module docstring for the layout). `pipeline_class`: the
    pipeline saved there (default: the cxr_diffusers pipeline model_index.json names). Returns the files written."""
    root = Path(folder)
    index = root / "model_index.json"
    if not index.is_file():
        raise ModelLoadingError(f"{root} has no model_index.json: save the pipeline there first.")
    config = json.loads(index.read_text(encoding="utf-8"))
    class_name = config.get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2 and class_name[0] == Path(ENTRY_POINT).stem:
        class_name = class_name[1]  # already exported
    if pipeline_class is None and isinstance(class_name, str):
        pipeline_class = getattr(importlib.import_module(PACKAGE), class_name, None)
    if pipeline_class is None or pipeline_class.__name__ != class_name:
        raise ModelLoadingError(f"{index} names the pipeline {class_name!r}, which is not a cxr_diffusers pipeline.")
    for name, value in config.items():  # a pipeline loaded from shipped code saves its components' import names
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            config[name] = [_package_name(value[0]), value[1]]
    components = {name: (value[0], value[1]) for name, value in config.items()
                  if isinstance(value, list) and len(value) == 2 and str(value[0]).startswith(f"{PACKAGE}.")}
    pipeline = (_package_name(pipeline_class.__module__), pipeline_class.__name__)
    modules = remote_code_modules([pipeline[0], *sorted({library for library, _ in components.values()})])
    written = []
    for module in sorted(modules):
        source = _module_file(module)
        target = root / source.relative_to(PACKAGE_DIR)
        if target.parts[len(root.parts)] in config:
            raise RuntimeError(f"{module} would be shipped into the component folder {target.parent}.")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        written.append(target)
    entry = root / ENTRY_POINT
    entry.write_text(_entry_point(pipeline, components, modules), encoding="utf-8")
    config["_class_name"] = custom_class_name(pipeline[1])
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [entry, *written]
