"""Where CIFAR-10 comes from: the official archive or an image-folder export.

Both sources end up as the same pair of tensors: ``uint8`` images of shape
``(N, 3, 32, 32)`` and ``int64`` labels of shape ``(N,)``. Everything after
loading (splitting, batching, augmentation) works on those tensors only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from lenet_lightning.download import (
    DOWNLOAD_URL_ENV,
    DownloadError,
    Limits,
    PartialFile,
    fetch,
    file_md5,
    folder_lock,
    source_urls,
)
from lenet_lightning.errors import UserError

CIFAR10_CLASSES: tuple[str, ...] = (
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
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SIZE = 32

Split = tuple[Tensor, Tensor]


def detect_source(data_dir: Path) -> str | None:
    """Return ``"archive"``, ``"folder"`` or ``None`` for what ``data_dir`` holds."""
    if (data_dir / ARCHIVE_FOLDER / "batches.meta").is_file():
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
    return (
        f"no CIFAR-10 data in '{data_dir}': let it download (needs internet, or set "
        f"--download-url / ${DOWNLOAD_URL_ENV} to a mirror), put the official "
        f"archive there ({ARCHIVE_NAME} or its {ARCHIVE_FOLDER}/), or point --data-dir at an image folder "
        "with train/<class>/ and test/<class>/"
    )


# --- official archive -------------------------------------------------------------


def load_archive_split(folder: Path, train: bool) -> Split:
    """Read the official python-pickle batches (``data_batch_1..5`` or ``test_batch``)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"'{path}' is missing: delete '{folder}' and download again")
        with path.open("rb") as file:
            # The official format is a pickle; it is only read from the md5-verified archive.
            entry = pickle.load(file, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry["labels"])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def download_archive(
    data_dir: Path, urls: Sequence[str] | None = None, md5: str | None = None, limits: Limits | None = None
) -> None:
    """Download, verify and unpack the official archive into ``data_dir``.

    ``urls`` are tried in order (``None``: ``$LENET_LIGHTNING_DOWNLOAD_URL``, then the
    built-in :data:`~lenet_lightning.download.MIRRORS`); a source is dropped for the next
    when it fails, stalls or is too slow (``limits``), and whatever serves the archive,
    it must have the md5 ``md5`` (default: the official archive's). One process per
    folder downloads; others wait for it and then use its result. An unfinished
    download stays only as a hidden ``.part`` file that the next run resumes, and
    unpacking happens in a temporary folder renamed into place when complete, so
    nothing a later run could take for data is ever left half-done in ``data_dir``.
    """
    md5 = md5 or CIFAR10_MD5
    urls = source_urls() if urls is None else list(urls)
    with folder_lock(data_dir):
        if detect_source(data_dir) == "archive":
            return  # another process downloaded it while this one waited
        partial = PartialFile(data_dir, ARCHIVE_NAME)
        try:
            source = fetch(urls, partial, md5, limits or Limits())
        except DownloadError as failed:
            raise UserError(download_failed_message(data_dir, failed.problems, md5)) from None
        try:
            with _scratch_folder(data_dir) as scratch:
                _unpack(partial.path, scratch, data_dir, source=source)
        except UserError:
            partial.discard()  # md5-verified yet not a CIFAR-10 archive: downloading it again cannot help
            raise
        partial.discard()


def download_failed_message(data_dir: Path, problems: list[tuple[str, str]], md5: str) -> str:
    """A summary line, one line per source with what went wrong, then what to do."""
    lines = [f"no CIFAR-10 data in '{data_dir}', and no source delivered {ARCHIVE_NAME}:"]
    lines += [f"  {url}: {problem}" for url, problem in problems] or ["  (no source to try)"]
    lines.append(
        f"what to do: add a mirror with --download-url URL[,URL...] (or ${DOWNLOAD_URL_ENV}; any copy with md5 "
        f"{md5} works), or put {ARCHIVE_NAME} (or its {ARCHIVE_FOLDER}/) into '{data_dir}' by hand, or point "
        "--data-dir at an image folder with train/<class>/ and test/<class>/"
    )
    return "\n".join(lines)


def unpack_local_archive(data_dir: Path, md5: str | None = None) -> None:
    """Verify and unpack a ``cifar-10-python.tar.gz`` that was put into ``data_dir`` by hand."""
    archive, md5 = data_dir / ARCHIVE_NAME, md5 or CIFAR10_MD5
    with folder_lock(data_dir):
        if detect_source(data_dir) == "archive":
            return  # another process unpacked it while this one waited
        digest = file_md5(archive)
        if digest != md5:
            raise UserError(
                f"'{archive}' is not the official CIFAR-10 archive (md5 {digest}, expected {md5}): "
                "replace it with the official file, or delete it to download again"
            )
        with _scratch_folder(data_dir) as scratch:
            _unpack(archive, scratch, data_dir, source=str(archive))


