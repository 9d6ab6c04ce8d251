"""TensorBoard: a logger writing into exactly the run folder, one model graph per run, pictures per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor
from typing_extensions import override

from lenet_lightning.batches import denormalize
from lenet_lightning.pictures import NormalizedData, PicturedClassifier, confusion_image, prediction_image
from lenet_lightning.runs import (
    VERSION_PREFIX,
)


def build_logger(run_dir: Path) -> TensorBoardLogger:
    """TensorBoard writing into exactly ``run_dir`` (``<log_dir>/<name>/<version>``)."""
    number = run_dir.name.removeprefix(VERSION_PREFIX)
    version: int | str = int(number) if number.isdigit() else run_dir.name  # an int shows as v_num in the bar
    return OneGraphTensorBoardLogger(
        run_dir.parent.parent, name=run_dir.parent.name, version=version, default_hp_metric=False, log_graph=True
    )


class OneGraphTensorBoardLogger(TensorBoardLogger):
    """A ``TensorBoardLogger`` that writes the model graph once per process, not once per stage.

    Lightning asks for the graph when fit starts and again when test starts; each time
    the JIT traces and re-checks the model (a noticeable part of a short run's start-up) for the same graph.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.graph_logged = False

    @override
    def log_graph(  # type: ignore[override]  # narrowed to LightningModule, as Lightning's own override does
        self, model: L.LightningModule, input_array: torch.Tensor | None = None
    ) -> None:
        if not self.graph_logged:
            super().log_graph(model, input_array)
            self.graph_logged = True


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
