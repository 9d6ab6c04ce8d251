"""Image folders (``train/<class>/*.png``, ``test/<class>/*.jpg``): listing, decoding, caching.

A folder is decoded once into ``uint8`` tensors and cached in a checksummed file named
after its fingerprint, so later runs read one file instead of 60,000 images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.nn import functional as F
from tqdm import tqdm

from lenet_lightning.cifar10 import CLASSES, IMAGE_SIZE, IMAGE_SUFFIXES
from lenet_lightning.decode_cache import cache_name, read_cache, write_cache
from lenet_lightning.errors import UserError
from lenet_lightning.progress import notice

Split = tuple[Tensor, Tensor]  # uint8 images (N, 3, 32, 32) and int64 labels (N,), whatever the source


def list_image_folder(folder: Path) -> list[tuple[str, int]]:
    """Every image file under ``folder/<class>/`` (as a path string) with its label, in a stable order.

    Hidden entries (names starting with ``.``: ``.ipynb_checkpoints``, ``.DS_Store``) are
    skipped, with one notice for folders; so are special files named like images (FIFOs,
    devices, sockets: opening one could wait for ever), with one notice. Plain strings from
    ``os.scandir``, not ``Path`` objects: for the 50,000 files of CIFAR-10, building
    ``Path`` objects took longer than listing and stat-ing the files.
    """
    if not folder.is_dir():
        raise UserError(f"'{folder}' is missing: an image folder needs train/<class>/ and test/<class>/")
    folders = [entry.name for entry in folder.iterdir() if entry.is_dir()]
    hidden = sorted(name for name in folders if name.startswith("."))
    found = sorted(name for name in folders if not name.startswith("."))
    if found != sorted(CLASSES):
        raise UserError(
            f"class folders in '{folder}' are {found}; rename them to the ten CIFAR-10 classes: {', '.join(CLASSES)}"
        )
    files, special = [], []
    for label, name in enumerate(CLASSES):
        listing = _list_class_folder(folder / name)
        files += [(path, label) for path in sorted(listing.images)]
        hidden += [f"{name}/{entry}" for entry in sorted(listing.hidden_folders)]
        special += sorted(listing.special)
    _notice_skipped(folder, hidden, special)
    if not files:
        raise UserError(f"no .png or .jpg images under '{folder}': copy the images into its class folders")
    return files


@dataclasses.dataclass
class _ClassListing:
    images: list[str] = dataclasses.field(default_factory=list)
    hidden_folders: list[str] = dataclasses.field(default_factory=list)
    special: list[str] = dataclasses.field(default_factory=list)  # FIFOs, devices, sockets named like images


def _list_class_folder(class_folder: Path) -> _ClassListing:
    listing = _ClassListing()
    with os.scandir(class_folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                if entry.is_dir():
                    listing.hidden_folders.append(entry.name)
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                kind = _file_kind(entry)
                if kind == "image":
                    listing.images.append(entry.path)
                elif kind == "special":
                    listing.special.append(entry.path)
    return listing


def _file_kind(entry: os.DirEntry[str]) -> str:
    """``image`` (a regular file, or a broken link for the fingerprint to name), ``folder`` or ``special``."""
    if entry.is_file(follow_symlinks=False):  # the common case, answered without a system call
        return "image"
    try:
        mode = os.stat(entry.path).st_mode
    except OSError:
        return "image"  # a link to nothing: folder_fingerprint names it with the fix
    if stat.S_ISREG(mode):
        return "image"
    return "folder" if stat.S_ISDIR(mode) else "special"


def _notice_skipped(folder: Path, hidden: list[str], special: list[str]) -> None:
    if hidden:
        notice(f"skipping hidden folders in '{folder}' (not classes, not images): {', '.join(hidden)}")
    if special:
        notice(
            f"skipping {len(special)} special file{'s' * (len(special) > 1)} named like images in '{folder}' "
            "(FIFOs, devices or sockets, "
            f"not images), e.g. '{special[0]}': replace them with image files or delete them"
        )


def folder_fingerprint(files: list[tuple[str, int]]) -> str:
    """A hash of names, sizes and modification times: changes when the folder does."""
    lines = []
    for path, label in files:
        try:
            info = os.stat(path)
        except OSError as error:  # e.g. a link whose target is gone
            reason = "a link to a missing file" if os.path.islink(path) else error.strerror or str(error)
            raise UserError(f"cannot read image '{path}' ({reason}): replace or delete the file") from None
        lines.append(f"{CLASSES[label]}/{os.path.basename(path)}:{label}:{info.st_size}:{info.st_mtime_ns}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:20]


def load_folder_split(folder: Path, cache_dir: Path) -> Split:
    """Load an image folder, decoding it once and reusing a checksummed cache file afterwards.

    The cache lives in ``cache_dir`` (not the data folder, which may be read-only)
    and its name holds the folder's fingerprint, so a changed folder is decoded again.
    A damaged cache is decoded again and replaced; one that cannot be written costs
    only the decoding time of the next run.
    """
    files = list_image_folder(folder)
    path = cache_dir / cache_name(folder, folder_fingerprint(files))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    images = read_cache(path, labels)
    if images is None:
        images, labels = decode_files(files)
        write_cache(path, images, labels)
    return images, labels


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


ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 is upright, 2-8 a flip and/or rotation


def read_image(path: str | Path) -> Tensor:
    """Decode one image file as a ``uint8`` RGB tensor of shape ``(3, 32, 32)``.

    Images are turned upright by their EXIF orientation (as viewers show them); grey,
    palette and alpha images become RGB; 16- and 32-bit grey images (which Pillow's RGB
    conversion clips to white) are scaled to 8 bits first; other sizes are resized. A
    FIFO, device or socket is refused, never opened. Pillow, not ``torchvision.io``: torchvision 0.29 deprecates its
    image decoding in favour of TorchCodec.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open() for ever
            raise ValueError("not a regular file: a FIFO, device or socket")
        with Image.open(path) as opened:
            # Cameras store photos sideways with an orientation tag; what was seen is the upright image.
            file = ImageOps.exif_transpose(opened) if opened.getexif().get(ORIENTATION_TAG, 1) != 1 else opened
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
