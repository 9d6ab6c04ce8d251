"""Ship a trained checkpoint: verified ONNX and ``torch.export`` bundles with the preprocessing inside.

:func:`export_bundle` turns a checkpoint into a folder that runs without Lightning
or this project: ``model.onnx`` and ``model.pt2`` (uint8 images ``(N, 3, 32, 32)``
in, class probabilities ``(N, 10)`` out), ``labels.json``, and a model card
(``model_card.md`` / ``model_card.json``). Before anything is reported as written,
both exports are run on real test images and compared with the checkpoint's model.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch import Tensor, nn

import lenet_lightning
from lenet_lightning.archive import load_archive_split
from lenet_lightning.cifar10 import ARCHIVE_FOLDER, CLASSES, default_cache_dir, resolve_normalization
from lenet_lightning.errors import UserError
from lenet_lightning.image_folders import list_image_folder
from lenet_lightning.model import LeNet5
from lenet_lightning.runs import SETTINGS_KEY, load_checkpoint, run_dir_of
from lenet_lightning.settings import RECIPES
from lenet_lightning.sources import detect_source, load_split

EXPORT_EXTRA = ("onnx", "onnxruntime", "onnxscript")
MISSING_EXTRA = '--export needs the export extra (onnx, onnxruntime, onnxscript): pip install -e ".[export]"'
BUNDLE_FILES = ("model.onnx", "model.pt2", "labels.json", "model_card.md", "model_card.json")
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# Recipe keys worth a line in the model card (the rest of the settings are hardware and paths).
RECIPE_KEYS = ("recipe", *RECIPES["default"], "seed", "precision")


class ImageClassifier(nn.Module):
    """uint8 RGB images ``(N, 3, 32, 32)`` -> class probabilities ``(N, classes)``.

    The plain :class:`LeNet5` plus the normalisation it was trained with, held as
    buffers so that exports carry it in their graph. Scale and shift are computed
    exactly as :func:`lenet_lightning.batches.normalize` computes them, so the
    wrapper gives the same numbers as evaluation in this project.
    """

    scale: Tensor
    shift: Tensor

    def __init__(self, net: LeNet5, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() * self.scale + self.shift).softmax(dim=1)


def classifier_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[ImageClassifier, tuple[str, ...]]:
    """The checkpoint's network with its normalisation, in eval mode, and its class names.

    The weights are the checkpoint's ``state_dict``: when training averages weights,
    Lightning stores the averaged ones there, so those are what gets exported.
    """
    class_names = checkpoint_class_names(checkpoint)
    net = LeNet5(len(class_names))
    state = checkpoint["state_dict"]
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")})
    return ImageClassifier(net, *checkpoint_normalization(checkpoint)[1:]).eval(), class_names


def checkpoint_class_names(checkpoint: dict[str, Any]) -> tuple[str, ...]:
    """The checkpoint's class names; without any (checkpoints of earlier releases), its DataModule's: CIFAR-10's."""
    hparams = checkpoint["hyper_parameters"]
    if hparams.get("class_names"):
        return tuple(hparams["class_names"])
    num_classes = hparams.get("num_classes", len(CLASSES))
    if "datamodule_hyper_parameters" in checkpoint and num_classes == len(CLASSES):
        return CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def checkpoint_normalization(checkpoint: dict[str, Any]) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """The normalisation a checkpoint was trained with: its name and per-channel mean and std."""
    data = checkpoint.get("datamodule_hyper_parameters", {})
    name = data.get("normalization", "cifar10")
    mean, std = resolve_normalization(name, data.get("mean"), data.get("std"))
    return (name if data.get("mean") is None else "custom"), mean, std


def require_export_extra() -> None:
    """Raise a one-line :class:`UserError` naming the install command when an export package is missing."""
    for name in EXPORT_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(MISSING_EXTRA) from None


