"""Batches straight from in-memory tensors, transformed as whole batches.

A ``TensorBatchLoader`` slices batches out of one ``uint8`` image tensor (on the
CPU, or on the GPU where the data set was moved) and turns each into
model-ready ``(float images, int64 labels)``: no per-image Python work, no
worker processes to feed. Its order depends only on ``(seed, epoch)`` and the
augmentation of each batch only on ``(seed, epoch, rank, batch index)``, and it
can resume in the middle of an epoch: an interrupted run ends exactly like an
uninterrupted one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

Batch = tuple[Tensor, Tensor]
# One's own augmentation: (uint8 images (B, 3, H, W), generator) -> images (uint8, or float on the 0-255 scale).
Augmentation = Callable[[Tensor, torch.Generator], Tensor]
# What a sampler asks for: the batch's augmentation seed (None: not augmented) and its image indices.
BatchRequest = tuple[int | None, Tensor]


class EpochShardSampler:
    """Yields one request per batch for one process's share of an epoch.

    The order is a permutation seeded by ``(seed, epoch)``; ``set_epoch`` is called
    by Lightning's loops (as for ``DistributedSampler``) and should be called by a
    plain loop too. With ``world_size > 1`` each rank takes every
    ``world_size``-th index. Training (``shuffle=True``) trims the data to a multiple
    of ``world_size`` so every rank runs the same number of steps, and gives each
    batch an augmentation seed derived from ``(seed, epoch, rank, batch index)``;
    evaluation keeps every sample exactly once, so no sample is counted twice.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0  # first batch of the next iteration; set when resuming mid-epoch
        self._epoch_used = False  # whether an iteration began since the epoch was last set

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_used = False

    def shard(self) -> Tensor:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator)
            order = order[: len(order) - len(order) % self.world_size]
        else:
            order = torch.arange(self.num_samples)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.shuffle:
            per_rank = self.num_samples // self.world_size
        else:
            per_rank = len(range(self.rank, self.num_samples, self.world_size))
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[BatchRequest]:
        # Iterated again without set_epoch (a plain loop): the next epoch, reshuffled and
        # re-augmented, as DataLoader(shuffle=True) does. Lightning calls set_epoch every epoch.
        if self._epoch_used:
            self.epoch += 1
        self._epoch_used = True
        start, self.start = self.start, 0
        for index, indices in enumerate(self.shard().split(self.batch_size)):
            if index >= start:
                seed = mix_seed(self.seed, self.epoch, self.rank, index) if self.shuffle else None
                yield seed, indices


@dataclass(frozen=True)
class BatchTransform:
    """uint8 batch -> model-ready float batch: optional augmentation, then per-channel normalisation.

    Augmentation (``hflip``, ``translate``, then ``extra``) runs only for requests
    that carry a seed (training batches), with a generator seeded by that seed on
    the batch's own device. Picklable, so it also runs inside loader workers.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = False
    translate: int = 0
    extra: Augmentation | None = None
    pad_mode: str = "zeros"

    def __call__(self, images: Tensor, seed: int | None) -> Tensor:
        if seed is not None and (self.hflip or self.translate or self.extra):
            generator = torch.Generator(device=images.device).manual_seed(seed)
            if self.hflip or self.translate:
                images = augment(images, self.hflip, self.translate, generator, self.pad_mode)
            if self.extra is not None:
                images = self.extra(images, generator)
        return normalize(images, self.mean, self.std)


class TensorSlices(Dataset[Any]):
    """A map-style dataset whose items are whole batches: ``request -> (float images, labels)``.

    With ``with_labels=False`` an item is the images alone (prediction batches).
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: BatchTransform, with_labels: bool = True) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, request: BatchRequest) -> Batch | Tensor:
        seed, indices = request
        indices = indices.to(self.images.device, non_blocking=True)
        images = self.transform(self.images[indices], seed)
        return (images, self.labels[indices]) if self.with_labels else images


