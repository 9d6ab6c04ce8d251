"""Pictures for TensorBoard and reports: confusion matrix and prediction grid.

Drawn with Pillow straight into pixels, no plotting library: a plotting library
costs many times more per picture (docs/performance.md), and every validation epoch
draws two.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Protocol, runtime_checkable

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.nn import functional as F
from torchvision.utils import make_grid

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
