"""The export bundle's model card: what the model is, how it was trained and tested, as JSON and Markdown.

The run's test results are read defensively: a damaged ``test_metrics.json`` is
reported in one line and the accuracy recomputed on the test split instead.
"""

from __future__ import annotations

import datetime
import importlib
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

import lenet_lightning
from lenet_lightning.inference import INPUT_NAME, OUTPUT_NAME, ImageClassifier, checkpoint_normalization
from lenet_lightning.records import checkpoint_record, plain
from lenet_lightning.reporting import METRICS_FILE, NO_METRICS_FILE, metrics_from_confusion, read_test_metrics
from lenet_lightning.runs import run_dir_of
from lenet_lightning.settings import CHANGEABLE_ON_RESUME

LIMITS = [
    "Trained and tested only on CIFAR-10-like images: 32x32 RGB, one centred object of the ten classes. "
    "Larger images must be resized to 32x32 first (this project uses antialiased bilinear).",
    "Always answers one of the ten classes: it has no 'none of these' and was not tested on images "
    "outside them, on other photo sources, on corrupted, adversarial or grey-scale inputs, "
    "nor for calibration of its probabilities.",
    "Accuracy is that of one training run and one seed on the test split named above.",
]


def model_card(
    checkpoint_path: Path,
    checkpoint: dict[str, Any],
    model: ImageClassifier,
    class_names: tuple[str, ...],
    data: dict[str, Any],
    verification: dict[str, Any],
    artifacts: dict[str, Any],
    packages: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything a user of the bundle needs to know, as plain JSON data (``packages``: versions to list too)."""
    normalization, mean, std = checkpoint_normalization(checkpoint)
    return {
        "model": {
            "name": "LeNet-5",
            "architecture": "exact LeNet-5 of PyTorch's 'Training a classifier' tutorial: conv(3->6, 5x5) - maxpool "
            "- conv(6->16, 5x5) - maxpool - fc 400->120->84->10, ReLU",
            "parameters": sum(p.numel() for p in model.net.parameters()),
            "input": f"'{INPUT_NAME}': uint8 RGB images (N, 3, 32, 32), values 0-255, N dynamic",
            "output": f"'{OUTPUT_NAME}': float32 class probabilities (N, {len(class_names)}), softmax over classes",
            "preprocessing_inside": {"normalization": normalization, "mean": list(mean), "std": list(std)},
            "classes": list(class_names),
        },
        "training": {
            "recipe": run_recipe(checkpoint),
            "checkpoint": checkpoint_path.name,
            "epochs_completed": checkpoint.get("epoch", -1) + 1,
            "global_step": checkpoint.get("global_step"),
        },
        "data": data_card(data),
        "test_metrics": card_test_metrics(checkpoint_path, model, class_names, data),
        "verification": verification,
        "files": artifacts,
        "versions": versions(packages),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "limits": LIMITS,
    }


def run_recipe(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What the model's numbers depend on: every setting but where and how the run ran (precision aside).

    Read with the settings reader every way in shares; only what the checkpoint records: a
    checkpoint of another writer (a plain Trainer, LightningCLI) holds no run options, and the
    card does not pretend it ran with the defaults.
    """
    recorded = checkpoint_record(checkpoint)
    recipe = (key for key in recorded if key not in CHANGEABLE_ON_RESUME or key == "precision")
    return {key: plain(recorded[key]) for key in recipe}


def data_card(data: dict[str, Any]) -> dict[str, Any]:
    val_size, total = data["val_size"], data["train_images"]
    train = "unknown number of" if total is None or val_size is None else str(total - val_size)
    return {
        "source": f"{data['source']} at '{data['data_dir']}'",
        "train": f"{train} images: the training split minus the validation images",
        "validation": f"{val_size} images held out of the training split at random (seed {data['seed']})",
        "test": f"{len(data['labels'])} images: the test split, never used for training or model selection",
    }


def card_test_metrics(
    checkpoint_path: Path, model: ImageClassifier, class_names: Sequence[str], data: dict[str, Any]
) -> dict[str, Any]:
    """The run's ``test_metrics.json``, checked against the accuracy recomputed here on the test split.

    A run's file describes the checkpoint that was last tested (the best one after
    training, or the last one evaluated); the recomputed accuracy tells whether that
    is the checkpoint being exported. Without a usable file the per-class accuracy is
    the recomputed one, and ``note`` says why.
    """
    recomputed = recompute_metrics(model, class_names, data)
    path = run_dir_of(checkpoint_path) / METRICS_FILE
    saved, note = read_test_metrics(path)
    if saved is None:
        if note != NO_METRICS_FILE:
            print(f"warning: {note}: the model card's test accuracy is recomputed on the test split", file=sys.stderr)
        return {
            "source": None,
            "note": note,
            "accuracy": None,
            "per_class": {name: recomputed[f"test/acc_{name}"] for name in class_names},
            "tta": None,
            "accuracy_recomputed_at_export": recomputed["test/acc"],
            "same_checkpoint": False,
        }
    tta = None
    if saved.get("test/acc_tta") is not None:  # test-time augmentation: its own numbers, never mixed with test/acc
        tta = {"accuracy": saved["test/acc_tta"]}
        tta["per_class"] = {name: saved.get(f"test/acc_tta_{name}") for name in class_names}
    return {
        "source": str(path),
        "note": None,
        "accuracy": saved["test/acc"],
        "per_class": {name: saved[f"test/acc_{name}"] for name in class_names if f"test/acc_{name}" in saved},
        "tta": tta,
        "accuracy_recomputed_at_export": recomputed["test/acc"],
        "same_checkpoint": abs(saved["test/acc"] - recomputed["test/acc"]) < 0.5 / len(data["labels"]),
    }


def recompute_metrics(model: ImageClassifier, class_names: Sequence[str], data: dict[str, Any]) -> dict[str, Any]:
    """Overall and per-class accuracy of ``model`` on the test split (``None``: a class without images)."""
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(dim=1) for chunk in data["images"].split(1000)])
    count = len(class_names)
    confusion = torch.bincount(data["labels"].long() * count + predictions, minlength=count * count)
    return metrics_from_confusion(confusion[: count * count].view(count, count), class_names)


