"""Checkpoints that are never half-written and never run code when loaded."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lenet_lightning.errors import UserError

SETTINGS_KEY = "lenet_lightning_settings"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file, syncs it to disk, then renames it into place.

    A run killed at any moment (``kill -9`` included) leaves either the previous
    checkpoint or the new one, never a truncated file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        with tmp.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
        # A run killed while writing left its temporary file behind: the file is complete now.
        for stale in target.parent.glob(f".{target.name}.tmp*"):
            stale.unlink(missing_ok=True)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: replaced after every epoch's validation and, optionally, every N training steps.

    Unmonitored, top-1, one fixed name, so it is replaced at every save whatever val/acc
    did (``save_last`` on the monitored callback would skip epochs that did not improve).
    A step save that falls on an epoch's last batch is left to the epoch-end save, which
    follows validation: Lightning cannot resume exactly from a checkpoint taken between
    an epoch's last batch and its validation (it skips that validation and miscounts the
    epoch), and the epoch-end save would be skipped as a duplicate of that step.
    """

    def __init__(self, every_n_train_steps: int = 0) -> None:
        super().__init__(filename="last", enable_version_counter=False, every_n_epochs=1)
        # Lightning takes step and epoch triggers as exclusive arguments; this callback wants both.
        self._every_n_train_steps = every_n_train_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only.

    A checkpoint that carries any other pickled object (which could run code) is
    refused before anything in it is executed.
    """
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: pass the path of a .ckpt file from a run's checkpoints/")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # PyTorch's message suggests loading with weights_only=False: exactly what must not happen.
        if "Weights only load failed" in str(error):
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            raise UserError(
                f"refused to load '{path}': it holds Python objects beyond tensors and plain data "
                f"({unsafe.group(1) if unsafe else 'unsupported content'}), which could run code; "
                "use a checkpoint written by train.py"
            ) from None
        raise UserError(f"'{path}' is not a readable checkpoint: pass a .ckpt written by train.py") from None
    except Exception as error:  # a damaged or foreign file: RuntimeError, EOFError, KeyError, ...
        reason = str(error).split(". ")[0] if isinstance(error, (RuntimeError, OSError)) else "not a PyTorch file"
        raise UserError(f"'{path}' is not a readable checkpoint ({reason}): pass a .ckpt written by train.py") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"'{path}' is not a lenet-lightning checkpoint: pass a .ckpt written by train.py")
    if not any(key.startswith("net.") for key in checkpoint["state_dict"]):
        raise UserError(f"'{path}' is a checkpoint of another model: pass a .ckpt written by train.py")
    return checkpoint


def find_last_checkpoint(log_dir: Path, name: str) -> Path:
    """The ``last.ckpt`` of the newest run under ``<log_dir>/<name>/`` (for ``--ckpt-path last``)."""
    candidates = sorted(
        (log_dir / name).glob("version_*/checkpoints/last.ckpt"),
        key=lambda path: int(path.parent.parent.name.removeprefix("version_")),
    )
    if not candidates:
        raise UserError(
            f"no last.ckpt under '{log_dir / name}': train first, or pass --ckpt-path with a checkpoint's path"
        )
    return candidates[-1]


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to (``.../version_n/checkpoints/x.ckpt`` -> ``.../version_n``)."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent
