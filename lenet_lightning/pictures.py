"""Pictures for TensorBoard and reports: confusion matrix and prediction grid.

Drawn with Pillow straight into pixels, no plotting library: a few milliseconds a
picture (matplotlib took 0.3-0.5 s per validation epoch for the same two), so every
validation epoch can have them without slowing training down.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Protocol, cast, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import make_grid
from typing_extensions import override

from lenet_lightning.batches import denormalize

CORRECT_RGB = (26, 127, 55)
WRONG_RGB = (209, 36, 47)
# The ends of matplotlib's "Blues" colour map: white for 0 % of the row, dark blue for 100 %.
LIGHTEST_BLUE = (247, 251, 255)
DARKEST_BLUE = (8, 48, 107)
CELL = 34  # pixels per confusion-matrix cell
INK = (0, 0, 0)


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font (no font files needed on the machine)."""
    return ImageFont.load_default(size=size)


def blue(rate: float) -> tuple[int, int, int]:
    """The cell colour for ``rate`` in [0, 1]."""
    red, green, blue_ = (round(a + (b - a) * rate) for a, b in zip(LIGHTEST_BLUE, DARKEST_BLUE, strict=True))
    return red, green, blue_


def vertical_text(text: str, size: int) -> Image.Image:
    """``text`` rotated a quarter turn (reads bottom to top), black on transparent."""
    left, top, right, bottom = (round(edge) for edge in font(size).getbbox(text))
    strip = Image.new("RGBA", (right - left + 2, bottom - top + 2), (255, 255, 255, 0))
    ImageDraw.Draw(strip).text((1 - left, 1 - top), text, font=font(size), fill=(*INK, 255))
    return strip.rotate(90, expand=True)


def confusion_image(confusion: Tensor, class_names: Sequence[str], title: str) -> Image.Image:
    """The confusion matrix normalised per true class (cells: % of the row), names on both axes."""
    counts = confusion.double().cpu()
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).tolist()
    n = len(class_names)
    names_width = max(round(font(11).getlength(name)) for name in class_names) + 8
    left, top = names_width + 20, 28
    width, height = left + n * CELL + 12, top + n * CELL + names_width + 22
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 6), title, font=font(12), fill=INK, anchor="mt")
    for row in range(n):
        for col in range(n):
            rate = rates[row][col]
            x, y = left + col * CELL, top + row * CELL
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=blue(rate))
            ink = "white" if rate > 0.5 else "black"
            draw.text((x + CELL // 2, y + CELL // 2), f"{100 * rate:.0f}", font=font(11), fill=ink, anchor="mm")
    for index, name in enumerate(class_names):
        middle = index * CELL + CELL // 2
        draw.text((left - 4, top + middle), name, font=font(11), fill=INK, anchor="rm")
        label = vertical_text(name, 11)
        image.paste(label, (left + middle - label.width // 2, top + n * CELL + 4), label)
    draw.text((left + n * CELL // 2, height - 4), "predicted class", font=font(11), fill=INK, anchor="mb")
    axis = vertical_text("true class", 11)
    image.paste(axis, (2, top + (n * CELL - axis.height) // 2), axis)
    return image


def prediction_image(
    images: Tensor, targets: Tensor, preds: Tensor, class_names: Sequence[str], columns: int = 8
) -> Image.Image:
    """A grid of ``uint8`` images, each captioned with true and predicted class.

    Wrong predictions get a red frame and a red caption (``x <predicted>``), right ones green.
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
    image = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    for index, (target, pred) in enumerate(zip(targets.tolist(), preds.tolist(), strict=True)):
        top, left = (index // columns) * cell_h, (index % columns) * cell_w
        text = f"{class_names[target]}\n{'x ' if target != pred else ''}{class_names[pred]}"
        colour = WRONG_RGB if target != pred else CORRECT_RGB
        draw.multiline_text(
            (left + cell_w // 2, top + 1), text, font=font(10), fill=colour, anchor="ma", align="center", spacing=1
        )
    return image


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
                prediction_image(*self._grid, cast(PicturedClassifier, pl_module).class_names),
                step,
            )

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._add(trainer, "test/confusion_matrix", self._confusion(pl_module, "test"), trainer.global_step)

    @staticmethod
    def _confusion(pl_module: L.LightningModule, stage: str, epoch: int | None = None) -> Image.Image:
        title = f"{stage} confusion matrix (% of true class)" + (f", epoch {epoch}" if epoch is not None else "")
        model = cast(PicturedClassifier, pl_module)
        return confusion_image(model.confusion[stage], model.class_names, title)

    @staticmethod
    def _add(trainer: L.Trainer, tag: str, image: Image.Image, step: int) -> None:
        pixels = np.asarray(image)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, pixels, global_step=step, dataformats="HWC")
