"""Where CIFAR-10 comes from: the official archive or an image-folder export.

Both sources end up as the same pair of tensors: ``uint8`` images of shape
``(N, 3, 32, 32)`` and ``int64`` labels of shape ``(N,)``. Everything after
loading (splitting, batching, augmentation) works on those tensors only. How each
source is read lives in :mod:`lenet_lightning.archive` and :mod:`lenet_lightning.image_folders`.
"""

from __future__ import annotations

from pathlib import Path

from lenet_lightning.archive import is_unpacked, load_archive_split
from lenet_lightning.cifar10 import ARCHIVE_FOLDER, ARCHIVE_NAME
from lenet_lightning.download import DOWNLOAD_URL_ENV
from lenet_lightning.errors import UserError
from lenet_lightning.image_folders import Split, load_folder_split

__all__ = ["Split", "detect_source", "load_split", "missing_data_message"]


def detect_source(data_dir: Path) -> str | None:
    """Return ``"archive"``, ``"folder"`` or ``None`` for what ``data_dir`` holds."""
    if is_unpacked(data_dir):
        return "archive"
    if (data_dir / "train").is_dir() or (data_dir / "test").is_dir():
        return "folder"
    return None


def load_split(data_dir: Path, train: bool, cache_dir: Path) -> Split:
    """Load the training (``train=True``) or test split from ``data_dir``."""
    source = detect_source(data_dir)
    if source == "archive":
        return load_archive_split(data_dir / ARCHIVE_FOLDER, train)
    if source == "folder":
        return load_folder_split(data_dir / ("train" if train else "test"), cache_dir)
    raise UserError(missing_data_message(data_dir))


def missing_data_message(data_dir: Path) -> str:
    """What to do when ``data_dir`` holds no data and none may be downloaded."""
    return (
        f"no CIFAR-10 data in '{data_dir}': let it download (needs internet, or set "
        f"--download-url / ${DOWNLOAD_URL_ENV} to a mirror), put the official "
        f"archive there ({ARCHIVE_NAME} or its {ARCHIVE_FOLDER}/), or point --data-dir at an image folder "
        "with train/<class>/ and test/<class>/"
    )
