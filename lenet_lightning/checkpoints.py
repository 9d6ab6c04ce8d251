"""Checkpoints that are never half-written and never run code when loaded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
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
        reason = str(error).splitlines()[0] if str(error) else "unsupported content"
        raise UserError(
            f"refused to load '{path}': it holds Python objects beyond tensors and plain data ({reason}); "
            "use a checkpoint written by this project"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"'{path}' is not a readable checkpoint ({error}): pass a .ckpt written by train.py") from None
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
