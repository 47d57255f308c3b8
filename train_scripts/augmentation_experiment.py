#!/usr/bin/env python
"""Does synthetic data help the pneumonia classifier beyond simply having more samples? One reproducible experiment.

    # the full experiment (resumable: rerun the same command after an interruption; it skips finished cells)
    python train_scripts/augmentation_experiment.py --config train_scripts/configs/augmentation_experiment.json

    # part of it: some arms / regimes / seeds (a glob per arm name works), or only rebuild the results from the cells
    python train_scripts/augmentation_experiment.py --arms real real_duplicates_* --regimes low --seeds 0
    python train_scripts/augmentation_experiment.py --aggregate_only

Each cell (arm x regime x seed) builds its training set from a declarative recipe, trains the classifier with
`train_scripts/train_classifier.py` (its `main(argv)`, in this process, with generated flags: one training loop in the
project), and evaluates the best model on the validation split (where the decision threshold is chosen) and on each
test set through the one inference path (`cxr_diffusers.classification`: `make_dataloader` + `pneumonia_probabilities`).

Arms (N = real training images of the regime; r in `ratios`, 0.25 / 0.5 / 1 by default):

* `real`: the N real images, no augmentation.
* `real_classic_aug`: the same images with classic augmentation: `RandomAffine` (+-7 degrees rotation, +-5%
  translation, +-8% zoom, black fill) and `ColorJitter` (brightness +-0.2, contrast +-0.2), the transforms of
  train_classifier.py; no flips (a horizontal flip puts the heart on the right, a vertical one is impossible). Every
  other arm trains without augmentation, so that each measures what its added images do.
* `real_duplicates_{r}`: the control. round(r N) extra copies of real training images, drawn with replacement, with
  the same number per class as the synthetic arm of that ratio (`label_balance`: `real` = the real set's class shares,
  `equal` = half each), so both see the same samples per epoch.
* `real_ldm_{r}_filtered` / `real_ldm_{r}_unfiltered`: round(r N) labelled synthetic images (label from the prompt's
  findings: `read_synthetic_manifest`) from `cxr-diffusers synthesize` folders, per class as above. Filtered: the run
  made with `--filter classifier` (rows with `filter_passed: false` left out). Unfiltered: the run made without a
  filter (`synthetic.ldm_unfiltered`); when that is not given, every image of the filtered run including its
  `filter_passed: false` rows (noted in the cell: that is not a run without the filter). Draws are nested: the
  images of ratio 0.25 are among those of 0.5 (one seeded permutation per class and seed).
* `real_ddpm_pseudo_{p}`: unconditional DDPM images (`train_scripts/train_ddpm.py`; a folder of images, or sampled
  here from its pipeline) are unlabelled, so they are **pseudo-labelled** by the `real` model of the same regime and
  seed: images the input check rejects (`classification.ood.structure_problem`) are dropped, the rest labelled
  argmax and kept when max(P, 1 - P) >= `pseudo_label.min_confidence` (0.9), then round(p N) are drawn per class as
  above (p = `pseudo_label.ratio`, 0.5). Its duplicate control is `real_duplicates_{p}`; a shortfall of confident
  images in a class is recorded (`count_matched: false`).
* `synthetic_pretrain_real_finetune`: a model pretrained on synthetic images only (LDM filtered, round(ratio x the
  full regime's N), per class as above; one pretraining per seed shared by both regimes, validated on the real
  validation split), then fine-tuned on the N real images (`--pretrained_model_name_or_path`).

Regimes: `full` (every real training image) and `low` (10%: patients drawn per class, seeded by the seed, until 10% of
that class's images; the same subset for every arm of a seed). Validation is carved from the official train split by
patient (`load_splits`), the same for every cell; the test sets (the official Kermany test split, the adult NIH test
split) are never trained on.

Metrics per cell and test set (`evaluate_predictions`): accuracy, AUROC, sensitivity, specificity, F1 (and precision,
recall) at the threshold chosen on validation (Youden's J = sensitivity + specificity - 1, maximal; ties: closest to
0.5), with seeded percentile bootstrap 95% CIs over test images. Per arm and regime: mean and std over seeds, and a
hierarchical bootstrap CI of the mean (seeds resampled with replacement x test images resampled, the same image
resamples for every model). Paired comparisons, per regime and test set, of every arm against `real` and against its
duplicate control: mean over the seeds both finished of (arm - reference), with the same hierarchical paired bootstrap
(a resample's seeds and images are shared by both arms), a 95% CI and a two-sided bootstrap p value.

Resume: each cell writes `<output_dir>/cells/<regime>/seed-<s>/<arm>/result.json` with its predictions when done, and
a rerun skips it. The cell's settings (recipe, regime, seed, training flags, data, synthetic folders' metadata digests)
have a fingerprint; a finished cell whose settings changed is refused in one sentence (delete its folder, or use
another output_dir). Arms whose inputs are missing are reported as skipped with the reason. A test set added later is
evaluated from the saved models without training again. Writes the aggregated JSON (`results`, default
docs/results/augmentation_experiment.json) and a plot beside it (AUROC per arm with CIs, per regime and test set).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_diffusers.errors import CXRInputError, DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "train_scripts" / "configs" / "augmentation_experiment.json"
METRIC_NAMES = ("accuracy", "auroc", "sensitivity", "specificity", "f1", "precision", "recall")
CLASSES = (0, 1)
CLASS_NAMES = {0: "NORMAL", 1: "PNEUMONIA"}
NO_AUGMENTATION = {"rotation_degrees": 0.0, "translate": 0.0, "scale_jitter": 0.0, "brightness": 0.0, "contrast": 0.0}
CONFIG_KEYS = {"_comment", "output_dir", "results", "plot", "real_data", "test_sets", "seeds", "regimes", "ratios",
               "label_balance", "arms", "synthetic", "pseudo_label", "pretrain", "training", "classic_augmentation",
               "evaluation", "keep_models"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class ArmSkipped(Exception):
    """An arm's inputs are missing (no synthetic folder, too few images): the cell is reported, not crashed."""