def versions(packages: Sequence[str] = ()) -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__}
    found["lenet-lightning"] = lenet_lightning.__version__
    found["numpy"] = np.__version__
    for name in packages:
        found[name] = importlib.import_module(name).__version__
    return found


def render_card(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    model, training, check = card["model"], card["training"], card["verification"]
    preprocessing = model["preprocessing_inside"]
    lines = [
        "# Model card: LeNet-5 on CIFAR-10",
        "",
        f"Exported {card['date']} from checkpoint `{training['checkpoint']}` "
        f"({training['epochs_completed']} epochs, {training['global_step']} steps).",
        "",
        "## Model",
        "",
        f"- {model['architecture']}; {model['parameters']:,} parameters.",
        f"- Input {model['input']}.",
        f"- Output {model['output']}.",
        f"- Preprocessing inside the graph: x / 255, then (x - mean) / std per channel, "
        f"mean {preprocessing['mean']}, std {preprocessing['std']} ('{preprocessing['normalization']}').",
        f"- Classes (`labels.json`): {', '.join(f'{i} {name}' for i, name in enumerate(model['classes']))}.",
        "",
        "## Training",
        "",
        *([f"- {key}: {value}" for key, value in training["recipe"].items()] or ["- recipe not recorded"]),
        "",
        "## Data",
        "",
        *[f"- {key}: {value}" for key, value in card["data"].items()],
        "",
        "## Test accuracy",
        "",
        *metrics_lines(card["test_metrics"]),
        "",
        "## Verification at export",
        "",
        f"On {check['images']} test images, against the checkpoint's model (PyTorch, eager):",
        "",
        "| runtime | same top-1 class | largest probability difference |",
        "|---|---|---|",
        *[
            f"| {name} | {check[name]['top1_agree']} / {check['images']} | {check[name]['max_abs_prob_diff']:.2e} |"
            for name in ("onnxruntime", "torch.export")
        ],
        "",
        f"Allowed: every top-1 class equal, probabilities within {check['tolerance']:.0e}.",
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *[f"| {name} | {info['bytes']:,} | `{info['sha256']}` |" for name, info in card["files"].items()],
        "",
        "## Versions",
        "",
        ", ".join(f"{name} {version}" for name, version in card["versions"].items()),
        "",
        "## Limits",
        "",
        *[f"- {limit}" for limit in card["limits"]],
        "",
    ]
    return "\n".join(lines)


def metrics_lines(metrics: dict[str, Any]) -> list[str]:
    """The test accuracy section: overall, then one row per class; test-time augmentation apart."""
    recomputed = f"{100 * metrics['accuracy_recomputed_at_export']:.2f} %"
    if metrics["accuracy"] is None:
        header = f"Recomputed at export on the test split: overall {recomputed} ({metrics['note']})."
    else:
        agreement = (
            "the same checkpoint"
            if metrics["same_checkpoint"]
            else "DIFFERENT: the file describes another checkpoint of the run, or other test data"
        )
        header = (
            f"From `{metrics['source']}`: overall {100 * metrics['accuracy']:.2f} % "
            f"(recomputed at export: {recomputed}, {agreement})."
        )
    lines = [header, "", "| class | accuracy |", "|---|---|"]
    lines += [f"| {name} | {accuracy_cell(value)} |" for name, value in metrics["per_class"].items()]
    if metrics["tta"] is not None:
        lines += [
            "",
            f"With test-time augmentation (each image's probabilities averaged with its mirror image's), "
            f"reported apart: overall {100 * metrics['tta']['accuracy']:.2f} %.",
        ]
    return lines


def accuracy_cell(value: float | None) -> str:
    """A class's accuracy, or why it has none (``null`` in test_metrics.json: no test images of it)."""
    return "no test images" if value is None else f"{100 * value:.2f} %"
