"""Synthetic datasets at scale: `cxr-diffusers synthesize` as a library.

- `spec`: the spec file (findings with counts or proportions, age bands, sex, view, pediatric/adult, a prompt template,
  or a list / CSV of prompts) and its deterministic expansion into one `PlanItem` per image; `image_seed`.
- `writer`: the output folder (an imagefolder dataset with metadata.jsonl), crash-safe writing, resume, the run
  fingerprint that refuses a changed spec.
- `filter`: the optional quality filter (classifier agreement, nearest training image).
- `card`: the dataset card (`huggingface_hub.DatasetCard`) and the Hub upload.
- `runner`: `synthesize(model, spec, output_dir, ...)`, which runs in every process of an `accelerate launch`.

Synthetic images, NOT FOR CLINICAL USE: every PNG keeps its provenance record, every metadata row and the card say so.
"""

from .filter import FILTERS, FilterResult, QualityFilter
from .runner import (
    STOP_AFTER_ENV,
    SamplingConfig,
    SimulatedInterruption,
    model_identity,
    synthesize,
)
from .spec import (
    PlanItem,
    SpecError,
    SynthesisSpec,
    expand_plan,
    image_seed,
    load_spec,
    parse_spec,
    plan_digest,
)
from .writer import image_path, scan_completed

__all__ = [
    "FILTERS",
    "STOP_AFTER_ENV",
    "FilterResult",
    "PlanItem",
    "QualityFilter",
    "SamplingConfig",
    "SimulatedInterruption",
    "SpecError",
    "SynthesisSpec",
    "expand_plan",
    "image_path",
    "image_seed",
    "load_spec",
    "model_identity",
    "parse_spec",
    "plan_digest",
    "scan_completed",
    "synthesize",
]