# ------------------------------------------------------------------------------------------------------ config
def load_config(path: str | os.PathLike) -> dict:
    """The experiment config (JSON); unknown top-level keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise CXRInputError(f"--config file {path} does not exist.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CXRInputError(f"--config file {path} is not valid JSON ({err.msg}, line {err.lineno}).") from None
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise CXRInputError(f"--config file {path} has unknown keys: {', '.join(unknown)}.")
    for key in ("real_data", "test_sets", "seeds", "regimes", "training"):
        if key not in config:
            raise CXRInputError(f"--config file {path} has no '{key}'.")
    return config


def ratio_name(ratio: float) -> str:
    return f"{float(ratio):g}"


@dataclass(frozen=True)
class Arm:
    """A declarative training-set recipe."""

    name: str
    kind: str  # real | duplicates | ldm | ddpm_pseudo | pretrain_finetune
    ratio: float = 0.0
    variant: str = ""  # ldm: filtered | unfiltered
    augment: bool = False
    control: str | None = None  # the count-matched duplicate arm
    depends: tuple[str, ...] = ()

    def recipe(self) -> dict:
        return {"kind": self.kind, "ratio": self.ratio, "variant": self.variant, "augment": self.augment,
                "control": self.control}


def all_arms(config: dict) -> list[Arm]:
    """Every arm of the config, in dependency order."""
    ratios = [float(r) for r in config.get("ratios", [0.25, 0.5, 1.0])]
    pseudo_ratio = float(config.get("pseudo_label", {}).get("ratio", 0.5))
    arms = [Arm("real", "real"), Arm("real_classic_aug", "real", augment=True)]
    for r in sorted(set(ratios) | {pseudo_ratio}):
        arms.append(Arm(f"real_duplicates_{ratio_name(r)}", "duplicates", ratio=r))
    for r in ratios:
        for variant in ("filtered", "unfiltered"):
            arms.append(Arm(f"real_ldm_{ratio_name(r)}_{variant}", "ldm", ratio=r, variant=variant,
                            control=f"real_duplicates_{ratio_name(r)}"))
    arms.append(Arm(f"real_ddpm_pseudo_{ratio_name(pseudo_ratio)}", "ddpm_pseudo", ratio=pseudo_ratio,
                    control=f"real_duplicates_{ratio_name(pseudo_ratio)}", depends=("real",)))
    arms.append(Arm("synthetic_pretrain_real_finetune", "pretrain_finetune"))
    wanted = config.get("arms")
    if wanted:
        kept = {a.name for a in arms if any(fnmatch.fnmatchcase(a.name, pattern) for pattern in wanted)}
        kept |= {d for a in arms if a.name in kept for d in a.depends}  # a kept arm's dependencies stay
        arms = [a for a in arms if a.name in kept]
    return arms


def select(names: list[str], patterns: list[str] | None, what: str) -> list[str]:
    if not patterns:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, str(p)) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, str(p)) for n in names)]
    if unmatched:
        raise CXRInputError(f"--{what} {' '.join(map(str, unmatched))} matches none of: {', '.join(names)}.")
    return chosen


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _changed_keys(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class TrainingSet:
    records: list
    counts: dict
    notes: list[str] = field(default_factory=list)
    init: str | None = None  # a model folder to start from (fine-tuning)


def extra_class_counts(n_extra: int, real_records: list, balance: str = "real") -> dict[int, int]:
    """Extra images per class: the real set's class shares (largest remainder) or half each."""
    if balance == "equal":
        return {0: n_extra // 2, 1: n_extra - n_extra // 2}
    if balance != "real":
        raise CXRInputError(f"label_balance must be 'real' or 'equal', not {balance!r}.")
    n = len(real_records)
    per_class = {c: sum(r.label == c for r in real_records) for c in CLASSES}
    exact = {c: n_extra * per_class[c] / n for c in CLASSES}
    counts = {c: math.floor(exact[c]) for c in CLASSES}
    for c in sorted(CLASSES, key=lambda c: exact[c] - counts[c], reverse=True)[: n_extra - sum(counts.values())]:
        counts[c] += 1
    return counts


def patient_subset(records: list, fraction: float, seed: int) -> list:
    """About `fraction` of the images of each class, taken as whole patients (shuffled, seeded), in record order."""
    if fraction >= 1:
        return list(records)
    rng = np.random.default_rng([int(seed), 1729])
    chosen: set[int] = set()
    for c in CLASSES:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            if r.label == c:
                groups.setdefault(r.patient_id or f"image:{r.name}:{i}", []).append(i)
        total = sum(len(g) for g in groups.values())
        if not total:
            continue
        target = max(1, round(fraction * total))
        patients = sorted(groups)
        taken = 0
        for index in rng.permutation(len(patients)):
            members = groups[patients[index]]
            if taken + len(members) <= target:
                chosen.update(members)
                taken += len(members)
            if taken >= target:
                break
        if taken == 0:  # every patient has more images than the target: take the smallest one
            smallest = min(patients, key=lambda p: len(groups[p]))
            chosen.update(groups[smallest])
    return [records[i] for i in sorted(chosen)]


def _class_names(records: list) -> dict[str, int]:
    return {CLASS_NAMES[c]: sum(r.label == c for r in records) for c in CLASSES}


def _metadata_rows(folder: Path) -> list[dict]:
    manifest = folder / "metadata.jsonl"
    if not manifest.is_file():
        manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        return []
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


# ------------------------------------------------------------------------------------------------------ training
_TRAIN_CLASSIFIER = None


def _train_classifier_module():
    global _TRAIN_CLASSIFIER
    if _TRAIN_CLASSIFIER is None:
        spec = importlib.util.spec_from_file_location("train_classifier_for_experiment",
                                                      Path(__file__).resolve().parent / "train_classifier.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _TRAIN_CLASSIFIER = module
    return _TRAIN_CLASSIFIER


def run_training(argv: list[str]) -> dict:
    """train_classifier.py's `main(argv)` in this process (a flag error becomes one sentence)."""
    module = _train_classifier_module()
    try:
        return module.main(argv)
    except SystemExit as exit_info:
        raise CXRInputError(f"train_classifier.py refused the generated flags {' '.join(argv)} (exit "
                            f"{exit_info.code}); see its message above.") from None


def flags_to_argv(flags: dict) -> list[str]:
    argv: list[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


# ------------------------------------------------------------------------------------------------------ evaluation
def youden_threshold(labels, probs) -> float:
    """The threshold maximising sensitivity + specificity - 1 on (labels, P(PNEUMONIA)); ties: closest to 0.5; 0.5
    when one class is missing. Positive means P >= threshold."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if not n_pos or not n_neg:
        return 0.5
    best, best_j = 0.5, -np.inf
    for t in np.unique(probs):
        pred = probs >= t
        j = (pred & (labels == 1)).sum() / n_pos + (~pred & (labels == 0)).sum() / n_neg - 1
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_j = float(t), j
    return best


def predict_records(model_dir: Path, records: list, resolution: int, batch_size: int = 64) -> np.ndarray:
    """P(PNEUMONIA) of records through the one inference path (the evaluation transform of train_classifier.py)."""
    import torch

    from cxr_diffusers.classification import (
        build_transforms,
        load_classifier,
        make_dataloader,
        pneumonia_probabilities,
    )

    model, _ = load_classifier(model_dir)
    loader = make_dataloader(records, build_transforms(resolution, train=False), batch_size)
    out = [pneumonia_probabilities(model, batch["pixel_values"]).cpu() for batch in loader]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _records_digest(records: list) -> str:
    return _digest([(r.name, r.label) for r in records])[:16]


def hierarchical_bootstrap(samples: np.ndarray, points: np.ndarray, rng, confidence: float = 0.95) -> dict:
    """Mean over seeds of `points` (k,) with a CI from `samples` (k, B): each bootstrap draw resamples the k seeds
    with replacement and uses that draw's image resample; NaN resamples are ignored."""
    import warnings

    k, n_boot = samples.shape
    pick = rng.integers(0, k, size=(n_boot, k))
    with warnings.catch_warnings():  # a draw whose metric is undefined for every seed (one-class resample) is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = np.nanmean(samples[pick, np.arange(n_boot)[:, None]], axis=1) if n_boot else np.zeros(0)
    stats = stats[np.isfinite(stats)]
    alpha = (1 - confidence) / 2
    out = {"mean": float(np.mean(points)), "std": float(np.std(points, ddof=1)) if k > 1 else 0.0,
           "values": [float(v) for v in points], "ci_low": math.nan, "ci_high": math.nan}
    if len(stats):
        out["ci_low"], out["ci_high"] = float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
        out["p_bootstrap"] = float(min(1.0, 2 * min((stats <= 0).mean(), (stats >= 0).mean())))
    return out


# ------------------------------------------------------------------------------------------------------ experiment
class Experiment:
    """The cells of one config: their training sets, training, evaluation, resume and the aggregated results."""

    def __init__(self, config: dict, config_path: str | None = None, output_dir: str | None = None,
                 results: str | None = None, progress: bool = True):
        self.config = copy.deepcopy(config)
        self.config_path = config_path
        self.output_dir = Path(output_dir or config.get("output_dir", "runs/augmentation_experiment"))
        self.results_path = Path(results or config.get("results", "docs/results/augmentation_experiment.json"))
        self.plot_path = Path(config["plot"]) if config.get("plot") else self.results_path.with_suffix(".png")
        self.progress = progress
        self.arms = {a.name: a for a in all_arms(self.config)}
        self.regimes = {name: (spec if isinstance(spec, dict) else {"fraction": float(spec)})
                        for name, spec in self.config["regimes"].items()}
        self.seeds = [int(s) for s in self.config["seeds"]]
        self.training = dict(self.config["training"])
        self.resolution = int(self.training.get("resolution", 64))
        self.balance = self.config.get("label_balance", "real")
        self.evaluation = {"num_bootstrap": 1000, "bootstrap_seed": 0, "threshold": "youden",
                           **self.config.get("evaluation", {})}
        self.synthetic = self.config.get("synthetic", {}) or {}
        self._splits = None
        self._subsets: dict = {}
        self._pools: dict = {}
        self._test_sets: dict | None = None
        self.train_calls = 0

    # ---------------------------------------------------------------- real data
    def splits(self) -> dict:
        """train / validation records of the real data (validation carved by patient, the same for every cell)."""
        if self._splits is None:
            from cxr_diffusers.classification import load_splits

            spec = self.config["real_data"]
            root = spec.get("train_data_dir")
            if not root or not Path(root).exists():
                raise DataError(f"The real training data {root!r} (config real_data.train_data_dir) does not exist; "
                                "give the Kermany root or a `cxr-diffusers data build` folder.")
            splits, info = load_splits(root, dataset=spec.get("dataset", "auto"),
                                       validation_size=float(spec.get("validation_size", 0.1)),
                                       seed=int(spec.get("split_seed", 0)),
                                       max_train_samples=spec.get("max_train_samples"),
                                       max_eval_samples=spec.get("max_eval_samples"))
            self._splits = {"train": splits["train"], "validation": splits["validation"], "info": info}
        return self._splits

    def real_train(self, regime: str, seed: int) -> list:
        """The real training images of a regime and seed (the same list for every arm)."""
        key = (regime, seed)
        if key not in self._subsets:
            fraction = float(self.regimes[regime].get("fraction", 1.0))
            self._subsets[key] = patient_subset(self.splits()["train"], fraction, seed)
        return self._subsets[key]

    def test_sets(self) -> dict:
        """{name: records} of the available test sets; unavailable ones map to the reason (a string)."""
        if self._test_sets is None:
            self._test_sets = {name: self._load_test_set(name, spec)
                               for name, spec in self.config["test_sets"].items()}
        return self._test_sets

    def _load_test_set(self, name: str, spec: dict):
        import datasets

        from cxr_diffusers.classification import load_splits, records_from_dataset
        from cxr_diffusers.classification.data import detect_dataset

        if not spec.get("data"):
            return "no data folder is configured (test_sets.<name>.data)"
        root = Path(spec["data"])
        if not root.exists():
            return f"{root} does not exist" + (f" ({spec['build']})" if spec.get("build") else "")
        kind = spec.get("dataset") or detect_dataset(root)
        split = spec.get("split", "test")
        if kind in ("kermany", "pneumoniamnist"):
            splits, _ = load_splits(root, dataset=kind)
            if split not in splits:
                return f"{root} has no {split} split"
            records = splits[split]
        else:
            data = datasets.load_from_disk(str(root))
            if split not in data:
                return f"{root} has no {split} split (splits: {', '.join(data)})"
            table = data[split]
            if spec.get("sources") and "source" in table.column_names:
                keep = set(spec["sources"])
                table = table.filter(lambda source: source in keep, input_columns="source")
            if spec.get("exclude_labels") and "labels" in table.column_names:
                drop = set(spec["exclude_labels"])
                table = table.filter(lambda labels: not drop & set(labels or []), input_columns="labels")
            records = records_from_dataset(table)
        if spec.get("max_images"):
            from cxr_diffusers.classification import stratified_subset

            records = stratified_subset(records, int(spec["max_images"]), 0)
        if not records:
            return f"the {split} split of {root} holds no images after the filters"
        return records

    # ---------------------------------------------------------------- synthetic inputs
    def _synthetic_folder(self, key: str) -> Path | None:
        value = self.synthetic.get(key)
        return Path(value) if value else None

    def ldm_pool(self, variant: str) -> tuple[list, list[str]]:
        """The LDM synthetic records of a variant and notes on where they come from; ArmSkipped when missing."""
        from cxr_diffusers.classification import read_synthetic_manifest

        if variant in self._pools:
            return self._pools[variant]
        filtered = self._synthetic_folder("ldm_filtered")
        notes: list[str] = []
        if variant == "filtered":
            if filtered is None or not (filtered / "metadata.jsonl").is_file():
                raise ArmSkipped(f"no filtered LDM synthesize folder (synthetic.ldm_filtered = {filtered}; make it "
                                 "with `cxr-diffusers synthesize ... --filter classifier`)")
            flags = [row.get("filter_passed") for row in _metadata_rows(filtered)]
            if all(f is None for f in flags):
                raise ArmSkipped(f"{filtered} was made without a quality filter (no filter_passed flags)")
            records = read_synthetic_manifest(filtered)
            notes.append(f"{filtered}: {sum(f is False for f in flags)} filter_passed false rows left out")
        else:
            unfiltered = self._synthetic_folder("ldm_unfiltered")
            if unfiltered is not None:
                if not (unfiltered / "metadata.jsonl").is_file():
                    raise ArmSkipped(f"no unfiltered LDM synthesize folder at {unfiltered} (synthetic.ldm_unfiltered)")
                records = read_synthetic_manifest(unfiltered, include_failed=True)
                notes.append(f"{unfiltered}: a synthesize run without the quality filter")
            elif filtered is not None and (filtered / "metadata.jsonl").is_file():
                records = read_synthetic_manifest(filtered, include_failed=True)
                failed = sum(r.origin == "synthetic-failed" for r in records)
                notes.append(f"every image of the filtered run {filtered}, including its {failed} filter_passed "
                             "false rows (not a run without the filter: set synthetic.ldm_unfiltered for that)")
            else:
                raise ArmSkipped("no LDM synthesize folder (synthetic.ldm_unfiltered / synthetic.ldm_filtered)")
        self._pools[variant] = (records, notes)
        return records, notes

    def _folder_fingerprint(self, arm: Arm) -> dict:
        """Digests of the synthetic inputs an arm reads (part of its cell's settings)."""
        out = {}
        if arm.kind == "ldm":  # only the folder this variant reads (adding another folder later changes no cell)
            keys = ["ldm_filtered"] if arm.variant == "filtered" or not self.synthetic.get("ldm_unfiltered") \
                else ["ldm_unfiltered"]
        else:
            keys = {"pretrain_finetune": [self.pretrain_source()],
                    "ddpm_pseudo": ["ddpm_images", "ddpm_pipeline"]}.get(arm.kind, [])
        for key in keys:
            folder = self._synthetic_folder(key)
            if folder is None:
                continue
            manifest = folder / "metadata.jsonl"
            if manifest.is_file():
                out[key] = {"path": str(folder), "metadata_sha256": _file_digest(manifest)}
            elif folder.is_dir():
                files = _folder_images(folder) if key == "ddpm_images" else []
                out[key] = {"path": str(folder), "images": len(files)}
        if arm.kind == "ddpm_pseudo":
            out["pseudo_label"] = self.config.get("pseudo_label", {})
            out["ddpm_sampling"] = {k: self.synthetic.get(k) for k in ("ddpm_num_images", "ddpm_inference_steps")}
        return out

    def pretrain_source(self) -> str:
        return self.config.get("pretrain", {}).get("source", "ldm_filtered")

    def _draw(self, pool: list, counts: dict[int, int], seed: int, stream: str, replace: bool) -> list:
        """`counts[c]` records of class c from `pool` (a seeded permutation per class, nested across counts; with
        replacement for duplicates)."""
        out = []
        for c in CLASSES:
            members = [r for r in pool if r.label == c]
            need = counts.get(c, 0)
            if not need:
                continue
            rng = np.random.default_rng([int(seed), c, int(hashlib.sha256(stream.encode()).hexdigest()[:8], 16)])
            if replace:
                out += [members[i] for i in rng.choice(len(members), size=need, replace=True)]
            else:
                if len(members) < need:
                    raise ArmSkipped(f"needs {need} {CLASS_NAMES[c]} images, the pool has {len(members)}")
                out += [members[i] for i in rng.permutation(len(members))[:need]]
        return out

    # ---------------------------------------------------------------- recipes
    def build_training_set(self, arm_name: str, regime: str, seed: int) -> TrainingSet:
        """The training set of a cell (ArmSkipped when its inputs are missing)."""
        from cxr_diffusers.classification import Record

        arm = self.arms[arm_name]
        real = self.real_train(regime, seed)
        n = len(real)
        counts = {"real": n, "real_by_class": _class_names(real)}
        if arm.kind == "real":
            return TrainingSet(list(real), {**counts, "extra": 0, "total": n, "by_class": _class_names(real)})
        if arm.kind == "duplicates":
            per_class = extra_class_counts(round(arm.ratio * n), real, self.balance)
            drawn = self._draw(real, per_class, seed, f"duplicates-{arm.ratio}", replace=True)
            extra = [Record(r.source, r.label, "duplicate", r.name, r.patient_id) for r in drawn]
            notes = [(f"{len(extra)} copies of real training images drawn with replacement "
                      f"({len({r.name for r in extra})} distinct)")]
            return self._finish(real, extra, counts, notes)
        if arm.kind == "ldm":
            pool, notes = self.ldm_pool(arm.variant)
            per_class = extra_class_counts(round(arm.ratio * n), real, self.balance)
            try:
                extra = self._draw(pool, per_class, seed, "ldm", replace=False)
            except ArmSkipped as err:
                raise ArmSkipped(f"ratio {ratio_name(arm.ratio)} x {n} real: {err} ({notes[0]})") from None
            counts["filter_failed_included"] = sum(r.origin == "synthetic-failed" for r in extra)
            return self._finish(real, extra, counts, notes)
        if arm.kind == "ddpm_pseudo":
            return self._ddpm_training_set(arm, regime, seed, real, counts)
        if arm.kind == "pretrain_finetune":
            model = self.pretrain_model(seed)
            ts = TrainingSet(list(real), {**counts, "extra": 0, "total": n, "by_class": _class_names(real),
                                          "pretrained_on": self._pretrain_counts(seed)},
                             [f"fine-tuned from {model} (pretrained on synthetic images only)"], init=str(model))
            return ts
        raise CXRInputError(f"Unknown arm kind {arm.kind!r}.")

    def _finish(self, real: list, extra: list, counts: dict, notes: list[str]) -> TrainingSet:
        records = list(real) + list(extra)
        return TrainingSet(records, {**counts, "extra": len(extra), "extra_by_class": _class_names(extra),
                                     "total": len(records), "by_class": _class_names(records)}, notes)

    # ---------------------------------------------------------------- pretraining
    def pretrain_set(self, seed: int) -> list:
        source = self.pretrain_source()
        if source not in ("ldm_filtered", "ldm_unfiltered"):
            raise CXRInputError(f"pretrain.source must be ldm_filtered or ldm_unfiltered, not {source!r}.")
        pool, _ = self.ldm_pool(source.split("_", 1)[1])
        full = self.splits()["train"]  # the full regime's N, whatever the regime of the fine-tuning
        ratio = float(self.config.get("pretrain", {}).get("ratio", 1.0))
        per_class = extra_class_counts(round(ratio * len(full)), full, self.balance)
        try:
            return self._draw(pool, per_class, seed, "pretrain", replace=False)
        except ArmSkipped as err:
            raise ArmSkipped(f"synthetic pretraining ({ratio:g} x {len(full)} real): {err}") from None

    def _pretrain_counts(self, seed: int) -> dict:
        result = self.output_dir / "pretrain" / f"seed-{seed}" / "result.json"
        return json.loads(result.read_text()).get("counts", {}) if result.is_file() else {}

    def pretrain_model(self, seed: int) -> Path:
        """The synthetic-only pretrained model of a seed (trained once, shared by the regimes)."""
        cell_dir = self.output_dir / "pretrain" / f"seed-{seed}"
        settings = {"pretrain": self.config.get("pretrain", {}), "seed": seed, "training": self._flags(None, "pretrain"),
                    "inputs": self._folder_fingerprint(self.arms["synthetic_pretrain_real_finetune"]),
                    "real_data": self.config["real_data"], "label_balance": self.balance}
        result = self._finished(cell_dir, settings, f"pretraining seed {seed}")
        model = cell_dir / "train" / "model"
        if result is not None and (model / "config.json").is_file():
            return model
        records = self.pretrain_set(seed)
        flags = self._flags(None, "pretrain")
        self._train(cell_dir, records, flags, seed, init=None)
        counts = {"synthetic": len(records), "by_class": _class_names(records)}
        self._write_json(cell_dir / "result.json", {"status": "done", "settings": settings,
                                                    "fingerprint": _digest(settings), "counts": counts})
        return model

    # ---------------------------------------------------------------- DDPM
    def ddpm_images(self) -> list[Path]:
        folder = self._synthetic_folder("ddpm_images")
        if folder is not None and folder.is_dir() and _folder_images(folder):
            return _folder_images(folder)
        pipeline = self._synthetic_folder("ddpm_pipeline")
        if pipeline is None or not (pipeline / "model_index.json").is_file():
            raise ArmSkipped(f"no DDPM images (synthetic.ddpm_images = {folder}) and no DDPM pipeline to sample them "
                             f"from (synthetic.ddpm_pipeline = {pipeline}; train one with train_scripts/train_ddpm.py)")
        target = self.output_dir / "ddpm_images"
        generate_ddpm_images(pipeline, target, int(self.synthetic.get("ddpm_num_images", 1000)),
                             int(self.synthetic.get("ddpm_inference_steps", 50)),
                             int(self.synthetic.get("ddpm_batch_size", 16)), progress=self.progress)
        return _folder_images(target)

    def _ddpm_training_set(self, arm: Arm, regime: str, seed: int, real: list, counts: dict) -> TrainingSet:
        from cxr_diffusers.classification import Record, load_xray
        from cxr_diffusers.classification.ood import structure_problem

        files = self.ddpm_images()
        real_cell = self.cell_dir("real", regime, seed)
        real_model = real_cell / "train" / "model"
        if not (real_cell / "result.json").is_file() or not (real_model / "config.json").is_file():
            raise ArmSkipped(f"the real model of {regime} seed {seed} is not trained (run the `real` arm first)")
        cache = self.cell_dir(arm.name, regime, seed) / "pseudo_labels.json"
        names = [str(p) for p in files]
        stored = json.loads(cache.read_text()) if cache.is_file() else {}
        if stored.get("files") != names or stored.get("model") != str(real_model):
            rejected = {str(p): structure_problem(load_xray(p)) for p in files}
            usable = [p for p in files if not rejected[str(p)]]
            probs = predict_records(real_model, [Record(str(p), 0, "ddpm", p.name) for p in usable], self.resolution)
            stored = {"files": names, "model": str(real_model),
                      "p_pneumonia": {str(p): round(float(q), 6) for p, q in zip(usable, probs)},
                      "rejected": {k: v for k, v in rejected.items() if v}}
            self._write_json(cache, stored)
        options = {"min_confidence": 0.9, **self.config.get("pseudo_label", {})}
        pool = []
        for path, p in stored["p_pneumonia"].items():
            if max(p, 1 - p) >= float(options["min_confidence"]):
                pool.append(Record(path, int(p >= 0.5), "pseudo", Path(path).name))
        per_class = extra_class_counts(round(arm.ratio * len(real)), real, self.balance)
        available = {c: sum(r.label == c for r in pool) for c in CLASSES}
        take = {c: min(per_class[c], available[c]) for c in CLASSES}
        extra = self._draw(pool, take, seed, "ddpm", replace=False)
        counts.update({"ddpm_images": len(files), "ddpm_not_radiographs": len(stored["rejected"]),
                       "ddpm_confident": len(pool), "count_matched": take == per_class,
                       "wanted_by_class": {CLASS_NAMES[c]: per_class[c] for c in CLASSES}})
        notes = [(f"pseudo-labelled by {real_model} (argmax, confidence >= {options['min_confidence']}); "
                  f"{len(pool)} of {len(files)} DDPM images confident, {len(stored['rejected'])} not radiographs")]
        if take != per_class:
            notes.append(f"too few confident images: {take} of {per_class} per class (not count-matched)")
        return self._finish(real, extra, counts, notes)

    # ---------------------------------------------------------------- cells
    def cell_dir(self, arm: str, regime: str, seed: int) -> Path:
        return self.output_dir / "cells" / regime / f"seed-{seed}" / arm

    def _flags(self, arm: Arm | None, regime: str) -> dict:
        flags = {"report_to": "none", "num_bootstrap": 100, **self.training}
        if regime == "pretrain":
            flags.update(self.config.get("pretrain", {}).get("training", {}))
        else:
            flags.update(self.regimes[regime].get("training", {}))
        augment = arm is not None and arm.augment
        flags.update(self.config.get("classic_augmentation", {}) if augment else NO_AUGMENTATION)
        if augment and not self.config.get("classic_augmentation"):
            flags.update({"rotation_degrees": 7.0, "translate": 0.05, "scale_jitter": 0.08, "brightness": 0.2,
                          "contrast": 0.2})
        return flags

    def cell_settings(self, arm_name: str, regime: str, seed: int) -> dict:
        """Everything a cell's training depends on (its fingerprint)."""
        arm = self.arms[arm_name]
        settings = {"arm": arm.recipe(), "regime": self.regimes[regime], "seed": seed,
                    "training": self._flags(arm, regime), "real_data": self.config["real_data"],
                    "label_balance": self.balance, "inputs": self._folder_fingerprint(arm)}
        if arm.kind == "pretrain_finetune":
            settings["pretrain"] = {"config": self.config.get("pretrain", {}), "training": self._flags(None, "pretrain")}
        for dependency in arm.depends:
            settings[f"depends.{dependency}"] = _digest(self.cell_settings(dependency, regime, seed))
        return settings

    def _finished(self, cell_dir: Path, settings: dict, label: str) -> dict | None:
        """The result of a finished cell with these settings, None when unfinished; a changed cell is refused."""
        path = cell_dir / "result.json"
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("fingerprint") != _digest(settings):
            changed = _changed_keys(result.get("settings", {}), json.loads(json.dumps(settings, default=str)))
            raise CXRInputError(f"{label} was finished with other settings ({', '.join(changed[:6]) or 'fingerprint'} "
                                f"changed); delete {cell_dir} to run it again with these, or use another output_dir.")
        return result

    def _train(self, cell_dir: Path, records: list, flags: dict, seed: int, init: str | None) -> None:
        data_dir = cell_dir / "data"
        write_training_dataset(records, self.splits()["validation"], data_dir, self.output_dir / "images")
        argv = ["--train_data_dir", str(data_dir), "--dataset", "saved", "--output_dir", str(cell_dir / "train"),
                "--seed", str(seed), "--resume_from_checkpoint", "latest",
                *flags_to_argv({**flags, **({"pretrained_model_name_or_path": init} if init else {})})]
        self.train_calls += 1
        run_training(argv)
        if not (cell_dir / "train" / "model" / "config.json").is_file():
            raise DataError(f"train_classifier.py left no model in {cell_dir / 'train' / 'model'}.")
        for stale in [*(cell_dir / "train").glob("checkpoint-*"), cell_dir / "train" / "best", data_dir]:
            shutil.rmtree(stale, ignore_errors=True)

    def run_cell(self, arm_name: str, regime: str, seed: int) -> dict:
        """Train and evaluate one cell unless it is finished; returns its result (status done or skipped)."""
        cell_dir = self.cell_dir(arm_name, regime, seed)
        label = f"cell {arm_name} / {regime} / seed {seed}"
        arm = self.arms[arm_name]
        try:
            settings = self.cell_settings(arm_name, regime, seed)
            result = self._finished(cell_dir, settings, label)
            if result is None:
                for dependency in arm.depends:
                    self.run_cell(dependency, regime, seed)
                training_set = self.build_training_set(arm_name, regime, seed)
                start = time.time()
                self._train(cell_dir, training_set.records, settings["training"], seed, training_set.init)
                metrics = json.loads((cell_dir / "train" / "model" / "metrics.json").read_text())
                result = {"status": "done", "arm": arm_name, "regime": regime, "seed": seed, "settings": settings,
                          "fingerprint": _digest(settings), "counts": training_set.counts,
                          "notes": training_set.notes, "train_set_sha256": _records_digest(training_set.records),
                          "training": {**metrics.get("training", {}), "wall_seconds": round(time.time() - start, 1),
                                       "validation_best": metrics.get("validation_best")},
                          "predictions": {}}
        except ArmSkipped as err:
            return {"status": "skipped", "arm": arm_name, "regime": regime, "seed": seed, "reason": str(err)}
        self._evaluate(cell_dir, result)
        return result

    def _evaluate(self, cell_dir: Path, result: dict) -> None:
        """Predictions of the cell's model on validation and every available test set (missing ones only)."""
        predictions = result.setdefault("predictions", {})
        model = cell_dir / "train" / "model"
        wanted = {"validation": self.splits()["validation"],
                  **{k: v for k, v in self.test_sets().items() if not isinstance(v, str)}}
        missing = {k: v for k, v in wanted.items() if predictions.get(k, {}).get("digest") != _records_digest(v)}
        if missing and not (model / "config.json").is_file():
            result.setdefault("notes", []).append(f"model deleted (keep_models false): not evaluated on "
                                                  f"{', '.join(missing)}")
            missing = {}
        for name, records in missing.items():
            probs = predict_records(model, records, self.resolution)
            predictions[name] = {"digest": _records_digest(records), "labels": [int(r.label) for r in records],
                                 "p_pneumonia": [round(float(p), 6) for p in probs]}
        if "validation" in predictions:
            validation = predictions["validation"]
            result["threshold"] = (youden_threshold(validation["labels"], validation["p_pneumonia"])
                                   if self.evaluation["threshold"] == "youden" else float(self.evaluation["threshold"]))
        if missing or not (cell_dir / "result.json").is_file():
            self._write_json(cell_dir / "result.json", result)
        if not self.config.get("keep_models", True) and result["arm"] not in ("real",):
            shutil.rmtree(model, ignore_errors=True)

    @staticmethod
    def _write_json(path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.partial")
        staging.write_text(json.dumps(value, indent=1, default=_json_default))
        os.replace(staging, path)

    # ---------------------------------------------------------------- run + aggregate
    def cells(self, arms=None, regimes=None, seeds=None) -> list[tuple[str, str, int]]:
        arm_names = select(list(self.arms), arms, "arms")
        regime_names = select(list(self.regimes), regimes, "regimes")
        seed_list = [s for s in self.seeds if seeds is None or s in set(map(int, seeds))]
        if seeds is not None and not seed_list:
            raise CXRInputError(f"--seeds {' '.join(map(str, seeds))}: none of them is in the config's seeds "
                                f"{self.seeds}.")
        return [(a, r, s) for s in seed_list for r in regime_names for a in arm_names]

    def run(self, arms=None, regimes=None, seeds=None) -> dict:
        from tqdm.auto import tqdm

        todo = self.cells(arms, regimes, seeds)
        self.splits()
        unavailable = {k: v for k, v in self.test_sets().items() if isinstance(v, str)}
        for name, reason in unavailable.items():
            print(f"warning: test set {name} is not available: {reason}; cells are evaluated on the others and "
                  "on it in a later run once it exists.", file=sys.stderr)
        bar = tqdm(todo, desc="augmentation experiment", unit="cell", disable=not self.progress)
        for arm, regime, seed in bar:
            bar.set_postfix_str(f"{arm} / {regime} / seed {seed}")
            result = self.run_cell(arm, regime, seed)
            if result["status"] == "skipped":
                bar.write(f"skipped {arm} / {regime} / seed {seed}: {result['reason']}")
        return self.aggregate()

    def aggregate(self) -> dict:
        """The results JSON of every cell of the config (done, skipped with the reason, or pending) and the plot."""
        results = {}
        for arm, regime, seed in self.cells():
            path = self.cell_dir(arm, regime, seed) / "result.json"
            if path.is_file():
                result = json.loads(path.read_text())
                if result.get("fingerprint") != _digest(self.cell_settings(arm, regime, seed)):
                    result = {"status": "stale", "reason": "finished with other settings than the config's"}
            else:
                try:
                    self._check_inputs(arm, regime, seed)
                    result = {"status": "pending", "reason": "not run yet"}
                except ArmSkipped as err:
                    result = {"status": "skipped", "reason": str(err)}
            results[(arm, regime, seed)] = result
        document = summarize(self, results)
        self._write_json(self.results_path, document)
        plot_results(document, self.plot_path)
        return document

    def _check_inputs(self, arm_name: str, regime: str, seed: int) -> None:
        """ArmSkipped when a pending cell's inputs are missing (without training anything)."""
        arm = self.arms[arm_name]
        if arm.kind == "ldm":
            self.build_training_set(arm_name, regime, seed)
        elif arm.kind == "pretrain_finetune":
            self.pretrain_set(seed)
        elif arm.kind == "ddpm_pseudo":
            folder, pipeline = self._synthetic_folder("ddpm_images"), self._synthetic_folder("ddpm_pipeline")
            if not ((folder and folder.is_dir() and _folder_images(folder)) or
                    (pipeline and (pipeline / "model_index.json").is_file())):
                self.ddpm_images()


def _json_default(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------------------------------ data on disk
def write_training_dataset(train: list, validation: list, folder: Path, image_cache: Path) -> None:
    """A saved DatasetDict (train, validation) of image *paths* (a string column, read lazily by load_splits): images
    held as bytes are written once to `image_cache` (content-addressed PNG/JPEG files)."""
    import datasets

    def rows(records):
        paths = [materialize(r, image_cache) for r in records]
        return {"image": paths, "labels": [["pneumonia"] if r.label == 1 else [] for r in records],
                "file_name": [r.name for r in records], "origin": [r.origin for r in records],
                "patient_id": [r.patient_id for r in records]}

    shutil.rmtree(folder, ignore_errors=True)
    features = datasets.Features({"image": datasets.Value("string"),
                                  "labels": datasets.Sequence(datasets.Value("string")),
                                  "file_name": datasets.Value("string"), "origin": datasets.Value("string"),
                                  "patient_id": datasets.Value("string")})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(train), features=features),
                          "validation": datasets.Dataset.from_dict(rows(validation), features=features)}
                         ).save_to_disk(str(folder))


def materialize(record, image_cache: Path) -> str:
    """An absolute file path holding the record's image (bytes are written to `image_cache` once)."""
    source = record.source
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        digest = hashlib.sha256(source).hexdigest()[:24]
        suffix = ".jpg" if bytes(source[:3]) == b"\xff\xd8\xff" else ".png" if bytes(source[:4]) == b"\x89PNG" \
            else ".img"
        path = image_cache / digest[:2] / f"{digest}{suffix}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.partial")
            staging.write_bytes(bytes(source))
            os.replace(staging, path)
        return str(path.resolve())
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).resolve())
    raise DataError(f"Cannot store the image of {record.name} ({type(source).__name__}) for training.")


