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
import sys
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from tqdm import tqdm
from typing_extensions import override

from lenet_lightning.cifar10 import ARCHIVE_FOLDER, ARCHIVE_MD5, ARCHIVE_NAME, CLASSES, IMAGE_SIZE, IMAGE_SUFFIXES
from lenet_lightning.download import (
    DOWNLOAD_URL_ENV,
    DownloadError,
    Limits,
    PartialFile,
    fetch,
    file_md5,
    folder_lock,
    notice,
    source_urls,
)
from lenet_lightning.errors import UserError

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
    """Read and check the official python-pickle batches (``data_batch_1..5`` or ``test_batch``)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    batches = [read_archive_batch(folder / name) for name in names]
    images = np.concatenate([data for data, _ in batches]).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.from_numpy(images), torch.from_numpy(np.concatenate([labels for _, labels in batches]))


# What official batches need to be unpickled: numpy's array reconstruction, nothing else.
# numpy 2 renamed numpy.core to numpy._core; the official files (Python 2 pickles) use the old name.
BATCH_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle asked for a callable or class that official CIFAR-10 batches never use."""


class BatchUnpickler(pickle.Unpickler):
    """Unpickles official CIFAR-10 batches and refuses anything that could run code.

    Unpickling calls whatever a file names (``os.system`` included); a batch only
    names what rebuilds a numpy array (:data:`BATCH_GLOBALS`), so any other name is
    refused before it is even imported.
    """

    @override
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in BATCH_GLOBALS:
            raise RefusedGlobalError(f"{module}.{name}")
        return super().find_class(module, name)


def read_archive_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch as ``uint8`` pixels ``(N, 3072)`` and ``int64`` labels ``(N,)``, checked.

    Raises :class:`UserError` naming the file when it is missing, unreadable, would run
    code when unpickled, or does not hold ``N`` rows of 3072 pixels with ``N`` labels in 0..9.
    """
    fix = f"delete '{path.parent}' and download again, or put the official archive's {ARCHIVE_FOLDER}/ there"
    if not path.is_file():
        raise UserError(f"'{path}' is missing: {fix}")
    try:
        with path.open("rb") as file:
            # latin1 turns the Python 2 strings of the official files into what numpy expects.
            entry = BatchUnpickler(file, encoding="latin1").load()
    except RefusedGlobalError as refused:
        raise UserError(
            f"refused to read '{path}': it is not an official CIFAR-10 batch and unpickling it could run code "
            f"(it asks for {refused}); {fix}"
        ) from None
    except Exception as error:  # truncated or garbled pickles fail in many ways; every one means "not a batch"
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise UserError(f"cannot read '{path}' ({reason}): {fix}") from None
    data, labels = _batch_field(entry, "data"), _batch_field(entry, "labels")
    problem = _batch_problem(data, labels)
    if problem:
        raise UserError(f"'{path}' is not a valid CIFAR-10 batch: {problem}; {fix}")
    return np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def _batch_field(entry: object, key: str) -> Any:
    """``entry[key]``; batches read as Python 3 bytes (or written by Python 3) have ``bytes`` keys."""
    if not isinstance(entry, dict):
        return None
    return entry.get(key, entry.get(key.encode()))


def _batch_problem(data: Any, labels: Any) -> str | None:
    """What is wrong with a batch's ``data`` and ``labels``, or ``None``."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        found = f"shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        return f"'data' is {found}, expected an array of shape (N, 3072) (each row: 1024 red, green, blue values)"
    if data.dtype.kind not in "ui" or (data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255)):
        return f"'data' holds {data.dtype} values, expected 8-bit pixels (0..255)"
    values = np.asarray(labels) if isinstance(labels, list | np.ndarray) else None
    if values is None or values.ndim != 1 or (values.size and values.dtype.kind not in "ui"):
        return "'labels' is not a list of class numbers"
    if len(values) != len(data):
        return f"it holds {len(data)} images but {len(values)} labels"
    if values.size and (values.min() < 0 or values.max() >= len(CLASSES)):
        return f"its labels range from {values.min()} to {values.max()}, expected 0..{len(CLASSES) - 1}"
    return None


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
    md5 = md5 or ARCHIVE_MD5
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
    archive, md5 = data_dir / ARCHIVE_NAME, md5 or ARCHIVE_MD5
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


def list_image_folder(folder: Path) -> list[tuple[str, int]]:
    """Every image file under ``folder/<class>/`` (as a path string) with its label, in a stable order.

    Plain strings from ``os.scandir``, not ``Path`` objects: for the 50,000 files of
    CIFAR-10, building ``Path`` objects took longer than listing and stat-ing the files.
    """
    if not folder.is_dir():
        raise UserError(f"'{folder}' is missing: an image folder needs train/<class>/ and test/<class>/")
    found = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if sorted(found) != sorted(CLASSES):
        raise UserError(
            f"class folders in '{folder}' are {found}; rename them to the ten CIFAR-10 classes: {', '.join(CLASSES)}"
        )
    files = []
    for label, name in enumerate(CLASSES):
        with os.scandir(folder / name) as entries:
            paths = sorted(entry.path for entry in entries if entry.name.lower().endswith(IMAGE_SUFFIXES))
        files += [(path, label) for path in paths]
    if not files:
        raise UserError(f"no .png or .jpg images under '{folder}': copy the images into its class folders")
    return files


