"""Classify image files of any size with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lenet_lightning.batches import normalize
from lenet_lightning.errors import UserError
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.sources import read_image


def predict_files(
    model: LeNetClassifier,
    files: list[Path],
    normalization: tuple[tuple[float, ...], tuple[float, ...]],
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """For each file: ``{"file", "top3": [{"class", "probability"}, ...]}`` or ``{"file", "error"}``.

    Every file is converted to RGB and resized to 32x32 the same way (antialiased
    bilinear), then normalised as the model was trained.
    """
    results: list[dict[str, Any]] = []
    readable: list[tuple[int, torch.Tensor]] = []
    for path in files:
        results.append({"file": str(path)})
        try:
            readable.append((len(results) - 1, read_image(path)))
        except UserError as error:
            results[-1]["error"] = str(error)
    if not readable:
        return results
    model.eval()
    with torch.no_grad():
        images = normalize(torch.stack([image for _, image in readable]), *normalization)
        probabilities = model(images).softmax(dim=1)
    top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    for (slot, _), values, indices in zip(readable, top.values.tolist(), top.indices.tolist(), strict=True):
        results[slot]["top3"] = [
            {"class": model.class_names[i], "probability": round(p, 4)} for p, i in zip(values, indices, strict=True)
        ]
    return results