def generate_ddpm_images(pipeline_dir: Path, folder: Path, count: int, steps: int, batch_size: int = 16,
                         seed: int = 0, progress: bool = True) -> None:
    """Sample `count` images from a DDPMPipeline folder with DDIM in `steps` steps into `folder/NNNNNN.png` (image i
    from its own generator seeded (seed, i); existing files are kept, so an interrupted sampling resumes)."""
    import PIL.Image
    import torch
    from diffusers import DDIMScheduler, DDPMPipeline
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (folder / f"{i:06d}.png").is_file()]
    if not missing:
        return
    pipe = DDPMPipeline.from_pretrained(str(pipeline_dir))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for start in tqdm(range(0, len(missing), batch_size), desc="DDPM images", disable=not progress):
        batch = missing[start:start + batch_size]
        generators = [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
                      for i in batch]
        images = pipe(batch_size=len(batch), generator=generators, num_inference_steps=steps, output_type="np").images
        for i, image in zip(batch, images):
            array = np.clip(np.rint(np.asarray(image)[..., 0] * 255), 0, 255).astype(np.uint8)
            staging = folder / f".{i:06d}.png.partial"
            PIL.Image.fromarray(array, mode="L").save(staging, format="PNG")
            os.replace(staging, folder / f"{i:06d}.png")


