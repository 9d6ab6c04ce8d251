"""Callbacks: stop a diverging run in one line, average weights, know when training started, agree on the run folder."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lenet_lightning.errors import UserError


class FiniteLossGuard(Callback):
    """Stops training with a :class:`UserError` when the loss or the weights stop being finite.

    The training step never waits for the device: each step's verdict is folded into
    a flag that stays on the device, and the flag is read (one sync) only every
    ``log_every_n_steps`` steps, at the end of each epoch and before any checkpoint is
    written. Under DDP the ranks agree on the verdict, so they all stop together
    instead of one waiting forever.

    The diverged state never reaches a checkpoint: the flag (and every weight) is
    checked when a checkpoint is about to be written, which is then refused, so
    ``last.ckpt`` always holds the last good state.
    """

    def __init__(self) -> None:
        self._nonfinite: Tensor | None = None

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor):
            return
        bad = torch.isfinite(loss.detach()).logical_not_().any()
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite.logical_or_(bad)
        if trainer.global_step % trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]
            self._check_loss(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_loss(trainer, pl_module)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check_loss(trainer, pl_module)
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                self._stop(trainer, pl_module, f"the weights became infinite or NaN ({name})")

    def _check_loss(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local_bad = self._nonfinite is not None and bool(self._nonfinite)
        if trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            self._stop(trainer, pl_module, "the training loss became NaN or infinite")

    @staticmethod
    def _stop(trainer: L.Trainer, pl_module: L.LightningModule, problem: str) -> None:
        if trainer.progress_bar_callback is not None and trainer.is_global_zero:
            sys.stderr.write("\n")  # end the progress bar's line, so the error gets a line of its own
        lr = pl_module.hparams.get("lr", "?")
        raise UserError(
            f"{problem} by step {trainer.global_step} (epoch {trainer.current_epoch}): training stopped, "
            f"the checkpoints keep the last good state; train again with a lower --lr (this run: {lr})"
        )


class AveragedWeights(EMAWeightAveraging):
    """An exponential moving average of the weights, updated after every optimizer step.

    Lightning's callback: validation (hence the best checkpoint), the end of training and
    every checkpoint's ``state_dict`` hold the averaged weights, so testing, ``--evaluate``,
    ``--predict`` and ``--export`` use them; the weights being trained go into the
    checkpoint as ``current_model_state``, and the average's step count as
    ``averaging_state``, so a resumed run continues both exactly.

    Restoring the trained weights from ``current_model_state`` is for resuming only: the
    Lightning callback would also do it when ``trainer.test(ckpt_path=...)`` loads a checkpoint
    after ``fit``, and so test the trained weights instead of the averaged ones.
    """

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class TrainingStart(Callback):
    """Knows whether training has started: a run folder with a started run is kept, whatever happens next."""

    def __init__(self) -> None:
        self.started = False

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True


class RunFolderSync(Callback):
    """Makes every process agree with rank 0 on the run folder (torchrun/SLURM start ranks separately)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))
