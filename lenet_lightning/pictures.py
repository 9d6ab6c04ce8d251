"""Pictures for TensorBoard and reports: confusion matrix and prediction grid.

Drawn with matplotlib's non-interactive Agg backend (no display needed), small
and without layout passes, so they cost little per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast, runtime_checkable

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI event loop

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import make_grid
from typing_extensions import override

from lenet_lightning.batches import denormalize

CORRECT_COLOUR = "#1a7f37"
WRONG_COLOUR = "#d1242f"
CORRECT_RGB = (26, 127, 55)
WRONG_RGB = (209, 36, 47)


def confusion_figure(confusion: Tensor, class_names: Sequence[str], title: str) -> Figure:
    """The confusion matrix normalised per true class (cells: % of the row), names on both axes."""
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(figsize=(5.6, 5.2), dpi=80)
    axes.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    for row in ticks:
        for col in ticks:
            value = rates[row, col].item()
            colour = "white" if value > 0.5 else "black"
            axes.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=7, color=colour)
    figure.subplots_adjust(left=0.2, bottom=0.2, right=0.97, top=0.93)
    return figure


def prediction_figure(
    images: Tensor, targets: Tensor, preds: Tensor, class_names: Sequence[str], columns: int = 8
) -> Figure:
    """A grid of ``uint8`` images, each captioned with true and predicted class.

    Wrong predictions get a red frame and a red caption, right ones green. One
    axes and one image (not a subplot per picture) keep it cheap to draw.
    """
    scale, frame, caption = 3, 3, 26  # pixels: upscaling, frame width, caption height
    wrong = targets != preds
    colours = torch.tensor([CORRECT_RGB, WRONG_RGB], dtype=torch.uint8)[wrong.long()]  # (B, 3)
    pixels = images.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    framed = colours[:, :, None, None].expand(-1, -1, *(n + 2 * frame for n in pixels.shape[-2:])).clone()
    framed[:, :, frame:-frame, frame:-frame] = pixels
    cells = F.pad(framed, (0, 0, caption, 0), value=255)  # white room for the caption above each image
    canvas = make_grid(cells, nrow=columns, padding=0, pad_value=255)
    cell_h, cell_w = cells.shape[-2:]
    figure = plt.figure(figsize=(canvas.shape[-1] / 100, canvas.shape[-2] / 100), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    for index, (target, pred) in enumerate(zip(targets.tolist(), preds.tolist(), strict=True)):
        top, left = (index // columns) * cell_h + caption, (index % columns) * cell_w
        axes.text(
            left + cell_w / 2,
            top - 2,
            f"{class_names[target]}\n{'x ' if target != pred else ''}{class_names[pred]}",
            ha="center",
            va="bottom",
            fontsize=7,
            linespacing=1.0,
            color=WRONG_COLOUR if target != pred else CORRECT_COLOUR,
        )
    axes.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    return figure


def save_figure(figure: Figure, path: str) -> None:
    """Write ``figure`` as a PNG file and free it."""
    figure.savefig(path)
    plt.close(figure)


@runtime_checkable
class PicturedClassifier(Protocol):
    """What the pictures need of a classifier: class names, and confusion matrices by stage."""

    class_names: Sequence[str]
    confusion: dict[str, Tensor]

    def __call__(self, images: Tensor) -> Tensor: ...


@runtime_checkable
class NormalizedData(Protocol):
    """What the pictures need of a DataModule: the normalisation its batches carry."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class TensorBoardPictures(Callback):
    """Each validation epoch: confusion matrix and a prediction grid; after testing: the test confusion matrix.

    The grid always shows the same validation images (the first ``num_images`` of
    this process's validation shard, which is never shuffled), so epochs compare.
    Works with any module that is a :class:`PicturedClassifier` and any DataModule
    that is :class:`NormalizedData` (to show the images as they are).
    """

    def __init__(self, num_images: int = 32) -> None:
        self.num_images = num_images
        self._grid: tuple[Tensor, Tensor, Tensor] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(pl_module, PicturedClassifier) or not isinstance(datamodule, NormalizedData):
            raise TypeError(
                "TensorBoardPictures needs a module with class_names and confusion, and a DataModule with mean and std"
            )

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: tuple[Tensor, Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        images, targets = batch[0][: self.num_images], batch[1][: self.num_images]
        with torch.no_grad():
            preds = pl_module(images).argmax(dim=1)
        data = cast(NormalizedData, trainer.datamodule)  # type: ignore[attr-defined]
        self._grid = (denormalize(images, data.mean, data.std).cpu(), targets.cpu(), preds.cpu())

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        self._add(trainer, "val/confusion_matrix", self._confusion(pl_module, "val", trainer.current_epoch), step)
        if self._grid is not None:
            self._add(
                trainer,
                "val/predictions",
                prediction_figure(*self._grid, cast(PicturedClassifier, pl_module).class_names),
                step,
            )

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._add(trainer, "test/confusion_matrix", self._confusion(pl_module, "test"), trainer.global_step)

    @staticmethod
    def _confusion(pl_module: L.LightningModule, stage: str, epoch: int | None = None) -> Figure:
        title = f"{stage} confusion matrix (% of true class)" + (f", epoch {epoch}" if epoch is not None else "")
        model = cast(PicturedClassifier, pl_module)
        return confusion_figure(model.confusion[stage], model.class_names, title)

    @staticmethod
    def _add(trainer: L.Trainer, tag: str, figure: Figure, step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, figure, global_step=step, close=False)
        plt.close(figure)