# ------------------------------------------------------------------------------------------------------ summary
def summarize(experiment: Experiment, results: dict) -> dict:
    """The aggregated JSON: every cell with its metrics and CIs, per-arm summaries and paired comparisons."""
    from cxr_diffusers.classification import evaluate_predictions, resampled_metrics

    ev = experiment.evaluation
    n_boot, boot_seed = int(ev["num_bootstrap"]), int(ev["bootstrap_seed"])
    test_sets = experiment.test_sets()
    names = list(experiment.config["test_sets"])
    # one matrix of image resamples per test set, shared by every model (paired comparisons)
    index = {}
    for t_i, name in enumerate(names):
        n = next((len(r["predictions"][name]["labels"]) for r in results.values()
                  if r.get("status") == "done" and name in r.get("predictions", {})), 0)
        if n:
            index[name] = np.random.default_rng([boot_seed, t_i]).integers(0, n, size=(n_boot, n))
    cells, samples, points = [], {}, {}
    for (arm, regime, seed), result in results.items():
        cell = {"arm": arm, "regime": regime, "seed": seed, "status": result.get("status")}
        if result.get("status") != "done":
            cell["reason"] = result.get("reason")
            cells.append(cell)
            continue
        threshold = result.get("threshold", 0.5)
        cell.update({"counts": result.get("counts"), "notes": result.get("notes", []), "threshold": threshold,
                     "training": result.get("training"), "train_set_sha256": result.get("train_set_sha256"),
                     "metrics": {}})
        for name in names:
            pred = result.get("predictions", {}).get(name)
            if pred is None or name not in index or len(pred["labels"]) != index[name].shape[1]:
                cell["metrics"][name] = None
                continue
            y, p = np.asarray(pred["labels"]), np.asarray(pred["p_pneumonia"])
            evaluated = evaluate_predictions(y, p, threshold=threshold, n_bootstrap=n_boot, seed=boot_seed)
            cell["metrics"][name] = {m: evaluated["metrics"][m] for m in METRIC_NAMES}
            cell["metrics"][name]["n"] = evaluated["n"]
            cell["metrics"][name]["confusion_matrix"] = evaluated["confusion_matrix"]
            draws = resampled_metrics(y, p, index[name], threshold=threshold)
            for m in METRIC_NAMES:
                samples[(arm, regime, name, m, seed)] = draws[m]
                points[(arm, regime, name, m, seed)] = evaluated["metrics"][m]["value"]
        cells.append(cell)

    rng = np.random.default_rng([boot_seed, 99])

    def seeds_of(arm, regime, name, m):
        return [s for s in experiment.seeds if (arm, regime, name, m, s) in points]

    summary: dict = {}
    comparisons: dict = {}
    for regime in experiment.regimes:
        for arm_name, arm in experiment.arms.items():
            for name in names:
                for m in METRIC_NAMES:
                    seeds = seeds_of(arm_name, regime, name, m)
                    if not seeds:
                        continue
                    stack = np.stack([samples[(arm_name, regime, name, m, s)] for s in seeds])
                    values = np.array([points[(arm_name, regime, name, m, s)] for s in seeds])
                    entry = hierarchical_bootstrap(stack, values, rng)
                    entry.pop("p_bootstrap", None)
                    entry["seeds"] = seeds
                    summary.setdefault(regime, {}).setdefault(arm_name, {}).setdefault(name, {})[m] = entry
                    for key, reference in (("vs_real", "real"), ("vs_duplicates", arm.control)):
                        if reference is None or reference == arm_name:
                            continue
                        common = [s for s in seeds if (reference, regime, name, m, s) in points]
                        if not common:
                            continue
                        diff = np.stack([samples[(arm_name, regime, name, m, s)] - samples[(reference, regime, name, m, s)]
                                         for s in common])
                        d_points = np.array([points[(arm_name, regime, name, m, s)] - points[(reference, regime, name, m, s)]
                                             for s in common])
                        comparison = hierarchical_bootstrap(diff, d_points, rng)
                        comparison = {"reference": reference, "mean_difference": comparison.pop("mean"),
                                      "seeds": common, **comparison}
                        comparison["per_seed_difference"] = comparison.pop("values")
                        if arm.kind == "ddpm_pseudo" and key == "vs_duplicates":
                            comparison["count_matched"] = all(
                                (results[(arm_name, regime, s)].get("counts") or {}).get("count_matched", False)
                                for s in common)
                        comparisons.setdefault(regime, {}).setdefault(arm_name, {}).setdefault(key, {}) \
                            .setdefault(name, {})[m] = comparison

    config = experiment.config
    training = experiment.training
    done = [c for c in cells if c["status"] == "done"]
    document = {
        "description": "Real vs augmented vs synthetic training data for the NORMAL / PNEUMONIA classifier "
                       "(train_scripts/augmentation_experiment.py). Not for clinical use.",
        "command": f"python train_scripts/augmentation_experiment.py --config {experiment.config_path or '<config>'}",
        "config": config,
        "model": {"architecture": training.get("model_config"), "resolution": experiment.resolution,
                  "init": training.get("pretrained_model_name_or_path", "auto")},
        "method": {
            "threshold": "Youden's J (sensitivity + specificity - 1) maximal on the validation split, per model; "
                         "ties closest to 0.5" if ev["threshold"] == "youden" else f"fixed {ev['threshold']}",
            "cell_ci": f"percentile bootstrap 95% CI over test images ({n_boot} resamples, seed {boot_seed})",
            "arm_summary": "mean and std over seeds; 95% CI of the mean from a hierarchical bootstrap: seeds "
                           "resampled with replacement x test images resampled (the same image resamples for every "
                           "model)",
            "comparisons": "per regime and test set, arm minus reference over the seeds both finished; 95% CI and "
                           "two-sided p from the same hierarchical paired bootstrap (shared seed and image "
                           "resamples); references: `real` and the arm's count-matched duplicate control",
            "augmentation": "only real_classic_aug is augmented (RandomAffine +-7 deg, 5% shift, 8% zoom; "
                            "ColorJitter brightness/contrast 0.2; no flips); every other arm trains without",
            "pseudo_labels": "DDPM images labelled by the real-only model of the same regime and seed (argmax, kept "
                             f"when max(P, 1-P) >= {config.get('pseudo_label', {}).get('min_confidence', 0.9)})",
            "low_regime": "whole patients drawn per class (seeded by the seed) up to the fraction of that class's "
                          "training images; the same subset for every arm of a seed",
        },
        "test_sets": {name: ({"n": len(v), "n_pneumonia": sum(r.label for r in v),
                              "n_normal": sum(1 - r.label for r in v), **config["test_sets"][name]}
                             if not isinstance(v, str) else {"unavailable": v, **config["test_sets"][name]})
                      for name, v in test_sets.items()},
        "arms": {name: arm.recipe() for name, arm in experiment.arms.items()},
        "regimes": experiment.regimes,
        "seeds": experiment.seeds,
        "counts": {"cells": len(cells), "done": len(done),
                   "skipped": sum(c["status"] == "skipped" for c in cells),
                   "pending": sum(c["status"] in ("pending", "stale") for c in cells)},
        "cells": cells,
        "summary": summary,
        "comparisons": comparisons,
        "skipped": [{k: c[k] for k in ("arm", "regime", "seed", "reason")} for c in cells if c["status"] == "skipped"],
        "training_wall_seconds": round(sum((c.get("training") or {}).get("wall_seconds", 0) for c in done), 1),
    }
    return document


