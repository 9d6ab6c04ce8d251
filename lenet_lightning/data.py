"""``CIFAR10DataModule``: CIFAR-10 as in-memory tensors, for Lightning or a plain loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from typing_extensions import override

from lenet_lightning.archive import download_archive, unpack_local_archive
from lenet_lightning.batches import (
    PAD_MODES,
    Augmentation,
    BatchTransform,
    EpochShardSampler,
    PadMode,
    TensorBatchLoader,
)
from lenet_lightning.cifar10 import (
    ARCHIVE_NAME,
    CLASSES,
    DEFAULT_DATA_DIR,
    IMAGE_SIZE,
    NormalizationName,
    default_cache_dir,
    resolve_normalization,
)
from lenet_lightning.download import given_urls, source_urls
from lenet_lightning.errors import SettingError, UserError
from lenet_lightning.image_folders import Split
from lenet_lightning.progress import notice
from lenet_lightning.sources import detect_source, load_split
from lenet_lightning.validation import check_bool, check_choice, check_int, check_path

MAX_SEED = 2**32 - 1  # what NumPy (seeded by Lightning's seed_everything) accepts


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from the official archive or an image-folder export, kept as uint8 tensors.

    Every loader yields ``(images, labels)``: float32 images ``(B, 3, 32, 32)``,
    normalised with ``mean``/``std`` (and augmented, for training), and int64
    labels. So the same loaders serve a ``Trainer`` (with or without
    ``datamodule=``), a plain PyTorch loop and any other model. A batch is one
    indexing operation into the uint8 data set and one batch-wide transform on
    the device the data live on: inside a Trainer on a CUDA GPU the data set is
    moved to that GPU once (about 180 MB), so there is no per-batch copy.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` (unpacked from a
            ``cifar-10-python.tar.gz`` found there, else downloaded there when
            missing) or an image folder with ``train/<class>/`` and ``test/<class>/``.
        batch_size: images per training batch (per process under DDP).
        eval_batch_size: images per validation, test and predict batch. Evaluation keeps
            no gradients, so it takes large batches whatever the training batch size (at
            the tutorial's batch 4, validating 5,000 images would take 1,250 steps).
        num_workers: worker processes making batches (persistent); 0, the
            default, makes them in the main process, which measures faster
            (docs/performance.md).
        val_size: images carved from the training split for validation: a number of
            images (at least 1: the best checkpoint is chosen on them) or a fraction of the
            split (``0.1``); drawn with a generator seeded by ``seed``, so every process
            gets the same split.
        seed: seeds the split, the shuffling (per epoch) and the augmentation (per batch).
        normalization: ``"cifar10"`` (true channel mean/std), ``"half"`` (the
            tutorial's ``Normalize(0.5, 0.5)``) or ``"none"`` (scale to [0, 1] only).
        mean: per-channel mean on the [0, 1] scale; with ``std``, replaces ``normalization``.
        std: per-channel standard deviation on the [0, 1] scale.
        hflip: random horizontal flips while training.
        translate: random shifts of up to this many pixels while training (0: off).
        pad_mode: what shifted-in pixels are: ``"zeros"`` (black) or ``"reflect"`` (the image mirrored at its edge).
        augmentation: one's own augmentation of training batches, applied after
            flip/translate: ``f(uint8 images (B, 3, H, W), generator) -> images``
            (uint8, or float on the 0-255 scale). Draw randomness only from
            ``generator`` (seeded per batch) to keep runs reproducible and resumable.
        device: where the uint8 data set lives and batches are made: ``None`` means
            the Trainer's device when it is a CUDA GPU, else the CPU; e.g. ``"cuda"``
            for a plain loop on a GPU.
        pin_memory: pin batches made on the CPU for faster copies to a CUDA GPU.
        cache_dir: where decoded image folders are cached (default: see
            :func:`default_cache_dir`); never inside ``data_dir``, which may be read-only.
        download: download the official archive when ``data_dir`` holds no data.
        download_url: one mirror of the official archive, or several separated by
            commas, tried before the built-in sources (md5-verified whatever the source).
    """

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 0,
        normalization: NormalizationName = "cifar10",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        hflip: bool = True,
        translate: int = 2,
        pad_mode: PadMode = "zeros",
        augmentation: Augmentation | None = None,
        device: str | None = None,
        pin_memory: bool = False,
        cache_dir: str | Path | None = None,
        download: bool = True,
        download_url: str | None = None,
    ) -> None:
        super().__init__()
        data_dir = check_path("data_dir", data_dir)
        cache_dir = None if cache_dir is None else check_path("cache_dir", cache_dir)
        check_int("batch_size", batch_size, minimum=1)
        check_int("eval_batch_size", eval_batch_size, minimum=1)
        check_int("num_workers", num_workers, minimum=0)
        check_val_size(val_size)
        check_int("seed", seed, minimum=0, maximum=MAX_SEED)
        self.mean, self.std = resolve_normalization(normalization, mean, std)
        mean, std = (list(mean) if mean is not None else None), (list(std) if std is not None else None)
        check_bool("hflip", hflip)
        # A shift of more than half the image moves it out of view.
        check_int("translate", translate, minimum=0, maximum=IMAGE_SIZE // 2)
        check_choice("pad_mode", pad_mode, PAD_MODES)
        check_bool("pin_memory", pin_memory)
        check_bool("download", download)
        check_download_url(download_url)
        self.save_hyperparameters(ignore=["augmentation"])
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.hflip = hflip
        self.translate = translate
        self.pad_mode = pad_mode
        self.augmentation = augmentation
        self.device = check_device(device)
        self.pin_memory = pin_memory
        self.download = download
        self.download_url = download_url
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.classes = CLASSES
        self.num_classes = len(CLASSES)
        self.dims = (3, 32, 32)
        self.train_split: Split | None = None
        self.val_split: Split | None = None
        self.test_split: Split | None = None
        self._prepared: dict[bool, Split] = {}  # splits prepare_data loaded, by train=True/False

    @override
    def prepare_data(self) -> None:
        """Download when needed, and decode image folders into the cache (one process per node).

        The image-folder splits it loads are kept for :meth:`setup` in this process, so that a
        run lists, fingerprints and reads each folder once, not once here and again in ``setup``
        (other processes of a multi-GPU run load theirs in ``setup``).
        """
        source = detect_source(self.data_dir)
        if source is None and (self.data_dir / ARCHIVE_NAME).is_file():
            unpack_local_archive(self.data_dir)  # put there by hand: no need to download it
        elif source is None and self.download:
            download_archive(self.data_dir, source_urls(self.download_url))
        if source != "folder":
            return
        for train in (True, False):
            loaded = (self.train_split if train else self.test_split) is not None or train in self._prepared
            if (self.data_dir / ("train" if train else "test")).is_dir() and not loaded:
                self._prepared[train] = load_split(self.data_dir, train, self.cache_dir)

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs: fit/validate use train+val, test/predict use test.

        ``fit`` loads the test split too, so that a missing or broken one stops a run
        before training rather than after it.
        """
        if stage in (None, "fit", "validate") and self.train_split is None:
            train = self._load(train=True)
            self._warn_missing_classes(train[1])
            self.train_split, self.val_split = self._split_train(train)
        if stage in (None, "fit", "test", "predict") and self.test_split is None:
            self.test_split = self._to_device(self._load(train=False))

    @override
    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader(self._require(self.train_split, "fit"), train=True)

    @override
    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader(self._require(self.val_split, "fit"), train=False)

    @override
    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader(self._require(self.test_split, "test"), train=False)

    @override
    def predict_dataloader(self) -> TensorBatchLoader:
        """The test images without their labels, as any module's default ``predict_step`` (``self(batch)``) expects."""
        return self._loader(self._require(self.test_split, "predict"), train=False, labels=False)

    def train_batches_per_epoch(self, world_size: int = 1) -> int:
        """Training batches per epoch and process (after ``setup('fit')``), e.g. for a learning-rate schedule."""
        num_samples = len(self._require(self.train_split, "fit")[1])
        return len(EpochShardSampler(num_samples, self.batch_size, shuffle=True, world_size=world_size))

    def _load(self, train: bool) -> Split:
        """The split prepare_data loaded in this process, else loaded now."""
        prepared = self._prepared.pop(train, None)
        return prepared if prepared is not None else load_split(self.data_dir, train, self.cache_dir)

    def _warn_missing_classes(self, labels: torch.Tensor) -> None:
        """One line on stderr when a class has no training images (an image folder may be partial on purpose)."""
        counts = torch.bincount(labels, minlength=self.num_classes).tolist()
        missing = [name for name, count in zip(self.classes, counts, strict=True) if count == 0]
        if missing and (self.trainer is None or self.trainer.is_global_zero):
            notice(
                f"warning: the training images in '{self.data_dir}' include no {', '.join(missing)}: "
                "the model cannot learn to recognise them"
            )

    def _split_train(self, split: Split) -> tuple[Split, Split]:
        images, labels = split
        val_size = validation_count(self.val_size, len(labels))
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[:val_size], order[val_size:]
        return self._to_device((images[train], labels[train])), self._to_device((images[val], labels[val]))

    def _to_device(self, split: Split) -> Split:
        device = self._data_device()
        return (split[0].to(device), split[1].to(device)) if device.type != "cpu" else split

    def _data_device(self) -> torch.device:
        if self.device is not None:
            return self.device
        if self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _loader(self, split: Split, train: bool, labels: bool = True) -> TensorBatchLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler = EpochShardSampler(
            len(split[1]), batch_size, shuffle=train, seed=self.seed, rank=rank, world_size=world_size
        )
        transform = BatchTransform(
            self.mean,
            self.std,
            hflip=self.hflip and train,
            translate=self.translate if train else 0,
            extra=self.augmentation if train else None,
            pad_mode=self.pad_mode,
        )
        return TensorBatchLoader(
            *split, sampler, transform, num_workers=self.num_workers, pin_memory=self.pin_memory, with_labels=labels
        )

    @staticmethod
    def _require(split: Split | None, stage: str) -> Split:
        if split is None:
            raise RuntimeError(f"call setup('{stage}') before asking for this dataloader")
        return split


def check_device(device: str | None) -> torch.device | None:
    """``None`` (the Trainer's device), or a device PyTorch knows (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingError("device", f"must be a device such as cpu or cuda (or None), got {device!r}") from None


def check_download_url(download_url: str | None) -> None:
    """``None``, or one or more http(s) URLs separated by commas: a malformed one is refused now, not mid-download."""
    if download_url is None:
        return
    if not isinstance(download_url, str):
        raise SettingError("download_url", f"must be a URL (or several, comma-separated), got {download_url!r}")
    try:
        given_urls(download_url, "download_url")
    except UserError as error:
        raise SettingError("download_url", str(error).removeprefix("download_url ")) from None


def check_val_size(val_size: int | float) -> None:
    """A number of images (at least 1) or a fraction strictly between 0 and 1."""
    if isinstance(val_size, float) and not 0 < val_size < 1:
        raise SettingError(
            "val_size", f"must be a number of images (at least 1) or a fraction between 0 and 1, got {val_size}"
        )
    if not isinstance(val_size, float):
        check_int("val_size", val_size, minimum=1)


def validation_count(val_size: int | float, available: int) -> int:
    """Images held out for validation from ``available`` training images (a fraction rounds, at least 1)."""
    count = max(1, round(val_size * available)) if isinstance(val_size, float) else val_size
    if count >= available:
        raise SettingError(
            "val_size",
            f"{val_size} leaves no training images (the training split has {available}): "
            "hold out fewer images or a fraction, e.g. 0.1",
        )
    return count