def folder_fingerprint(files: list[tuple[str, int]]) -> str:
    """A hash of names, sizes and modification times: changes when the folder does."""
    lines = []
    for path, label in files:
        try:
            stat = os.stat(path)
        except OSError as error:  # e.g. a link whose target is gone
            reason = "a link to a missing file" if os.path.islink(path) else error.strerror or str(error)
            raise UserError(f"cannot read image '{path}' ({reason}): replace or delete the file") from None
        lines.append(f"{CLASSES[label]}/{os.path.basename(path)}:{label}:{stat.st_size}:{stat.st_mtime_ns}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:20]


def load_folder_split(folder: Path, cache_dir: Path) -> Split:
    """Load an image folder, decoding it once and reusing a checksummed cache file afterwards.

    The cache lives in ``cache_dir`` (not the data folder, which may be read-only)
    and its name holds the folder's fingerprint, so a changed folder is decoded again.
    A damaged cache is decoded again and replaced; one that cannot be written costs
    only the decoding time of the next run.
    """
    files = list_image_folder(folder)
    path = cache_dir / f"{folder.resolve().parent.name}-{folder.name}-{folder_fingerprint(files)}.pt"
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    images = read_cache(path, labels)
    if images is None:
        images, labels = decode_files(files)
        write_cache(path, images, labels)
    return images, labels


def split_digest(images: Tensor, labels: Tensor) -> str:
    """sha256 of the images' and labels' bytes: the cache's checksum."""
    digest = hashlib.sha256(images.contiguous().numpy().data)
    digest.update(labels.contiguous().numpy().data)
    return digest.hexdigest()


def read_cache(path: Path, labels: Tensor) -> Tensor | None:
    """The cached images of a folder with these ``labels``, or ``None`` when there is no intact cache.

    A cache that is truncated, overwritten, unreadable or incomplete gets one line on
    stderr and is ignored, so the caller decodes the images again and replaces it.
    """
    if not path.exists():
        return None
    try:
        cached = torch.load(path, weights_only=True)
    except Exception as error:  # whatever makes a cache unreadable, the cure is the same: decode again
        problem: str | None = f"unreadable: {type(error).__name__}"
    else:
        problem = _cache_problem(cached, labels)
    if problem is None:
        return cached["images"]
    notice(f"the decoded-image cache '{path}' is damaged ({problem}): decoding the images again")
    return None


def _cache_problem(cached: Any, labels: Tensor) -> str | None:
    """What is wrong with a loaded cache for a folder with these ``labels``, or ``None``."""
    if not isinstance(cached, dict) or not {"images", "labels", "sha256"} <= cached.keys():
        return "images, labels or checksum missing"
    images, cached_labels = cached["images"], cached["labels"]
    expected_shape = (len(labels), 3, IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.shape != expected_shape:
        return "images of the wrong type or number"
    if not isinstance(cached_labels, Tensor) or cached_labels.dtype != labels.dtype:
        return "labels of the wrong type"
    if not torch.equal(cached_labels, labels):
        return "labels that differ from the folder's"
    if cached["sha256"] != split_digest(images, labels):
        return "checksum mismatch: its bytes changed after it was written"
    return None


def write_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    """Save decoded images with their checksum; when that fails, say so in one line and go on.

    The file is written under a name unique to this writer, then renamed, so a killed
    run never leaves a truncated cache and concurrent writers never remove each other's
    files; a failed write removes its own temporary file.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tmp.open("wb") as file:
                torch.save({"images": images, "labels": labels, "sha256": split_digest(images, labels)}, file)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        notice(
            f"warning: cannot write the decoded-image cache '{path}' ({error.strerror or error}): going on "
            "without it, the next run decodes the images again; pass a writable --cache-dir"
        )


# Decoding shows progress only when it lasts longer than this (a few small folders decode at once).
DECODE_PROGRESS_AFTER_S = 1.0


def decode_files(files: list[tuple[str, int]]) -> Split:
    """Decode image files into ``uint8`` images ``(N, 3, 32, 32)`` and their labels, showing progress.

    Progress goes to stderr: a tqdm bar on a terminal, else a line when decoding
    starts and one when it ends; neither when it takes under ``DECODE_PROGRESS_AFTER_S``.
    """
    folder = Path(files[0][0]).parent.parent if files else Path()
    # Pillow releases the GIL while decoding, so threads use every core.
    with DecodeProgress(len(files), folder) as progress, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        images = [progress.step(image) for image in pool.map(lambda item: read_image(item[0]), files)]
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.stack(images), labels


class DecodeProgress:
    """Progress of decoding ``total`` images from ``folder`` on stderr, once it lasts long enough to matter."""

    def __init__(self, total: int, folder: Path) -> None:
        self.total, self.folder, self.done = total, folder, 0
        self.started = time.monotonic()
        self.announced = False
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(
                total=total,
                desc=f"decoding {folder} (once, then cached)",
                unit="img",
                file=sys.stderr,
                mininterval=1.0,
                delay=DECODE_PROGRESS_AFTER_S,
                leave=False,
            )

    def __enter__(self) -> DecodeProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.announced and exc_info[0] is None:
            notice(f"decoded {self.done} images in {time.monotonic() - self.started:.0f} s")

    def step(self, image: Tensor) -> Tensor:
        """Count one decoded image; returns it."""
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif not self.announced and time.monotonic() - self.started >= DECODE_PROGRESS_AFTER_S:
            self.announced = True
            notice(f"decoding {self.total} images in '{self.folder}' (once, then cached): {self.done} done")
        return image


def read_image(path: str | Path) -> Tensor:
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
