"""Chest X-ray datasets as Hugging Face `datasets`, in one schema, with prompts built from labels and reports.

Loaders (each returns a `datasets.DatasetDict` with `train` / `validation` / `test` split by patient, images stored as
paths and decoded lazily to mode L; the load report is attached as `.report`):

- `load_nih(root)`: NIH ChestX-ray14 (`Data_Entry_2017.csv`, `images*/`, official split lists, optional boxes)
- `load_nih_subset(root)`: `{healthy,pneumonia,covid}/` NIH + COVID-19 subset
- `load_nih_cxr8(root, patient_splits=...)`: NIH ChestX-ray8 images + `labels.csv` (`nih_cxr8_768`), split consistently
  with another folder that shares its patients
- `load_jsrt(root)`: JSRT adult PA radiographs with lung and heart mask paths (`jsrt_768`)
- `load_indiana(root)`: Indiana University / Open-i reports (Kaggle CSV layout or R2Gen `annotation.json`)
- `load_pneumonia(root)`: Kermany pediatric pneumonia (`chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}`)
- `load_pneumoniamnist(npz_path)`: PneumoniaMNIST
- `load_covid_notes(root)`: COVID-19 image data collection with clinical notes
- `load_image_folder(root)`: any folder of images with an optional `metadata.csv`

Then `concatenate_sources`, `save_dataset` (with a dataset card), `load_saved`, `push_to_hub`; transforms for
training in `transforms`; the finding vocabulary in `vocabulary`, report cleaning in `reports`, prompts in `prompts`.
"""

from .card import dataset_card, write_card
from .checks import DataWarning, LoadReport, find_bad_images
from .combine import concatenate_sources, load_saved, push_to_hub, resize_dataset, save_dataset
from .covid import load_covid_notes
from .folder import load_image_folder
from .indiana import load_indiana
from .jsrt import load_jsrt
from .nih import load_nih, load_nih_cxr8, load_nih_subset
from .pneumonia import load_pneumonia, load_pneumoniamnist
from .prompts import PromptBuilder, build_prompt, prompt_from_example
from .reports import clean_report
from .schema import COMMON_COLUMNS, SPLITS, VIEWS, common_features
from .splits import assign_patient_splits, check_patient_disjoint
from .transforms import resize_and_pad, to_tensor, with_resolution
from .vocabulary import FINDINGS, NO_FINDING, normalize_finding, normalize_findings

concatenate = concatenate_sources

#: Loader per `--source` name of `cxr-diffusers data build`.
LOADERS = {
    "nih": load_nih,
    "nih_subset": load_nih_subset,
    "nih_cxr8": load_nih_cxr8,
    "jsrt": load_jsrt,
    "indiana": load_indiana,
    "pneumonia": load_pneumonia,
    "pneumoniamnist": load_pneumoniamnist,
    "covid": load_covid_notes,
    "folder": load_image_folder,
}

__all__ = [
    "COMMON_COLUMNS",
    "FINDINGS",
    "LOADERS",
    "NO_FINDING",
    "SPLITS",
    "VIEWS",
    "DataWarning",
    "LoadReport",
    "PromptBuilder",
    "assign_patient_splits",
    "build_prompt",
    "check_patient_disjoint",
    "clean_report",
    "common_features",
    "concatenate",
    "concatenate_sources",
    "dataset_card",
    "find_bad_images",
    "load_covid_notes",
    "load_image_folder",
    "load_indiana",
    "load_jsrt",
    "load_nih",
    "load_nih_cxr8",
    "load_nih_subset",
    "load_pneumonia",
    "load_pneumoniamnist",
    "load_saved",
    "normalize_finding",
    "normalize_findings",
    "prompt_from_example",
    "push_to_hub",
    "resize_and_pad",
    "resize_dataset",
    "save_dataset",
    "to_tensor",
    "with_resolution",
    "write_card",
]