class TensorBatchLoader:
    """An iterable of model-ready ``(images, labels)`` batches sliced from in-memory tensors.

    With ``num_workers=0`` (the default, chosen by measurement: docs/performance.md) each
    batch is one indexing operation plus the batch transform, in the main process
    and on the device the data live on. With ``num_workers > 0`` the same requests
    go to a persistent-worker ``DataLoader``. Either way the loader itself is not a
    ``DataLoader``, so Lightning leaves it alone (no sampler replacement under DDP),
    and it is *stateful* (``state_dict`` / ``load_state_dict``), so Lightning can
    resume it in the middle of an epoch.
    """

    # Like a DataLoader built with batch_size=None: Lightning inspects these
    # attributes (and calls ``sampler.set_epoch`` each epoch).
    batch_sampler = None

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        sampler: EpochShardSampler,
        transform: BatchTransform,
        num_workers: int = 0,
        pin_memory: bool = False,
        with_labels: bool = True,
    ) -> None:
        self.dataset = TensorSlices(images, labels, transform, with_labels=with_labels)
        self.sampler = sampler
        self.batch_size = sampler.batch_size
        self.num_workers = num_workers
        # Page-locked memory only helps copies from the CPU to a CUDA device.
        self.pin_memory = pin_memory and torch.cuda.is_available() and images.device.type == "cpu"
        self._position = 0
        self._workers: DataLoader[Batch | Tensor] | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch | Tensor]:
        self._position = self.sampler.start
        for batch in self._batches():
            self._position += 1
            yield batch
        self._position = 0

    def _batches(self) -> Iterator[Batch | Tensor]:
        if self.num_workers == 0:
            for request in self.sampler:
                batch = self.dataset[request]
                yield pin(batch) if self.pin_memory else batch
            return
        if self._workers is None:
            self._workers = DataLoader(
                self.dataset,
                sampler=self.sampler,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=True,
            )
        yield from self._workers

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.sampler.epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["position"]


def pin(batch: Any) -> Any:
    """The batch (a tensor or a tuple of tensors) in page-locked memory."""
    return tuple(t.pin_memory() for t in batch) if isinstance(batch, tuple) else batch.pin_memory()


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (distinct inputs give unrelated seeds)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**64 - 1)
        value = (value * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return value >> 1


# --- batch transforms --------------------------------------------------------------


PadMode = Literal["zeros", "reflect"]
PAD_MODES: tuple[str, ...] = get_args(PadMode)


def augment(images: Tensor, hflip: bool, max_shift: int, generator: torch.Generator, pad_mode: str = "zeros") -> Tensor:
    """Random horizontal flip (p=1/2) and random shift by up to ``max_shift`` pixels.

    The same as torchvision's ``RandomHorizontalFlip()`` + ``RandomCrop(32,
    padding=max_shift)`` (``pad_mode`` ``"zeros"``: zero fill, ``"reflect"``:
    ``padding_mode="reflect"``), for a whole ``uint8`` batch in one ``gather``:
    each output pixel reads its source pixel from the padded batch.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (max_shift,) * 4, mode="reflect" if pad_mode == "reflect" else "constant")
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    if not hflip:
        flip = torch.zeros_like(flip)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch, 1), device=device, generator=generator)
    cols = torch.arange(width, device=device)
    cols = torch.where(flip[:, None], cols.flip(0), cols) + offsets[1]  # (B, W)
    rows = torch.arange(height, device=device) + offsets[0]  # (B, H)
    source = rows[:, :, None] * (width + 2 * max_shift) + cols[:, None, :]  # (B, H, W) into padded
    source = source.view(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.reshape(batch, channels, -1).gather(2, source).view(batch, channels, height, width)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Images on the 0-255 scale (uint8 or float) to float32, scaled to [0, 1] then standardised per channel."""
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    # In place on the new float tensor: a third of the time of addcmul(shift, x, scale),
    # which broadcasts its small first operand slowly on CPU (benchmarks/throughput.py).
    return images.to(torch.float32, copy=True).mul_(scale).add_(shift)


def denormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The inverse of :func:`normalize`, back to ``uint8`` pixels (for pictures)."""
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    return ((images.float() - shift) / scale).round().clamp(0, 255).to(torch.uint8)


@functools.cache
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel scale and shift, made once per device (not a host-to-device copy per batch)."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=device).view(1, -1, 1, 1)
    return scale, shift
