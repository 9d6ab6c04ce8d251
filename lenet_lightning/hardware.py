"""Hardware requests checked before a run claims anything: one line naming what this machine can do instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lenet_lightning.errors import UserError


def check_hardware(settings: Mapping[str, Any]) -> None:
    """Fail early, in one line, on hardware requests this machine cannot meet."""
    accelerator, precision = settings["accelerator"], settings["precision"]
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("--accelerator gpu: PyTorch sees no CUDA GPU here; use --accelerator cpu (or auto)")
    uses_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    check_precision(precision, uses_cpu)
    devices = str(settings["devices"])
    if uses_cpu and devices != "auto" and not (devices.isdigit() and int(devices) > 0):
        raise UserError(f"--devices {devices}: on CPU pass a number of processes (1 or more) or auto")
    if uses_cpu and accelerator == "auto" and devices != "auto" and int(devices) > 1:
        raise UserError(
            f"--devices {devices}: PyTorch sees no CUDA GPU here; to train with {devices} CPU processes (DDP) pass "
            f"--accelerator cpu --devices {devices}, else leave --devices out"
        )
    if not uses_cpu and accelerator != "mps" and devices.isdigit() and int(devices) > torch.cuda.device_count():
        raise UserError(
            f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) here; pass --devices "
            f"{max(1, torch.cuda.device_count())} or fewer"
        )


def check_precision(precision: str, uses_cpu: bool) -> None:
    """Refuse precisions this project or this machine cannot train with, naming what to use."""
    if uses_cpu and precision.startswith("16"):
        raise UserError(f"--precision {precision} needs a GPU; on CPU use --precision bf16-mixed, bf16-true or 32-true")
    if not uses_cpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision {precision}: this GPU has no bfloat16 support; use --precision 16-mixed")
