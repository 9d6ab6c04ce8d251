"""Reading checkpoints safely, without Lightning: only tensors and plain data, every weight checked.

Prediction and export load checkpoints through :func:`load_checkpoint` and never
import Lightning. The checkpoints this project writes carry a digest of their
weights (:func:`state_digest`, saved by :class:`~lenet_lightning.extensions.checkpointing.AtomicCheckpointIO`);
checkpoints of other writers (a plain ``lightning.Trainer``, ``LightningCLI``,
earlier releases) have none and are checked for everything else.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lenet_lightning.cifar10 import CLASSES, resolve_normalization
from lenet_lightning.errors import UserError
from lenet_lightning.model import LeNet5

DIGEST_KEY = "lenet_lightning_digest"
NET_PREFIX = "net."
OTHER_CHECKPOINT = "use another checkpoint of the run (e.g. last.ckpt or best-*.ckpt)"


def state_digest(state_dict: Mapping[str, Any]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order.

    Any changed byte of a weight, a renamed, reshaped or retyped tensor gives another digest.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if not isinstance(value, Tensor):
            continue
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(value.shape)}\0".encode())
        # Raw bytes whatever the dtype (numpy has no bfloat16): a uint8 view of the same storage.
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it; raise a one-line :class:`UserError` if unusable.

    A checkpoint that carries any other pickled object (which could run code) is
    refused before anything in it is executed. Then every weight of the model it
    describes must be there with its shape, match the checkpoint's digest when it has
    one, and be finite; the normalisation its images need must be one this version knows.
    """
    if path.is_dir():
        raise UserError(f"--ckpt-path '{path}' is a folder: pass a .ckpt file from a run's checkpoints/ folder")
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
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(checkpoint.get("hyper_parameters"), dict)
    ):
        raise UserError(f"'{path}' is not a lenet-lightning checkpoint: pass a .ckpt written by train.py")
    if not any(key.startswith(NET_PREFIX) for key in checkpoint["state_dict"]):
        raise UserError(f"'{path}' is a checkpoint of another model: pass a .ckpt written by train.py")
    check_weights(path, checkpoint)
    check_digest(path, checkpoint)
    check_finite(path, checkpoint["state_dict"])
    check_normalization(path, checkpoint)
    return checkpoint


def checkpoint_num_classes(path: Path, hyper_parameters: Mapping[str, Any]) -> int:
    """How many classes the checkpoint's model has: its class names', else ``num_classes``, else CIFAR-10's."""
    class_names, num_classes = hyper_parameters.get("class_names"), hyper_parameters.get("num_classes")
    if class_names:
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
            raise UserError(
                f"'{path}' holds class names that are not a list of names ({class_names!r}): {OTHER_CHECKPOINT}"
            )
        return len(class_names)
    if num_classes is None:
        return len(CLASSES)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f"'{path}' holds num_classes {num_classes!r}, not a number of classes: {OTHER_CHECKPOINT}")
    return num_classes


def check_weights(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """Every weight of the LeNet-5 the checkpoint describes is there, with its shape (else one line).

    Compared with a plain :class:`LeNet5` of the checkpoint's number of classes, so any
    writer's checkpoint of this network passes, whatever else its hyper-parameters hold.
    """
    num_classes = checkpoint_num_classes(path, checkpoint["hyper_parameters"])
    with torch.device("meta"):  # shapes only: no memory, no initialisation, no random numbers drawn
        net = LeNet5(num_classes)
    expected = {NET_PREFIX + key: tuple(value.shape) for key, value in net.state_dict().items()}
    found = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(found))
    wrong = [k for k in expected if k in found and shape_of(found[k]) != expected[k]]
    if missing or wrong:
        problem = f"missing {missing[:3]}" if missing else f"{wrong[0]} has shape {shape_of(found[wrong[0]])}"
        raise UserError(
            f"'{path}' does not match the model it describes ({problem}, expected "
            f"{expected[wrong[0]] if wrong and not missing else 'all weights'}): "
            f"it is damaged or was edited; {OTHER_CHECKPOINT}"
        )


def shape_of(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def check_digest(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """The weights are the bytes they were saved as, when the checkpoint carries a digest (else one line)."""
    saved = checkpoint.get(DIGEST_KEY)
    if saved is None:
        return  # written by another program (plain Trainer, LightningCLI) or an earlier release
    if saved != state_digest(checkpoint["state_dict"]):
        raise UserError(
            f"'{path}' failed its integrity check (its weights differ from the sha256 digest saved with them): "
            f"it is damaged or was edited; {OTHER_CHECKPOINT}"
        )


def check_finite(path: Path, state_dict: Mapping[str, Any]) -> None:
    """No weight is NaN or infinite (else one line naming the tensor)."""
    for name, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(
                f"'{path}' holds non-finite weights (NaN or infinity) in {name}: training diverged before it "
                "was saved, or the file was edited; use an earlier checkpoint of the run"
            )


def check_normalization(path: Path, checkpoint: Mapping[str, Any]) -> None:
    """The normalisation the checkpoint's DataModule used is one this version can apply (else one line)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    try:
        resolve_normalization(data.get("normalization", "cifar10"), data.get("mean"), data.get("std"))
    except (TypeError, ValueError) as error:
        raise UserError(f"'{path}' holds unusable normalisation settings ({error}): {OTHER_CHECKPOINT}") from None
