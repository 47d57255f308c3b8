"""What `cxr-diffusers synthesize` makes: the spec file, and its deterministic expansion into one plan item per image.

A spec is a YAML or JSON mapping (or a CSV of prompts). Either it describes the population to draw::

    num_images: 1000                 # optional here; --num-images overrides; implied by counts
    findings:                        # whole numbers = counts (adding up to the number of images), or proportions
      normal: 500                    # "normal" (or "no finding") = no finding
      pneumonia: 500                 # any name of cxr_diffusers.data.vocabulary.FINDINGS;
      # "cardiomegaly, pleural effusion": 0.1   # several findings in one image
    population: {pediatric: 1.0}     # optional: pediatric / adult, counts or proportions
    age_bands:                       # optional: ages drawn uniformly (whole years) in [min, max] of a band
      - {min: 1, max: 5, weight: 2}  # weight: relative share (default 1); bands below 18 are pediatric
      - {min: 6, max: 12}
    sex: {female: 0.5, male: 0.5}    # optional, counts or proportions
    view: {AP: 0.8, PA: 0.2}         # optional: PA, AP, AP supine, lateral, frontal
    template: "{view} chest radiograph of a {age} year old {sex}. {findings_sentence}"   # optional

or it lists the prompts::

    prompts:                         # strings, or mappings with prompt, count, label(s), age, sex, view
      - {prompt: "Pediatric chest radiograph. No acute cardiopulmonary abnormality.", count: 500}
      - {prompt: "Pediatric chest radiograph. Findings: pneumonia.", count: 500}
    prompts_csv: prompts.csv         # or a CSV (path relative to the spec) with a `prompt` column and optional
                                     # count, labels (separated by ';' or ','), label, age, sex, view columns

Without counts, N prompts are cycled over the images (image i uses prompt i mod N). A listed prompt's labels default
to the findings its "Findings: ..." sentence names, else to its pneumonia class (`pneumonia_class_from_prompt`). Without a template the prompt
is `cxr_diffusers.data.build_prompt(labels, view=, age=, sex=, population=)`, the wording of the training prompts.
Template fields: {findings} ("pneumonia", "cardiomegaly, pleural effusion", "no finding"), {findings_sentence}
("Findings: pneumonia." / "No acute cardiopulmonary abnormality."), {view}, {age}, {sex}, {population}.

Expansion (`expand_plan`) is exact and deterministic: every factor given as counts or proportions gets exactly its
count (proportions by largest remainder), and its values are dealt to the image indices by a permutation drawn from
the run seed, each factor from its own stream; ages are drawn per image. The same spec, number of images and seed
always give the same plan, whatever the number of processes. Image i's sampling seed is `image_seed(seed, i)`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CXRInputError

__all__ = [
    "MAX_SEED",
    "PlanItem",
    "SpecError",
    "SynthesisSpec",
    "expand_plan",
    "image_seed",
    "load_spec",
    "parse_spec",
    "plan_digest",
]

MAX_SEED = 2**63 - 1
PEDIATRIC_MAX_AGE = 17  # ages 0-17 are pediatric, 18 and over adult
MAX_AGE = 120
TEMPLATE_FIELDS = ("findings", "findings_sentence", "view", "age", "sex", "population")
SPEC_KEYS = ("num_images", "findings", "population", "age_bands", "sex", "view", "template", "prompts", "prompts_csv")
NORMAL_NAMES = ("normal", "no finding", "no findings", "none", "healthy")
SEXES = ("female", "male")
SEX_NAMES = {"female": "female", "f": "female", "male": "male", "m": "male"}
POPULATIONS = {"pediatric": "pediatric", "paediatric": "pediatric", "adult": "adult"}
PROMPT_ENTRY_KEYS = ("prompt", "count", "label", "labels", "age", "sex", "view")


class SpecError(CXRInputError):
    """A spec file that cannot be read or describes no valid dataset."""


# ------------------------------------------------------------------------------------------------ seeds
def image_seed(run_seed: int, index: int, attempt: int = 0) -> int:
    """The sampling seed of image `index` (its `attempt`-th try, 0 first) of a run with seed `run_seed`.

    A hash (`numpy.random.SeedSequence([run_seed, index, attempt])`) folded into [0, 2**63 - 1]: it depends only on
    these three numbers, so every process count, batch size or restart gives image `index` the same seed, and a
    rejected image's next try has a seed of its own.
    """
    state = np.random.SeedSequence([int(run_seed), int(index), int(attempt)]).generate_state(2, np.uint32)
    return int(((int(state[0]) << 32) | int(state[1])) & MAX_SEED)


# ------------------------------------------------------------------------------------------------ spec
@dataclass(frozen=True)
class PlanItem:
    """What image `index` shows: its prompt and the metadata it was drawn from (None: not specified)."""

    index: int
    prompt: str
    label: str | None  # the finding set as text: "normal", "pneumonia", "cardiomegaly, pleural effusion"
    labels: tuple[str, ...] | None  # findings of cxr_diffusers.data.vocabulary.FINDINGS; () = no finding
    age: int | None = None
    sex: str | None = None
    view: str | None = None
    population: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = None if self.labels is None else list(self.labels)
        return out


@dataclass
class SynthesisSpec:
    """A parsed, validated spec. `normalized` is its canonical JSON-able form (CSV prompts inlined)."""

    normalized: dict[str, Any]
    source: str = "<spec>"

    @property
    def fixed_num_images(self) -> int | None:
        """The number of images the spec's counts imply, or None when it gives proportions only."""
        return self.normalized.get("_implied_num_images")

    def resolve_num_images(self, requested: int | None) -> int:
        """The number of images to make: `requested` (--num-images), the spec's counts or its `num_images`."""
        implied = self.fixed_num_images
        if requested is not None:
            if requested < 1:
                raise SpecError(f"--num-images must be at least 1, got {requested}.")
            if implied is not None and requested != implied:
                raise SpecError(f"--num-images {requested} contradicts the spec's counts, which add up to {implied} "
                                "images; drop --num-images or give proportions in the spec.")
            return int(requested)
        if implied is not None:
            return int(implied)
        if self.normalized.get("num_images") is not None:
            return int(self.normalized["num_images"])
        what = "prompts without counts" if "prompts" in self.normalized else "proportions, not counts"
        raise SpecError(f"The spec {self.source} gives {what}; say how many images to make with --num-images or "
                        "num_images in the spec.")

    def public(self) -> dict[str, Any]:
        """The normalized spec without internal keys (for run.json and the dataset card)."""
        return {k: v for k, v in self.normalized.items() if not k.startswith("_")}


