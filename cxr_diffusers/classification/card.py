"""The model card (README.md) of a trained pneumonia classifier, rendered from its metrics.json.

`train_scripts/train_classifier.py` writes `metrics.json` (test metrics with CIs, best validation, training, data,
model and the run's arguments) next to the model and then the card from it, with the `classifier` template of
`cxr_diffusers/model_cards/` (`hub.save_model_card`, as the VAE and LDM scripts do).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MEDMNIST_BASELINES", "metric_table", "save_classifier_card"]

#: MedMNIST v2 (Yang et al. 2023, Table) PneumoniaMNIST test results (accuracy, AUC), quoted on PneumoniaMNIST cards.
MEDMNIST_BASELINES = {
    "ResNet-18 (28)": (0.854, 0.944), "ResNet-18 (224)": (0.864, 0.956),
    "ResNet-50 (28)": (0.854, 0.948), "ResNet-50 (224)": (0.884, 0.962),
}


def metric_table(test: dict) -> str:
    """Markdown table of `evaluate_predictions(...)["metrics"]`: value and 95% CI per metric."""
    rows = ["| metric | value | 95% CI |", "|---|---|---|"]
    for name, v in test["metrics"].items():
        rows.append(f"| {name} | {v['value']:.4f} | {v['ci_low']:.4f} - {v['ci_high']:.4f} |")
    return "\n".join(rows)


def save_classifier_card(folder: str | os.PathLike, metrics: dict, repo_id: str, model_name: str | None = None) -> Path:
    """Write `folder`/README.md from the run's `metrics` (the contents of its metrics.json).

    Args:
        folder: the model folder.
        metrics: `data`, `model`, `training`, `test`, `validation_best` and `args` (for the batch size, learning rate
            and scheduler) as `train_classifier.py` writes them.
        repo_id: the Hub id or folder shown in the usage example.
        model_name: the card's title (default: "cxr-diffusers pneumonia classifier (<architecture>)").
    """
    from ..hub import DATA_CITATIONS, save_model_card

    data, model, training, test = metrics["data"], metrics["model"], metrics["training"], metrics["test"]
    args, best = metrics["args"], metrics["validation_best"]
    citations = [DATA_CITATIONS["kermany"]]
    baseline = ""
    if data["dataset"] == "pneumoniamnist":
        citations.append(DATA_CITATIONS["medmnist"])
        baseline = "MedMNIST v2 PneumoniaMNIST test baselines (accuracy / AUC): " + ", ".join(
            f"{k} {a:.3f} / {u:.3f}" for k, (a, u) in MEDMNIST_BASELINES.items()) + "."
    counts = data["train_counts"]
    mixing = (f"{counts['real']} real + {counts['synthetic']} synthetic (ratio {data['synthetic_ratio']}, from "
              f"{data['synthetic_data_dir']})" if counts["synthetic"] else
              f"{counts['real']} real + {counts['duplicated_real']} duplicated real (control, ratio "
              f"{data['duplicate_real_ratio']})" if counts["duplicated_real"] else f"{counts['real']} real images")
    return save_model_card(
        folder, "classifier",
        card_data={"license": "apache-2.0", "library_name": "transformers", "pipeline_tag": "image-classification",
                   "tags": ["chest-x-ray", "pneumonia", "resnet", "not-for-clinical-use"]},
        model_name=model_name or f"cxr-diffusers pneumonia classifier ({model['architecture']})",
        architecture=f"transformers ResNetForImageClassification, {model['architecture']}",
        parameters=f"{model['parameters']:,}", init=model["init"], resolution=model["resolution"],
        weights=f"{model['weights_dtype']} safetensors ({model['weights_mb']} MB), loaded as float32",
        data=data["description"], notes="; ".join(data["notes"]) or "none", mixing=mixing,
        class_weights=", ".join(f"{w:.3f}" for w in data["class_weights"]),
        validation=f"{data['validation_images']} images; best AUROC {best.get('auroc', float('nan')):.4f} "
                   f"(accuracy {best.get('accuracy', float('nan')):.4f}) at step {best['step']}",
        training=f"{training['global_step']} steps of {args['train_batch_size']} (lr {args['learning_rate']}, "
                 f"{args['lr_scheduler']}, AdamW), seed {training['seed']}"
                 f"{', stopped early' if training['stopped_early'] else ''}; {training['device']}, "
                 f"{training['seconds'] / 3600:.2f} h ({training['seconds_per_step']} s/step)",
        test_images=test["n"], test_counts=f"{test['n_normal']} NORMAL / {test['n_pneumonia']} PNEUMONIA",
        metrics_table=metric_table(test), n_bootstrap=test["n_bootstrap"],
        confusion=f"TN {test['confusion_matrix'][0][0]}, FP {test['confusion_matrix'][0][1]}, "
                  f"FN {test['confusion_matrix'][1][0]}, TP {test['confusion_matrix'][1][1]}",
        baseline=baseline, repo_id=repo_id,
        citations="\n".join(f"- {c}" for c in citations),
    )