def export_bundle(
    checkpoint_path: Path,
    out_dir: Path,
    force: bool = False,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    max_images: int = 10_000,
) -> dict[str, Any]:
    """Export, verify and write the bundle for ``checkpoint_path`` into ``out_dir``.

    The bundle is built in a temporary folder next to ``out_dir`` and verified there
    (ONNX Runtime and the ``torch.export`` program against the checkpoint's model on
    up to ``max_images`` test images: same top-1 class on every image, probabilities
    within 1e-4); only then are its files moved into ``out_dir``. A failed check
    leaves nothing behind and raises :class:`UserError` saying why. ``out_dir`` must
    be empty or missing unless ``force`` (then the bundle's files are replaced,
    other files are left alone). ``data_dir`` / ``cache_dir`` override the
    checkpoint's data settings, to find its test images.

    Returns ``{"out_dir", "files": {name: {"bytes", "sha256"}}, "verification", "card"}``.
    """
    require_export_extra()
    check_target(out_dir, force)
    checkpoint = load_checkpoint(checkpoint_path)
    model, class_names = classifier_from_checkpoint(checkpoint)
    data = load_test_data(checkpoint, data_dir, cache_dir)
    images = evenly_spaced(data["images"], max_images)
    # A copy: a view would drag the whole split's storage into model.pt2 as its sample input.
    example = images[:2].clone()
    with staging_folder(out_dir) as staging:
        export_onnx(model, example, staging / "model.onnx")
        export_program(model, example, staging / "model.pt2")
        verification = verify(model, staging, images)
        (staging / "labels.json").write_text(json.dumps(dict(enumerate(class_names)), indent=2) + "\n")
        artifacts = {name: file_summary(staging / name) for name in ("model.onnx", "model.pt2", "labels.json")}
        card = model_card(checkpoint_path, checkpoint, model, class_names, data, verification, artifacts)
        (staging / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        (staging / "model_card.md").write_text(render_card(card))
        files = {name: file_summary(staging / name) for name in BUNDLE_FILES}
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in BUNDLE_FILES:
            os.replace(staging / name, out_dir / name)
    return {"out_dir": str(out_dir), "files": files, "verification": verification, "card": card}


def summary_text(summary: dict[str, Any]) -> str:
    """What ``--export`` prints: each file with its size, the verification numbers, the folder."""
    lines = [f"{info['bytes']:>10,} bytes  {name}  sha256 {info['sha256']}" for name, info in summary["files"].items()]
    check = summary["verification"]
    for runtime in ("onnxruntime", "torch.export"):
        lines.append(
            f"verified {runtime}: same top-1 class on {check[runtime]['top1_agree']}/{check['images']} test images, "
            f"largest probability difference {check[runtime]['max_abs_prob_diff']:.2e}"
        )
    return "\n".join([*lines, f"bundle: {summary['out_dir']}"])


def check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' is a file: pass a folder to --export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserError(f"'{out_dir}' is not empty: pass --force to replace the bundle there, or choose a new folder")


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` (same file system), removed whatever happens."""
    target = out_dir.resolve()  # "." has no name of its own; its resolved path does
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.export-")
    except OSError as error:
        raise UserError(f"cannot write next to '{out_dir}' ({error.strerror}): pass a writable --export DIR") from None
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- test images --------------------------------------------------------------------


def load_test_data(checkpoint: dict[str, Any], data_dir: str | None, cache_dir: str | None) -> dict[str, Any]:
    """The checkpoint's test split (images, labels) and where its training data came from."""
    saved = checkpoint.get("datamodule_hyper_parameters", {})
    folder = Path(data_dir or saved.get("data_dir") or "data")
    cache = Path(cache_dir or saved.get("cache_dir") or default_cache_dir())
    source = detect_source(folder)
    if source is None:
        raise UserError(
            f"no CIFAR-10 test images in '{folder}' to verify the export with: point --data-dir at the data "
            "this checkpoint was trained on"
        )
    images, labels = load_split(folder, train=False, cache_dir=cache)
    return {
        "images": images,
        "labels": labels,
        "data_dir": str(folder),
        "source": "official archive" if source == "archive" else "image folder",
        "train_images": count_training_images(folder, source),
        "val_size": saved.get("val_size"),
        "seed": saved.get("seed"),
    }


def count_training_images(folder: Path, source: str) -> int | None:
    """How many training images the data holds (``None``: only its test split is here)."""
    if source == "archive":
        return len(load_archive_split(folder / ARCHIVE_FOLDER, train=True)[1])
    if not (folder / "train").is_dir():
        return None
    return len(list_image_folder(folder / "train"))


def evenly_spaced(images: Tensor, count: int) -> Tensor:
    """Up to ``count`` images spread over the whole split (folders are sorted by class)."""
    if len(images) <= count:
        return images
    return images[torch.linspace(0, len(images) - 1, count).round().long()]


# --- export and verification ----------------------------------------------------------


def batch_dimension() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1)}


def export_program(model: ImageClassifier, example: Tensor, path: Path) -> None:
    """``torch.export`` the wrapper with a dynamic batch size and save it as ``.pt2``."""
    program = torch.export.export(model, (example,), dynamic_shapes=(batch_dimension(),))
    torch.export.save(program, path)


def export_onnx(model: ImageClassifier, example: Tensor, path: Path) -> None:
    """Export the wrapper to ONNX (one self-contained file) with a dynamic batch size."""
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=True,
        dynamic_shapes=(batch_dimension(),),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        external_data=False,
        verbose=False,
    )


def verify(model: ImageClassifier, folder: Path, images: Tensor) -> dict[str, Any]:
    """Run both exports from ``folder`` on ``images``; raise unless they match the eager model."""
    import onnxruntime

    with torch.no_grad():
        reference = model(images)
        program = torch.export.load(folder / "model.pt2").module()(images)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_output = torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])
    results = {"onnxruntime": compare(reference, onnx_output), "torch.export": compare(reference, program)}
    for runtime, result in results.items():
        if result["top1_agree"] != len(images) or not result["max_abs_prob_diff"] <= TOLERANCE:
            raise UserError(
                f"export verification failed, nothing was written: {runtime} agrees with the checkpoint on "
                f"{result['top1_agree']} of {len(images)} test images (top-1), largest probability difference "
                f"{result['max_abs_prob_diff']:.2e} (allowed {TOLERANCE:.0e})"
            )
    return {"images": len(images), "tolerance": TOLERANCE, **results}


def compare(reference: Tensor, output: Tensor) -> dict[str, Any]:
    return {
        "top1_agree": int((reference.argmax(dim=1) == output.argmax(dim=1)).sum()),
        "max_abs_prob_diff": float((reference - output).abs().max()),
    }


def file_summary(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# --- model card -----------------------------------------------------------------------


def model_card(
    checkpoint_path: Path,
    checkpoint: dict[str, Any],
    model: ImageClassifier,
    class_names: tuple[str, ...],
    data: dict[str, Any],
    verification: dict[str, Any],
    artifacts: dict[str, Any],
) -> dict[str, Any]:
    """Everything a user of the bundle needs to know, as plain JSON data."""
    settings = checkpoint.get(SETTINGS_KEY, {})
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
            "recipe": {key: settings[key] for key in RECIPE_KEYS if key in settings},
            "checkpoint": checkpoint_path.name,
            "epochs_completed": checkpoint.get("epoch", -1) + 1,
            "global_step": checkpoint.get("global_step"),
        },
        "data": data_card(data),
        "test_metrics": card_test_metrics(checkpoint_path, model, data),
        "verification": verification,
        "files": artifacts,
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "limits": [
            "Trained and tested only on CIFAR-10-like images: 32x32 RGB, one centred object of the ten classes. "
            "Larger images must be resized to 32x32 first (this project uses antialiased bilinear).",
            "Always answers one of the ten classes: it has no 'none of these' and was not tested on images "
            "outside them, on other photo sources, on corrupted, adversarial or grey-scale inputs, "
            "nor for calibration of its probabilities.",
            "Accuracy is that of one training run and one seed on the test split named above.",
        ],
    }


def data_card(data: dict[str, Any]) -> dict[str, Any]:
    val_size, total = data["val_size"], data["train_images"]
    train = "unknown number of" if total is None or val_size is None else str(total - val_size)
    return {
        "source": f"{data['source']} at '{data['data_dir']}'",
        "train": f"{train} images: the training split minus the validation images",
        "validation": f"{val_size} images held out of the training split at random (seed {data['seed']})",
        "test": f"{len(data['labels'])} images: the test split, never used for training or model selection",
    }


def card_test_metrics(checkpoint_path: Path, model: ImageClassifier, data: dict[str, Any]) -> dict[str, Any]:
    """The run's ``test_metrics.json``, checked against the accuracy recomputed here on the test split.

    A run's file describes the checkpoint that was last tested (the best one after
    training, or the last one evaluated); the recomputed accuracy tells whether that
    is the checkpoint being exported.
    """
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(dim=1) for chunk in data["images"].split(1000)])
    recomputed = float((predictions == data["labels"]).double().mean())
    path = run_dir_of(checkpoint_path) / "test_metrics.json"
    saved = json.loads(path.read_text()) if path.is_file() else None
    return {
        "source": str(path) if saved is not None else "no test_metrics.json in the run folder",
        "accuracy": saved.get("test/acc") if saved is not None else None,
        "per_class": {key.removeprefix("test/acc_"): value for key, value in (saved or {}).items() if "_" in key},
        "accuracy_recomputed_at_export": recomputed,
        "same_checkpoint": saved is not None and abs(saved["test/acc"] - recomputed) < 0.5 / len(data["labels"]),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__}
    found["lenet-lightning"] = lenet_lightning.__version__
    found["numpy"] = np.__version__
    for name in EXPORT_EXTRA:
        found[name] = importlib.import_module(name).__version__
    return found


def render_card(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    model, training, metrics, check = card["model"], card["training"], card["test_metrics"], card["verification"]
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
        f"mean {model['preprocessing_inside']['mean']}, std {model['preprocessing_inside']['std']} "
        f"('{model['preprocessing_inside']['normalization']}').",
        f"- Classes (`labels.json`): {', '.join(f'{i} {name}' for i, name in enumerate(model['classes']))}.",
        "",
        "## Training",
        "",
        *[f"- {key}: {value}" for key, value in training["recipe"].items()],
        "",
        "## Data",
        "",
        *[f"- {key}: {value}" for key, value in card["data"].items()],
        "",
        "## Test accuracy",
        "",
        *metrics_lines(metrics),
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
    if metrics["accuracy"] is None:
        return [
            f"No test_metrics.json in the run folder; accuracy recomputed at export: "
            f"{100 * metrics['accuracy_recomputed_at_export']:.2f} %."
        ]
    agreement = (
        "the same checkpoint"
        if metrics["same_checkpoint"]
        else "DIFFERENT: the file describes another checkpoint of the run, or other test data"
    )
    return [
        f"From `{metrics['source']}`: overall {100 * metrics['accuracy']:.2f} % "
        f"(recomputed at export: {100 * metrics['accuracy_recomputed_at_export']:.2f} %, {agreement}).",
        "",
        "| class | accuracy |",
        "|---|---|",
        *[f"| {name} | {100 * value:.2f} % |" for name, value in metrics["per_class"].items()],
    ]