def plot_results(document: dict, path: Path) -> Path | None:
    """AUROC per arm (mean over seeds, hierarchical 95% CI, seeds as dots), one panel per regime x test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(document["regimes"])
    tests = list(document["test_sets"])
    arms = list(document["arms"])
    fig, axes = plt.subplots(len(tests), len(regimes), figsize=(5.5 * len(regimes), 0.32 * len(arms) * len(tests) + 2),
                             squeeze=False, sharey=True)
    for i, test in enumerate(tests):
        for j, regime in enumerate(regimes):
            ax = axes[i][j]
            for k, arm in enumerate(arms):
                entry = document["summary"].get(regime, {}).get(arm, {}).get(test, {}).get("auroc")
                if not entry:
                    continue
                low, high = entry["ci_low"], entry["ci_high"]
                err = [[max(0.0, entry["mean"] - low)], [max(0.0, high - entry["mean"])]] \
                    if math.isfinite(low) and math.isfinite(high) else None
                color = "black" if arm == "real" else "tab:gray" if "duplicates" in arm else "tab:blue"
                ax.errorbar([entry["mean"]], [k], xerr=err, fmt="o", color=color, capsize=3)
                ax.scatter(entry["values"], [k] * len(entry["values"]), s=8, color=color, alpha=0.4)
            real = document["summary"].get(regime, {}).get("real", {}).get(test, {}).get("auroc")
            if real:
                ax.axvline(real["mean"], color="black", lw=0.8, ls="--")
            ax.set_title(f"{test}, {regime} regime", fontsize=10)
            ax.set_xlabel("AUROC (mean over seeds, 95% CI)")
            ax.set_yticks(range(len(arms)))
            ax.set_yticklabels(arms, fontsize=8)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{document['model']['architecture']} at {document['model']['resolution']} px; "
                 f"{document['counts']['done']} of {document['counts']['cells']} cells done", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment config (JSON)")
    parser.add_argument("--output_dir", default=None, help="cells and models (default: the config's output_dir)")
    parser.add_argument("--output", default=None, help="the aggregated JSON (default: the config's results); the "
                                                       "plot is written beside it (.png)")
    parser.add_argument("--arms", nargs="+", default=None, help="arm names or globs (default: every arm)")
    parser.add_argument("--regimes", nargs="+", default=None, help="full, low (default: both)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="a subset of the config's seeds")
    parser.add_argument("--aggregate_only", action="store_true",
                        help="train nothing: rebuild the JSON and the plot from the finished cells")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = load_config(args.config)
    experiment = Experiment(config, config_path=args.config, output_dir=args.output_dir, results=args.output,
                            progress=not args.no_progress)
    if args.aggregate_only:
        document = experiment.aggregate()
    else:
        document = experiment.run(args.arms, args.regimes, args.seeds)
    counts = document["counts"]
    print(f"{counts['done']} of {counts['cells']} cells done, {counts['skipped']} skipped, {counts['pending']} "
          f"pending: {experiment.results_path} and {experiment.plot_path}")
    return document


if __name__ == "__main__":
    from cxr_diffusers.training_utils import run_script

    sys.exit(run_script(lambda: main() and 0))