@contextlib.contextmanager
def _scratch_folder(data_dir: Path) -> Iterator[Path]:
    """A temporary folder inside ``data_dir`` (same file system, so results can be renamed into place)."""
    try:
        scratch = tempfile.TemporaryDirectory(dir=data_dir, prefix=".unpack-")
    except OSError as error:
        raise UserError(
            f"cannot write to data folder '{data_dir}' ({error.strerror or error}): pass a writable --data-dir"
        ) from None
    with scratch as folder:
        yield Path(folder)


def _unpack(archive: Path, scratch: Path, data_dir: Path, source: str) -> None:
    unpacked = scratch / "unpacked"
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise UserError(f"cannot unpack the archive from {source} ({error}): use the official archive") from None
    if not (unpacked / ARCHIVE_FOLDER / "batches.meta").is_file():
        raise UserError(f"the archive from {source} holds no {ARCHIVE_FOLDER}/: use the official one")
    target = data_dir / ARCHIVE_FOLDER
    if target.exists():
        shutil.rmtree(target)
    os.replace(unpacked / ARCHIVE_FOLDER, target)


# --- image folder -----------------------------------------------------------------


def list_image_folder(folder: Path) -> list[tuple[Path, int]]:
    """Every image file under ``folder/<class>/`` with its label, in a stable order."""
    if not folder.is_dir():
        raise UserError(f"'{folder}' is missing: an image folder needs train/<class>/ and test/<class>/")
    found = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if sorted(found) != sorted(CIFAR10_CLASSES):
        raise UserError(
            f"class folders in '{folder}' are {found}; rename them to the ten CIFAR-10 "
            f"classes: {', '.join(CIFAR10_CLASSES)}"
        )
    files = []
    for label, name in enumerate(CIFAR10_CLASSES):
        for entry in sorted(os.scandir(folder / name), key=lambda e: e.name):
            if entry.name.lower().endswith(IMAGE_SUFFIXES):
                files.append((Path(entry.path), label))
    if not files:
        raise UserError(f"no .png or .jpg images under '{folder}': copy the images into its class folders")
    return files


def folder_fingerprint(files: list[tuple[Path, int]]) -> str:
    """A hash of names, sizes and modification times: changes when the folder does."""
    digest = hashlib.sha256()
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.parent.name}/{path.name}:{label}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_folder_split(folder: Path, cache_dir: Path) -> Split:
    """Load an image folder, decoding it once and reusing a cache file afterwards.

    The cache lives in ``cache_dir`` (not the data folder, which may be read-only)
    and its name holds the folder's fingerprint, so a changed folder is decoded again.
    """
    files = list_image_folder(folder)
    path = cache_dir / f"{folder.resolve().parent.name}-{folder.name}-{folder_fingerprint(files)}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        return cached["images"], cached["labels"]
    images, labels = decode_files(files)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a killed run never leaves a truncated cache behind.
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"images": images, "labels": labels}, tmp)
    os.replace(tmp, path)
    return images, labels


def decode_files(files: list[tuple[Path, int]]) -> Split:
    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(lambda item: read_image(item[0]), files))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.stack(images), labels


def read_image(path: Path) -> Tensor:
    """Decode one image file as a ``uint8`` RGB tensor of shape ``(3, 32, 32)``.

    Grey, palette and alpha images become RGB; 16- and 32-bit grey images (which
    Pillow's RGB conversion clips to white) are scaled to 8 bits first; other sizes
    are resized. Pillow, not ``torchvision.io``: torchvision 0.29 deprecates its
    image decoding in favour of TorchCodec.
    """
    try:
        with Image.open(path) as file:
            if file.mode.startswith("I"):  # I;16, I;16B, I: integer grey, up to 16 significant bits
                grey = np.asarray(file, dtype=np.float64) * (255.0 / 65535.0)
                pixels = np.repeat(np.rint(grey).clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
            else:
                pixels = np.asarray(file.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read image '{path}' ({error}): replace or delete the file") from None
    return resize_to_cifar(torch.from_numpy(pixels.copy()).permute(2, 0, 1))


def resize_to_cifar(image: Tensor) -> Tensor:
    """Resize a ``uint8`` ``(3, H, W)`` image to 32x32 (antialiased bilinear), unchanged if it already is."""
    if image.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    resized = F.interpolate(
        image[None].float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8)
