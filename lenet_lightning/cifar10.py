"""Facts about CIFAR-10 that every part of the project shares, with no Lightning import.

The data, the export bundle, prediction and the plain-PyTorch benchmark all read
these instead of keeping copies of their own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lenet_lightning.errors import SettingError

# The label order of the official archive (alphabetical, so image folders sort the same way).
CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The official archive: its name, the folder it unpacks to, its md5 and its exact size in bytes.
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_FOLDER = "cifar-10-batches-py"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_SIZE = 170_498_071

# True per-channel statistics of the training images, on the [0, 1] scale.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
NormalizationName = Literal["cifar10", "half", "none"]
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (MEAN, STD),
    "half": ((0.5,) * 3, (0.5,) * 3),  # the tutorial's Normalize(0.5, 0.5): pixels in [-1, 1]
    "none": ((0.0,) * 3, (1.0,) * 3),  # pixels scaled to [0, 1] only, like ToTensor()
}

DEFAULT_DATA_DIR = "data"
CACHE_ENV = "LENET_LIGHTNING_CACHE"


def default_cache_dir() -> Path:
    """``$LENET_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/lenet_lightning``, else ``~/.cache/lenet_lightning``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lenet_lightning"


def resolve_normalization(
    normalization: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std to use: a named preset, or ``mean``/``std`` given together.

    Raises :class:`SettingError` (a ``ValueError``) naming the parameter that is wrong.
    """
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise SettingError("normalization", f"must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if (mean is None) != (std is None):
        raise SettingError("mean", "and std must be given together (three values each), or neither")
    if mean is None or std is None:
        return NORMALIZATIONS[normalization]
    try:
        mean_values, std_values = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise SettingError("mean", f"and std need three numbers each; got mean {mean!r}, std {std!r}") from None
    finite = all(math.isfinite(value) for value in (*mean_values, *std_values))
    if len(mean_values) != 3 or len(std_values) != 3 or not finite or min(std_values) <= 0:
        raise SettingError(
            "mean", f"and std need three finite values each, std > 0; got mean {mean_values}, std {std_values}"
        )
    return mean_values, std_values
