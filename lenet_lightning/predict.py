"""Classify image files and folders of any size with a trained checkpoint, in batches.

Prediction runs the same uint8-in, probabilities-out model that ``--export`` ships
(:class:`~lenet_lightning.inference.ImageClassifier`), so it needs no Lightning and
gives what the exported bundle gives. Results hold no NaN: a non-finite probability
is ``null`` in JSON and empty in CSV.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.cifar10 import IMAGE_SUFFIXES
from lenet_lightning.errors import UserError
from lenet_lightning.image_folders import read_image
from lenet_lightning.inference import classifier_from_checkpoint
from lenet_lightning.reporting import json_safe

OUTPUT_FIELDS = ("file", "class", "probability", "top3", "error")
OUTPUT_FORMATS = (".csv", ".json")
BATCH_SIZE = 256
PREFETCH = 2  # batches decoded ahead, each by its own thread


def predict_paths(
    checkpoint_path: Path,
    paths: Sequence[Path],
    output: Path | None = None,
    as_json: bool = False,
    batch_size: int = BATCH_SIZE,
) -> list[dict[str, Any]]:
    """Classify files and folders (recursively) with a checkpoint; print or write the results.

    Without ``output`` each file's top-3 is printed (``as_json``: as JSON); with it the
    results go to a ``.csv`` or ``.json`` file. Unreadable files get an error entry and
    the rest still run. The throughput (images per second, decoding included) is
    printed to stderr at the end.
    """
    if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"--output '{output}': name a .csv or .json file")
    model, class_names = classifier_from_checkpoint(load_checkpoint(checkpoint_path))
    files = image_files(paths)
    start = time.perf_counter()
    results = predict_files(model, class_names, files, batch_size)
    seconds = time.perf_counter() - start
    if output is not None:
        write_results(results, output)
        print(f"wrote {len(results)} predictions to {output}")
    report(results, print_all=output is None, as_json=as_json)
    print(throughput_line(len(files), seconds, batch_size), file=sys.stderr)
    return results


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and every .png/.jpg/.jpeg file under each folder (recursively, sorted)."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)  # a missing or unreadable file gets its own error entry
            continue
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise UserError(f"no .png or .jpg images under folder '{path}': pass image files or a folder of them")
        files.extend(found)
    return files


def predict_files(
    model: nn.Module,
    class_names: Sequence[str],
    files: Sequence[Path],
    batch_size: int = BATCH_SIZE,
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """For each file: ``{"file", "class", "probability", "top3": [{"class", "probability"}, ...]}``
    or ``{"file", "error"}``.

    ``model`` maps uint8 images ``(N, 3, 32, 32)`` to class probabilities. Every file is
    converted to RGB and resized to 32x32 the same way (antialiased bilinear). Background
    threads decode the next batches while this one classifies the current batch, with one
    torch thread fewer meanwhile, so that decoding keeps a core: on 2 CPU cores that gives
    about 2.5 times the images per second of decoding and classifying in turn.
    """
    results: list[dict[str, Any]] = []
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        for chunk, decoded in decoded_batches(files, batch_size):
            results.extend(classify(model, class_names, chunk, decoded, top_k))
    finally:
        torch.set_num_threads(threads)
    return results


def decoded_batches(files: Sequence[Path], size: int) -> Iterator[tuple[Sequence[Path], list[torch.Tensor | str]]]:
    """Batches of files with their decoded images, decoded up to ``PREFETCH`` batches ahead."""
    chunks = [files[start : start + size] for start in range(0, len(files), size)]
    with ThreadPoolExecutor(max_workers=PREFETCH) as pool:
        # Bounded look-ahead: memory stays a few batches, however many files there are.
        pending = deque(pool.submit(decode_all, chunk) for chunk in chunks[:PREFETCH])
        for index, chunk in enumerate(chunks):
            decoded = pending.popleft().result()
            if index + PREFETCH < len(chunks):
                pending.append(pool.submit(decode_all, chunks[index + PREFETCH]))
            yield chunk, decoded


def decode_all(files: Sequence[Path]) -> list[torch.Tensor | str]:
    return [decode(path) for path in files]


def decode(path: Path) -> torch.Tensor | str:
    """The image as uint8 ``(3, 32, 32)``, or why it cannot be read."""
    try:
        return read_image(path)
    except UserError as error:
        return str(error)


def classify(
    model: nn.Module,
    class_names: Sequence[str],
    files: Sequence[Path],
    decoded: list[torch.Tensor | str],
    top_k: int,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [
        {"file": str(path), "error": image} if isinstance(image, str) else {"file": str(path)}
        for path, image in zip(files, decoded, strict=True)
    ]
    readable = [(result, image) for result, image in zip(results, decoded, strict=True) if not isinstance(image, str)]
    if not readable:
        return results
    with torch.inference_mode():
        probabilities = model(torch.stack([image for _, image in readable]))
    top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    for (result, _), values, indices in zip(readable, top.values.tolist(), top.indices.tolist(), strict=True):
        result["top3"] = [
            {"class": class_names[i], "probability": round(p, 4)} for p, i in zip(values, indices, strict=True)
        ]
        result["class"], result["probability"] = result["top3"][0]["class"], result["top3"][0]["probability"]
    return results


def output_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every result with all of ``OUTPUT_FIELDS`` (``None`` where a field does not apply)."""
    return [{field: result.get(field) for field in OUTPUT_FIELDS} for result in results]


def write_results(results: list[dict[str, Any]], path: Path) -> None:
    """Write ``.json`` (a list of objects) or ``.csv`` (``top3`` as ``class:probability;...``)."""
    rows = output_rows(results)
    try:
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(json_safe(rows), indent=2, allow_nan=False) + "\n")
            return
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=OUTPUT_FIELDS)
            writer.writeheader()
            for row in rows:
                top3 = ";".join(f"{c['class']}:{csv_number(c['probability'])}" for c in row["top3"] or [])
                writer.writerow({**row, "probability": csv_number(row["probability"]), "top3": top3})
    except OSError as error:
        raise UserError(f"cannot write '{path}' ({error.strerror}): pass a writable --output file") from None


def csv_number(value: float | None) -> str | float:
    """A probability for CSV: empty when there is none or it is not finite (never ``nan``)."""
    return value if value is not None and math.isfinite(value) else ""


def report(results: list[dict[str, Any]], print_all: bool, as_json: bool) -> None:
    """Errors to stderr; with ``print_all`` also each file's top-3 (or all results as JSON) to stdout."""
    if print_all and as_json:
        print(json.dumps(json_safe(results), indent=2, allow_nan=False))
        return
    for result in results:
        if "error" in result:
            print(f"{result['file']}: error: {result['error']}", file=sys.stderr)
        elif print_all:
            top = ", ".join(f"{c['class']} {100 * c['probability']:.1f}%" for c in result["top3"])
            print(f"{result['file']}: {top}")


def throughput_line(count: int, seconds: float, batch_size: int) -> str:
    rate = count / seconds if seconds > 0 else float("inf")
    return (
        f"{count} images in {seconds:.2f} s: {rate:.0f} images/s (decoding and classifying, batches of "
        f"{batch_size}, {os.cpu_count()} CPUs)"
    )
