"""Test results as a console table and as ``test_metrics.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor


def metrics_from_confusion(confusion: Tensor, class_names: Sequence[str]) -> dict[str, float | None]:
    """``test/acc`` and every ``test/acc_<class>`` from a confusion matrix (rows = true class).

    A class without test images has no accuracy: ``None`` (``null`` in JSON), never NaN.
    """
    correct = confusion.diag().double()
    totals = confusion.sum(dim=1).double()
    metrics: dict[str, float | None] = {"test/acc": float(correct.sum() / totals.sum())}
    for name, hits, total in zip(class_names, correct.tolist(), totals.tolist(), strict=True):
        metrics[f"test/acc_{name}"] = hits / total if total else None
    return metrics


def format_table(confusion: Tensor, class_names: Sequence[str]) -> str:
    """One row per class (accuracy, correct/total), then the overall accuracy."""
    correct = confusion.diag().tolist()
    totals = confusion.sum(dim=1).tolist()
    width = max(len(name) for name in class_names)
    lines = [f"{'class':<{width}}  accuracy  correct/total", "-" * (width + 26)]
    for name, hits, total in zip(class_names, correct, totals, strict=True):
        accuracy = f"{100 * hits / total:6.2f} %" if total else "     - "
        lines.append(f"{name:<{width}}  {accuracy}  {hits:>7}/{total}")
    overall = 100 * sum(correct) / max(1, sum(totals))
    lines += ["-" * (width + 26), f"{'overall':<{width}}  {overall:6.2f} %  {sum(correct):>7}/{sum(totals)}"]
    return "\n".join(lines)


def write_json(path: Path, data: Mapping[str, float | None]) -> None:
    """Write ``data`` as JSON atomically (a reader never sees a half-written file).

    NaN and infinity are refused (``ValueError``): they are not JSON, and other tools reject the file.
    """
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
