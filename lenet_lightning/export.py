"""Ship a trained checkpoint: verified ONNX and ``torch.export`` bundles with the preprocessing inside.

:func:`export_bundle` turns a checkpoint into a folder that runs without Lightning
or this project: ``model.onnx`` and ``model.pt2`` (uint8 images ``(N, 3, 32, 32)``
in, class probabilities ``(N, 10)`` out), ``labels.json``, and a model card
(``model_card.md`` / ``model_card.json``). Before anything is reported as written,
both exports are run on real test images and compared with the checkpoint's model.
The model is :mod:`lenet_lightning.inference`'s, the card :mod:`lenet_lightning.model_card`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lenet_lightning.archive import load_archive_split
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.cifar10 import ARCHIVE_FOLDER, default_cache_dir
from lenet_lightning.errors import UserError
from lenet_lightning.image_folders import list_image_folder
from lenet_lightning.inference import INPUT_NAME, OUTPUT_NAME, ImageClassifier, classifier_from_checkpoint
from lenet_lightning.leftovers import owner_tag, remove_abandoned
from lenet_lightning.model_card import model_card, render_card
from lenet_lightning.sources import detect_source, load_split

EXPORT_EXTRA = ("onnx", "onnxruntime", "onnxscript")
MISSING_EXTRA = '--export needs the export extra (onnx, onnxruntime, onnxscript): pip install -e ".[export]"'
BUNDLE_FILES = ("model.onnx", "model.pt2", "labels.json", "model_card.md", "model_card.json")
TOLERANCE = 1e-4


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
    # Two images at least (a single one is repeated): with one, torch.export would fix the batch size
    # at 1. Indexing copies: a view would drag the whole split's storage into model.pt2 as its sample input.
    example = images[torch.arange(2) % len(images)]
    with staging_folder(out_dir) as staging:
        export_onnx(model, example, staging / "model.onnx")
        export_program(model, example, staging / "model.pt2")
        verification = verify(model, staging, images)
        (staging / "labels.json").write_text(json.dumps(dict(enumerate(class_names)), indent=2) + "\n")
        artifacts = {name: file_summary(staging / name) for name in ("model.onnx", "model.pt2", "labels.json")}
        card = model_card(checkpoint_path, checkpoint, model, class_names, data, verification, artifacts, EXPORT_EXTRA)
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
    """A temporary folder beside ``out_dir`` (same file system), removed whatever happens.

    Named after this process, so that the next export removes a killed export's leftovers.
    """
    target = out_dir.resolve()  # "." has no name of its own; its resolved path does
    prefix = f".{target.name}.export-"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(target.parent, prefix)
        folder = tempfile.mkdtemp(dir=target.parent, prefix=prefix + owner_tag())
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
