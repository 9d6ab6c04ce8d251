import numpy as np
import torch

from lenet_lightning import CIFAR10_CLASSES
from lenet_lightning.pictures import (
    CELL,
    CORRECT_RGB,
    DARKEST_BLUE,
    LIGHTEST_BLUE,
    WRONG_RGB,
    confusion_image,
    prediction_image,
)


def cell_centre_colours(pixels: np.ndarray, left: int, top: int, n: int) -> np.ndarray:
    """The colour a few pixels into each cell's corner (clear of the number drawn in its middle)."""
    return np.array([[pixels[top + row * CELL + 3, left + col * CELL + 3] for col in range(n)] for row in range(n)])


def test_confusion_cells_are_shaded_by_the_share_of_their_row():
    confusion = torch.diag(torch.arange(1, 11)) * 10  # every image classified correctly
    confusion[0] = torch.tensor([5, 5, 0, 0, 0, 0, 0, 0, 0, 0])  # airplanes: half right, half automobile
    pixels = np.asarray(confusion_image(confusion, CIFAR10_CLASSES, "test"))
    # Find the grid: the top-left cell of the diagonal is the first darkest-blue pixel on its row.
    dark = np.argwhere((pixels == DARKEST_BLUE).all(axis=2))
    top, left = dark.min(axis=0)
    top, left = top - CELL, left - CELL  # row 1, column 1 is the first fully dark cell
    colours = cell_centre_colours(pixels, left, top, 10)
    for row in range(1, 10):
        for col in range(10):
            expected = DARKEST_BLUE if row == col else LIGHTEST_BLUE
            assert tuple(colours[row, col]) == expected, (row, col)
    half = tuple(round((a + b) / 2) for a, b in zip(LIGHTEST_BLUE, DARKEST_BLUE, strict=True))
    assert tuple(colours[0, 0]) == half and tuple(colours[0, 1]) == half
    assert tuple(colours[0, 2]) == LIGHTEST_BLUE


def test_prediction_grid_frames_right_green_and_wrong_red():
    images = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)
    targets = torch.arange(16) % 10
    preds = targets.clone()
    preds[[1, 5]] = (targets[[1, 5]] + 1) % 10
    picture = prediction_image(images, targets, preds, CIFAR10_CLASSES, columns=8)
    pixels = np.asarray(picture)
    cell_h, cell_w = pixels.shape[0] // 2, pixels.shape[1] // 8
    assert picture.size == (8 * cell_w, 2 * cell_h)
    for index in range(16):
        top, left = (index // 8) * cell_h, (index % 8) * cell_w
        frame = tuple(pixels[top + cell_h - 1, left + cell_w // 2])  # the bottom edge of the frame
        assert frame == (WRONG_RGB if index in (1, 5) else CORRECT_RGB), index
        assert tuple(pixels[top + cell_h - 10, left + cell_w // 2]) == (128, 128, 128)  # the image itself
