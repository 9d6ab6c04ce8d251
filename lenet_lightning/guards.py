"""Guards that stop a run early, in one line, instead of letting it go wrong quietly.

``check_numbers`` rejects impossible run settings before any work starts (the data
module and the training system check their own arguments). ``FiniteLossGuard`` stops
training as soon as the loss stops being finite, before a checkpoint can store the
diverged weights.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lenet_lightning.errors import UserError

MAX_SEED = 2**32 - 1  # what NumPy (seeded by Lightning's seed_everything) accepts


def check_numbers(settings: Mapping[str, Any]) -> None:
    """Reject run settings no run can use (one line naming the flag and what it needs)."""
    minimums = {"max_epochs": 1, "num_nodes": 1, "log_every_n_steps": 1, "checkpoint_every_n_steps": 0}
    for key, minimum in minimums.items():
        if settings[key] < minimum:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} must be at least {minimum}, got {settings[key]}")
    if not 0 <= settings["seed"] <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {settings['seed']}")


class FiniteLossGuard(Callback):
    """Stops training with a :class:`UserError` when the loss or the weights stop being finite.

    The loss is checked after every training step. Reading it synchronises with the
    device once per step: nothing on a CPU, a little on a GPU, where Lightning's
    progress bar reads the loss anyway. Under DDP the ranks agree on the verdict (one
    tiny all-reduce per step), so they all stop together instead of one waiting forever.

    The diverged state never reaches a checkpoint: Lightning runs ``ModelCheckpoint``
    callbacks after all others in each hook, so the step whose loss is not finite is
    never saved (and ``ModelCheckpoint(save_on_exception=...)`` is off by default).
    Weights that overflow while the loss still looked finite are caught when a
    checkpoint is about to be written, which is refused. So ``last.ckpt`` always
    holds the last good state.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            value = loss.detach().float().mean().item()
            self._stop(
                trainer,
                pl_module,
                f"the training loss became {value}"
                if not finite
                else "the training loss is not finite on another process",
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                self._stop(trainer, pl_module, f"the weights became infinite or NaN ({name})")

    @staticmethod
    def _stop(trainer: L.Trainer, pl_module: L.LightningModule, problem: str) -> None:
        if trainer.progress_bar_callback is not None and trainer.is_global_zero:
            sys.stderr.write("\n")  # end the progress bar's line, so the error gets a line of its own
        lr = pl_module.hparams.get("lr", "?")
        raise UserError(
            f"{problem} at step {trainer.global_step} (epoch {trainer.current_epoch}): training stopped, "
            f"the checkpoints keep the last good state; train again with a lower --lr (this run: {lr})"
        )
