"""``CIFAR10DataModule``: CIFAR-10 as in-memory tensors, for Lightning or a plain loop."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from lenet_lightning.batches import (
    EpochShardSampler,
    RawBatch,
    TensorBatchLoader,
    augment,
    normalize,
)
from lenet_lightning.download import source_urls
from lenet_lightning.errors import UserError
from lenet_lightning.sources import (
    ARCHIVE_NAME,
    CIFAR10_CLASSES,
    Split,
    detect_source,
    download_archive,
    load_split,
    unpack_local_archive,
)

# True per-channel statistics of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NORMALIZATIONS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "half": ((0.5,) * 3, (0.5,) * 3)}
CACHE_ENV = "LENET_LIGHTNING_CACHE"


def default_cache_dir() -> Path:
    """``$LENET_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/lenet_lightning``, else ``~/.cache/lenet_lightning``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lenet_lightning"


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from the official archive or an image-folder export, as uint8 tensors.

    Batches leave the loaders as ``uint8`` (4x less to copy to a GPU than float) and
    are augmented and normalised as whole batches in ``on_after_batch_transfer``,
    so on a GPU that work runs on the GPU. Outside a Trainer, call
    :meth:`transform_batch` on each raw batch to get model-ready float images.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` (unpacked from a
            ``cifar-10-python.tar.gz`` found there, else downloaded there when
            missing) or an image folder with ``train/<class>/`` and ``test/<class>/``.
        batch_size: images per batch (per process under DDP).
        num_workers: worker processes slicing batches (persistent); 0, the
            default, slices in the main process, which measures faster (see README).
        val_size: images carved from the training split for validation, with a
            generator seeded by ``seed`` so every process gets the same split.
        seed: seeds the split, the shuffling (per epoch) and the augmentation (per batch).
        pin_memory: pin each batch in page-locked memory for faster GPU copies.
        normalization: ``"cifar10"`` (true channel mean/std) or ``"half"`` (the
            tutorial's ``Normalize(0.5, 0.5)``).
        hflip: random horizontal flips while training.
        translate: random shifts of up to this many pixels while training (0: off).
        cache_dir: where decoded image folders are cached (default: see
            :func:`default_cache_dir`); never inside ``data_dir``, which may be read-only.
        download: download the official archive when ``data_dir`` holds no data.
        download_url: mirror(s) of the official archive, comma-separated, tried before the built-in
            ones (md5-verified whatever the source).
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 256,
        num_workers: int = 0,
        val_size: int = 5000,
        seed: int = 0,
        pin_memory: bool = False,
        normalization: str = "cifar10",
        hflip: bool = True,
        translate: int = 2,
        cache_dir: str | None = None,
        download: bool = True,
        download_url: str | None = None,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise UserError(f"unknown normalization '{normalization}': use one of {', '.join(NORMALIZATIONS)}")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if min(val_size, translate, num_workers) < 0:
            raise UserError(f"val size, translate and workers must be >= 0, got {val_size}, {translate}, {num_workers}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.pin_memory = pin_memory
        self.hflip = hflip
        self.translate = translate
        self.download = download
        self.download_url = download_url
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.classes = CIFAR10_CLASSES
        self.num_classes = len(CIFAR10_CLASSES)
        self.dims = (3, 32, 32)
        self.mean, self.std = NORMALIZATIONS[normalization]
        self.train_split: Split | None = None
        self.val_split: Split | None = None
        self.test_split: Split | None = None
        self._prepared: dict[bool, Split] = {}  # splits prepare_data loaded, by train=True/False
        self._fallback_generators: dict[torch.device, torch.Generator] = {}

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
            if (self.data_dir / self._folder(train)).is_dir() and not loaded:
                self._prepared[train] = load_split(self.data_dir, train, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs: fit/validate use train+val, test/predict use test."""
        if stage in (None, "fit", "validate") and self.train_split is None:
            self.train_split, self.val_split = self._split_train(self._load(train=True))
        if stage in (None, "test", "predict") and self.test_split is None:
            self.test_split = self._load(train=False)

    def _load(self, train: bool) -> Split:
        """The split prepare_data loaded in this process, else loaded now."""
        prepared = self._prepared.pop(train, None)
        return prepared if prepared is not None else load_split(self.data_dir, train, self.cache_dir)

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader(self._require(self.train_split, "fit"), train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader(self._require(self.val_split, "fit"), train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader(self._require(self.test_split, "test"), train=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        return self.test_dataloader()

    def on_after_batch_transfer(self, batch: RawBatch | Tensor, dataloader_idx: int) -> tuple[Tensor, Tensor] | Tensor:
        """Augment (training only) and normalise the batch on the device it now lives on."""
        if isinstance(batch, Tensor):
            # The model summary and graph send the model's float example input through here.
            return batch
        return self.transform_batch(batch, train=self.trainer is not None and self.trainer.training)

    def transform_batch(self, batch: RawBatch, train: bool = False) -> tuple[Tensor, Tensor]:
        """Turn a raw ``(uint8 images, labels[, seed])`` batch into model-ready float images.

        This is what a plain PyTorch loop calls on each batch from these loaders.
        With ``train=True`` the batch is also augmented, with a generator seeded by
        the batch's own seed when it carries one (so runs are reproducible).
        """
        images, labels = batch[0], batch[1]
        if train and (self.hflip or self.translate):
            generator = self._generator(images.device, batch[2] if len(batch) == 3 else None)
            images = augment(images, self.hflip, self.translate, generator)
        return normalize(images, self.mean, self.std), labels

    def _generator(self, device: torch.device, seed: int | None) -> torch.Generator:
        if seed is not None:
            return torch.Generator(device=device).manual_seed(seed)
        # A batch without a seed (hand-made): one running generator per device.
        if device not in self._fallback_generators:
            self._fallback_generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._fallback_generators[device]

    def _split_train(self, split: Split) -> tuple[Split, Split]:
        images, labels = split
        if self.val_size >= len(labels):
            raise UserError(f"val size {self.val_size} leaves no training images (have {len(labels)})")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :]
        return (images[train], labels[train]), (images[val], labels[val])

    def _loader(self, split: Split, train: bool) -> TensorBatchLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShardSampler(
            len(split[1]),
            self.batch_size,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        return TensorBatchLoader(*split, sampler, num_workers=self.num_workers, pin_memory=self.pin_memory)

    @staticmethod
    def _folder(train: bool) -> str:
        return "train" if train else "test"

    @staticmethod
    def _require(split: Split | None, stage: str) -> Split:
        if split is None:
            raise RuntimeError(f"call setup('{stage}') before asking for this dataloader")
        return split
