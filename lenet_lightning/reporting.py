"""Test results as a console table and as ``test_metrics.json``, written safely and read defensively."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

METRICS_FILE = "test_metrics.json"
NO_METRICS_FILE = f"no {METRICS_FILE} in the run folder"


def metrics_from_confusion(
    confusion: Tensor, class_names: Sequence[str], prefix: str = "test/acc"
) -> dict[str, float | None]:
    """``<prefix>`` and every ``<prefix>_<class>`` from a confusion matrix (rows = true class).

    A class without test images has no accuracy: ``None`` (``null`` in JSON), never NaN.
    """
    correct = confusion.diag().double()
    totals = confusion.sum(dim=1).double()
    metrics: dict[str, float | None] = {prefix: float(correct.sum() / totals.sum())}
    for name, hits, total in zip(class_names, correct.tolist(), totals.tolist(), strict=True):
        metrics[f"{prefix}_{name}"] = hits / total if total else None
    return metrics


def format_table(confusion: Tensor, class_names: Sequence[str], tta_confusion: Tensor | None = None) -> str:
    """One row per class (accuracy, correct/total), then the overall accuracy.

    With ``tta_confusion`` (test-time augmentation) a last column gives that accuracy beside it.
    """
    correct = confusion.diag().tolist()
    totals = confusion.sum(dim=1).tolist()
    tta_correct = tta_confusion.diag().tolist() if tta_confusion is not None else None
    width = max(len(name) for name in class_names)
    rule = "-" * (width + 26 + (12 if tta_correct else 0))

    def row(name: str, index: slice) -> str:
        hits, total = sum(correct[index]), sum(totals[index])
        line = f"{name:<{width}}  {percent(hits, total)}  {hits:>7}/{total}"
        return line + (f"    {percent(sum(tta_correct[index]), total)}" if tta_correct else "")

    lines = [f"{'class':<{width}}  accuracy  correct/total" + ("  with flips" if tta_correct else ""), rule]
    lines += [row(name, slice(i, i + 1)) for i, name in enumerate(class_names)]
    lines += [rule, row("overall", slice(None))]
    return "\n".join(lines)


def percent(hits: int, total: int) -> str:
    """``hits/total`` as ``" 72.26 %"``, or a dash when there is nothing to count."""
    return f"{100 * hits / total:6.2f} %" if total else "     - "


def write_json(path: Path, data: Mapping[str, float | None]) -> None:
    """Write ``data`` as JSON atomically (a reader never sees a half-written file).

    NaN and infinity are written as ``null``: they are not JSON, and other tools reject the file.
    """
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def json_safe(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None`` (nested dicts and lists too).

    JSON has no NaN: ``json.dumps(..., allow_nan=False)`` of the result never fails on numbers.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def read_test_metrics(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The run's test results, or ``None`` and why they cannot be used (missing, or damaged: never raises)."""
    if not path.is_file():
        return None, NO_METRICS_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        return None, f"cannot read '{path}' ({error})"
    except json.JSONDecodeError as error:
        return None, f"'{path}' is damaged (not valid JSON: {error.msg} at line {error.lineno})"
    if not isinstance(saved, dict):
        return None, f"'{path}' is damaged (it holds a JSON {type(saved).__name__}, not an object of metrics)"
    if not is_fraction(saved.get("test/acc")):
        return (
            None,
            f"'{path}' is damaged ('test/acc' is {json.dumps(saved.get('test/acc'))}, not a number from 0 to 1)",
        )
    for key, value in saved.items():
        if key.startswith("test/acc_") and value is not None and not is_fraction(value):
            return None, f"'{path}' is damaged ('{key}' is {json.dumps(value)}, not a number from 0 to 1 or null)"
    return saved, ""


def is_fraction(value: Any) -> bool:
    """A real number from 0 to 1 (JSON's ``true`` is no number here, NaN is not between 0 and 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