def _fail(source: str, message: str) -> SpecError:
    return SpecError(f"The spec {source}: {message}")


def load_spec(path: str | os.PathLike) -> SynthesisSpec:
    """Read and validate a spec file (.yaml, .yml, .json, or a .csv of prompts)."""
    spec_path = Path(path)
    if not spec_path.is_file():
        raise SpecError(f"--spec {spec_path} does not exist or is not a file.")
    suffix = spec_path.suffix.lower()
    if suffix == ".csv":
        return parse_spec({"prompts_csv": spec_path.name}, base_dir=spec_path.parent, source=str(spec_path))
    try:
        text = spec_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"--spec {spec_path} cannot be read as UTF-8 text ({type(err).__name__}).") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"--spec {spec_path} is not valid JSON ({err.msg} at line {err.lineno}).") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SpecError(f"--spec {spec_path} is not valid YAML{where}.") from None
    else:
        raise SpecError(f"--spec {spec_path} must be a .yaml, .yml, .json or .csv file.")
    return parse_spec(data, base_dir=spec_path.parent, source=str(spec_path))


def _is_count(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _shares(source: str, name: str, mapping: Any, canonical) -> tuple[dict[str, Any], int | None]:
    """`{canonical key: count or proportion}` of a counts-or-proportions mapping, and the total of counts (or None)."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise _fail(source, f"'{name}' must be a non-empty mapping of values to counts or proportions.")
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        canon = canonical(key)
        if canon in out:
            raise _fail(source, f"'{name}' lists {key!r} twice.")
        if not _is_number(value) or not math.isfinite(float(value)) or value < 0:
            raise _fail(source, f"'{name}': {key!r} must have a count or proportion >= 0, got {value!r}.")
        out[canon] = int(value) if _is_count(value) else float(value)
    values = list(out.values())
    if all(_is_count(v) for v in values):
        if sum(values) == 0:
            raise _fail(source, f"'{name}' counts add up to 0.")
        return out, int(sum(values))
    total = float(sum(values))
    if abs(total - 1.0) > 1e-6:
        raise _fail(source, f"'{name}' proportions add up to {total:g}, not 1 (or give whole-number counts).")
    return {k: float(v) for k, v in out.items()}, None


def _finding_key(source: str):
    from ..data.vocabulary import normalize_finding

    def canonical(key: Any) -> str:
        text = str(key).strip().lower()
        if text in NORMAL_NAMES:
            return "normal"
        names = [part.strip() for part in text.replace("+", ",").split(",") if part.strip()]
        found = []
        for name in names:
            finding = normalize_finding(name)
            if finding is None:
                examples = "normal, pneumonia, cardiomegaly, pleural effusion"
                raise _fail(source, f"findings: {name!r} is not a known finding (e.g. {examples}; see "
                                    "cxr_diffusers.data.vocabulary.FINDINGS).")
            if finding not in found:
                found.append(finding)
        if not found:
            raise _fail(source, f"findings: {key!r} names no finding.")
        return ", ".join(found)

    return canonical


def _choice_key(source: str, name: str, allowed: Mapping[str, str]):
    def canonical(key: Any) -> str:
        text = str(key).strip()
        match = allowed.get(text.lower())
        if match is None:
            raise _fail(source, f"{name}: {key!r} is not one of {', '.join(sorted(set(allowed.values())))}.")
        return match

    return canonical


def _views() -> dict[str, str]:
    from ..data.vocabulary import VIEW_WORDS

    return {view.lower(): view for view in VIEW_WORDS}


def _labels_of(source: str, value: Any, where: str) -> list[str]:
    """Findings of a `labels` / `label` value (a list, or a string separated by ';' or ',')."""
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = [str(p) for p in value]
    else:
        raise _fail(source, f"{where}: labels must be a list or a string, got {value!r}.")
    if not parts:
        return []
    key = _finding_key(source)(", ".join(parts))
    return [] if key == "normal" else key.split(", ")


def _age_bands(source: str, bands: Any) -> list[dict[str, Any]]:
    if not isinstance(bands, list) or not bands:
        raise _fail(source, "'age_bands' must be a non-empty list of {min, max, weight} bands.")
    out = []
    for number, band in enumerate(bands, start=1):
        if isinstance(band, (list, tuple)) and len(band) == 2:
            band = {"min": band[0], "max": band[1]}
        if not isinstance(band, Mapping) or set(band) - {"min", "max", "weight"} or not {"min", "max"} <= set(band):
            raise _fail(source, f"age band {number} must be a mapping with min, max and optionally weight.")
        low, high, weight = band["min"], band["max"], band.get("weight", 1)
        if not (_is_count(low) and _is_count(high)) or not 0 <= low <= high <= MAX_AGE:
            raise _fail(source, f"age band {number} needs whole-number ages with 0 <= min <= max <= {MAX_AGE}, "
                                f"got {low!r}-{high!r}.")
        if not _is_number(weight) or not math.isfinite(float(weight)) or weight <= 0:
            raise _fail(source, f"age band {number} needs a weight > 0, got {weight!r}.")
        out.append({"min": int(low), "max": int(high), "weight": float(weight)})
    return out


def _band_population(band: Mapping[str, int]) -> str | None:
    if band["max"] <= PEDIATRIC_MAX_AGE:
        return "pediatric"
    if band["min"] > PEDIATRIC_MAX_AGE:
        return "adult"
    return None


def _read_prompts_csv(source: str, path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise _fail(source, f"prompts_csv {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(source, f"prompts_csv {path} cannot be read as UTF-8 text ({type(err).__name__}).") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "prompt" not in columns:
        raise _fail(source, f"prompts_csv {path} has no 'prompt' column (columns: {', '.join(columns) or 'none'}).")
    unknown = sorted(set(columns) - set(PROMPT_ENTRY_KEYS))
    if unknown:
        raise _fail(source, f"prompts_csv {path} has the unknown column {unknown[0]!r} (known: "
                            f"{', '.join(PROMPT_ENTRY_KEYS)}).")
    rows = []
    for number, row in enumerate(reader, start=2):
        entry: dict[str, Any] = {}
        for key, value in row.items():
            key = (key or "").strip()
            value = (value or "").strip()
            if not key or value == "":
                continue
            if key in ("count", "age"):
                try:
                    entry[key] = int(value)
                except ValueError:
                    raise _fail(source, f"prompts_csv {path} line {number}: {key} must be a whole number, got "
                                        f"{value!r}.") from None
            else:
                entry[key] = value
        entry["_where"] = f"prompts_csv line {number}"
        rows.append(entry)
    if not rows:
        raise _fail(source, f"prompts_csv {path} lists no prompts.")
    return rows


def _labels_from_prompt(prompt: str) -> list[str] | None:
    """The findings a prompt names ("Findings: a, b and c." of the vocabulary), else its pneumonia class as training
    reads it (`pneumonia_class_from_prompt`: ["pneumonia"], [] for a normal prompt), else None (cannot tell)."""
    import re

    from ..data.prompts import pneumonia_class_from_prompt
    from ..data.vocabulary import normalize_finding

    cls = pneumonia_class_from_prompt(prompt)
    match = re.search(r"\bfindings?:\s*([^.;]*)", prompt.lower())
    if match:
        found: list[str] | None = []
        for part in re.split(r",|\band\b", match.group(1)):
            part = part.strip()  # "bacterial pneumonia" is pneumonia, "no pneumonia" is not a finding
            finding = "pneumonia" if part.endswith("pneumonia") and cls == "PNEUMONIA" else normalize_finding(part)
            if not part:
                continue
            if finding is None:
                found = None
                break
            if finding not in found:
                found.append(finding)
        if found:
            return found
    return None if cls is None else (["pneumonia"] if cls == "PNEUMONIA" else [])


def _prompt_entries(source: str, entries: list, views: Mapping[str, str]) -> tuple[list[dict[str, Any]], int | None]:
    out = []
    for number, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, Mapping):
            raise _fail(source, f"prompt {number} must be a string or a mapping with 'prompt', got {entry!r}.")
        entry = dict(entry)
        where = entry.pop("_where", f"prompt {number}")
        unknown = sorted(set(entry) - set(PROMPT_ENTRY_KEYS))
        if unknown:
            raise _fail(source, f"{where} has the unknown key {unknown[0]!r} (known: {', '.join(PROMPT_ENTRY_KEYS)}).")
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _fail(source, f"{where} has an empty prompt.")
        item: dict[str, Any] = {"prompt": " ".join(prompt.split())}
        if "count" in entry:
            if not _is_count(entry["count"]) or entry["count"] < 1:
                raise _fail(source, f"{where}: count must be a whole number >= 1, got {entry['count']!r}.")
            item["count"] = int(entry["count"])
        if "labels" in entry or "label" in entry:
            labels = _labels_of(source, entry.get("labels", entry.get("label")), where)
        else:
            labels = _labels_from_prompt(item["prompt"])
        item["labels"] = labels
        if entry.get("age") is not None:
            if not _is_count(entry["age"]) or not 0 <= entry["age"] <= MAX_AGE:
                raise _fail(source, f"{where}: age must be a whole number in 0-{MAX_AGE}, got {entry['age']!r}.")
            item["age"] = int(entry["age"])
        if entry.get("sex") is not None:
            item["sex"] = _choice_key(source, f"{where} sex", SEX_NAMES)(entry["sex"])
        if entry.get("view") is not None:
            item["view"] = _choice_key(source, f"{where} view", views)(entry["view"])
        out.append(item)
    if not out:
        raise _fail(source, "'prompts' lists no prompts.")
    with_count = [e for e in out if "count" in e]
    if with_count and len(with_count) != len(out):
        raise _fail(source, "give a count for every prompt or for none (then the prompts are cycled).")
    return out, (sum(e["count"] for e in out) if with_count else None)


def parse_spec(data: Any, base_dir: str | os.PathLike | None = None, source: str = "<spec>") -> SynthesisSpec:
    """Validate a spec mapping (the content of a spec file); `base_dir` resolves `prompts_csv`."""
    if not isinstance(data, Mapping):
        raise SpecError(f"The spec {source} must be a mapping (keys such as findings, prompts, num_images), got "
                        f"{type(data).__name__}.")
    unknown = sorted(set(map(str, data)) - set(SPEC_KEYS))
    if unknown:
        raise _fail(source, f"unknown key {unknown[0]!r} (known: {', '.join(SPEC_KEYS)}).")
    views = _views()
    normalized: dict[str, Any] = {}
    implied: list[tuple[str, int]] = []
    if data.get("num_images") is not None:
        value = data["num_images"]
        if not _is_count(value) or value < 1:
            raise _fail(source, f"num_images must be a whole number >= 1, got {value!r}.")
        normalized["num_images"] = int(value)
    has_prompts = "prompts" in data or "prompts_csv" in data
    if has_prompts:
        if "prompts" in data and "prompts_csv" in data:
            raise _fail(source, "give either 'prompts' or 'prompts_csv', not both.")
        drawn = sorted(k for k in ("findings", "population", "age_bands", "sex", "view", "template") if k in data)
        if drawn:
            raise _fail(source, f"'{drawn[0]}' cannot be combined with a list of prompts (each prompt is used as "
                                "written).")
        if "prompts_csv" in data:
            csv_path = Path(str(data["prompts_csv"]))
            if not csv_path.is_absolute() and base_dir is not None:
                csv_path = Path(base_dir) / csv_path
            entries = _read_prompts_csv(source, csv_path)
        else:
            entries = data["prompts"]
            if not isinstance(entries, list):
                raise _fail(source, "'prompts' must be a list of prompts.")
        normalized["prompts"], total = _prompt_entries(source, entries, views)
        if total is not None:
            implied.append(("prompt counts", total))
    else:
        if "findings" not in data:
            raise _fail(source, "give 'findings' (counts or proportions per finding) or 'prompts'.")
        normalized["findings"], total = _shares(source, "findings", data["findings"], _finding_key(source))
        if total is not None:
            implied.append(("findings", total))
        if "population" in data:
            normalized["population"], total = _shares(
                source, "population", data["population"], _choice_key(source, "population", POPULATIONS))
            if total is not None:
                implied.append(("population", total))
        if "age_bands" in data:
            normalized["age_bands"] = _age_bands(source, data["age_bands"])
            if "population" in normalized:
                for band in normalized["age_bands"]:
                    if _band_population(band) is None:
                        raise _fail(source, f"age band {band['min']}-{band['max']} spans pediatric (0-"
                                            f"{PEDIATRIC_MAX_AGE}) and adult ages, so it cannot go with 'population'.")
                for population, share in normalized["population"].items():
                    if share and not any(_band_population(b) == population for b in normalized["age_bands"]):
                        raise _fail(source, f"population {population!r} has no age band (pediatric bands end at "
                                            f"{PEDIATRIC_MAX_AGE}, adult bands start at {PEDIATRIC_MAX_AGE + 1}).")
        if "sex" in data:
            normalized["sex"], total = _shares(source, "sex", data["sex"], _choice_key(source, "sex", SEX_NAMES))
            if total is not None:
                implied.append(("sex", total))
        if "view" in data:
            normalized["view"], total = _shares(source, "view", data["view"], _choice_key(source, "view", views))
            if total is not None:
                implied.append(("view", total))
        if data.get("template") is not None:
            normalized["template"] = _check_template(source, data["template"], normalized)
    if len({n for _, n in implied}) > 1:
        described = ", ".join(f"{name} {n}" for name, n in implied)
        raise _fail(source, f"the counts disagree on the number of images ({described}).")
    if implied:
        n = implied[0][1]
        if normalized.get("num_images") is not None and normalized["num_images"] != n:
            raise _fail(source, f"num_images {normalized['num_images']} contradicts the {implied[0][0]} counts, which "
                                f"add up to {n}.")
        normalized["_implied_num_images"] = n
    return SynthesisSpec(normalized=normalized, source=source)


def _check_template(source: str, template: Any, normalized: Mapping[str, Any]) -> str:
    if not isinstance(template, str) or not template.strip():
        raise _fail(source, "'template' must be a non-empty string such as \"{view} chest radiograph. "
                            "{findings_sentence}\".")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise _fail(source, f"the template is not a valid format string ({err}).") from None
    for field in fields:
        if field not in TEMPLATE_FIELDS:
            raise _fail(source, f"the template field {{{field}}} is unknown (known: "
                                f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}).")
        needs = {"view": "view", "age": "age_bands", "sex": "sex"}.get(field)
        if needs and needs not in normalized:
            raise _fail(source, f"the template uses {{{field}}} but the spec has no '{needs}'.")
        if field == "population" and "population" not in normalized and "age_bands" not in normalized:
            raise _fail(source, "the template uses {population} but the spec has neither 'population' nor "
                                "'age_bands'.")
    return template


# ------------------------------------------------------------------------------------------------ expansion
def _counts(shares: Mapping[str, Any], n: int) -> dict[str, int]:
    """Exact counts for `n` images: counts as given, proportions by the largest-remainder method (ties: first)."""
    values = list(shares.values())
    if all(_is_count(v) for v in values):
        return {k: int(v) for k, v in shares.items()}
    exact = [float(v) * n for v in values]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(shares, counts))


def _dealt(shares: Mapping[str, Any], n: int, rng: np.random.Generator) -> list[str]:
    """`n` values with exactly their counts, in a random (seeded) order."""
    values = [key for key, count in _counts(shares, n).items() for _ in range(count)]
    return [values[i] for i in rng.permutation(len(values))]


def _streams(run_seed: int) -> dict[str, np.random.Generator]:
    names = ("findings", "population", "age_band", "age", "sex", "view")
    return {name: np.random.default_rng([int(run_seed), 0x5EC, k]) for k, name in enumerate(names)}


def expand_plan(spec: SynthesisSpec, num_images: int, run_seed: int) -> list[PlanItem]:
    """One `PlanItem` per image index 0..num_images-1, deterministic in (spec, num_images, run_seed)."""
    from ..data.prompts import build_prompt

    norm = spec.normalized
    n = int(num_images)
    if "prompts" in norm:
        entries = norm["prompts"]
        if "count" in entries[0]:
            expanded = [e for e in entries for _ in range(e["count"])]
        else:
            expanded = [entries[i % len(entries)] for i in range(n)]
        items = []
        for index, entry in enumerate(expanded[:n]):
            labels = entry.get("labels")
            label = None if labels is None else (", ".join(labels) if labels else "normal")
            age = entry.get("age")
            population = None if age is None else ("pediatric" if age <= PEDIATRIC_MAX_AGE else "adult")
            items.append(PlanItem(index, entry["prompt"], label, None if labels is None else tuple(labels), age,
                                  entry.get("sex"), entry.get("view"), population))
        return items

    rng = _streams(run_seed)
    findings = _dealt(norm["findings"], n, rng["findings"])
    populations = _dealt(norm["population"], n, rng["population"]) if "population" in norm else [None] * n
    ages: list[int | None] = [None] * n
    if "age_bands" in norm:
        bands = norm["age_bands"]
        groups: dict[str | None, list[int]] = {}
        for index, population in enumerate(populations):
            groups.setdefault(population, []).append(index)
        band_of = [None] * n
        for population in sorted(groups, key=str):
            members = groups[population]
            candidates = [i for i, b in enumerate(bands) if population is None or _band_population(b) == population]
            total = sum(bands[i]["weight"] for i in candidates)
            shares = {str(i): bands[i]["weight"] / total for i in candidates}
            for index, band in zip(members, _dealt(shares, len(members), rng["age_band"])):
                band_of[index] = bands[int(band)]
        draws = rng["age"].random(n)
        for index, band in enumerate(band_of):
            ages[index] = band["min"] + min(int(draws[index] * (band["max"] - band["min"] + 1)),
                                            band["max"] - band["min"])
    sexes = _dealt(norm["sex"], n, rng["sex"]) if "sex" in norm else [None] * n
    views = _dealt(norm["view"], n, rng["view"]) if "view" in norm else [None] * n
    template = norm.get("template")
    items = []
    for index in range(n):
        key = findings[index]
        labels = () if key == "normal" else tuple(key.split(", "))
        age, population = ages[index], populations[index]
        if population is None and age is not None:
            population = "pediatric" if age <= PEDIATRIC_MAX_AGE else "adult"
        if template is None:
            prompt = build_prompt(list(labels), view=views[index] or "", age=age, sex=sexes[index] or "",
                                  population=population or "")
        else:
            prompt = _render(template, labels, views[index], age, sexes[index], population)
        items.append(PlanItem(index, prompt, key, labels, age, sexes[index], views[index], population))
    return items


def _render(template: str, labels, view, age, sex, population) -> str:
    from ..data.prompts import _findings_phrase, _findings_sentence

    phrases = _findings_phrase(list(labels), "")
    text = template.format(findings=", ".join(phrases) if phrases else "no finding",
                           findings_sentence=_findings_sentence(phrases, None), view=view or "",
                           age="" if age is None else age, sex=sex or "", population=population or "")
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def plan_digest(plan: list[PlanItem]) -> str:
    """sha256 of the plan (prompts and metadata of every index): what a resumed run must still make."""
    digest = hashlib.sha256()
    for item in plan:
        digest.update(json.dumps(item.as_dict(), sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
