"""Hardware: requests checked before a run claims anything, and the wait for the other nodes of a job.

A request this machine cannot meet is one line naming what it can do instead; a
multi-node run says where it waits and gives up after a stated time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy

from lenet_lightning.errors import UserError
from lenet_lightning.settings import (
    RunOptions,
)

# How long a multi-node run waits for the other nodes to join before it gives up.
NODE_TIMEOUT_ENV = "LENET_LIGHTNING_NODE_TIMEOUT"

NODE_TIMEOUT_S = 600


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


def node_timeout() -> int:
    """Seconds to wait for the other nodes (``$LENET_LIGHTNING_NODE_TIMEOUT``, default 600)."""
    text = os.environ.get(NODE_TIMEOUT_ENV, "")
    if not text:
        return NODE_TIMEOUT_S
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{NODE_TIMEOUT_ENV}={text!r}: give the seconds to wait for the other nodes, e.g. 600")
    return int(text)


def strategy_for(options: RunOptions) -> str | Strategy:
    """``--strategy``; for several nodes, DDP that gives up waiting for them after :func:`node_timeout`.

    Torch waits 30 minutes by default (per collective, and for the nodes to join), silently.
    """
    if options.num_nodes > 1 and options.strategy in ("auto", "ddp"):
        return DDPStrategy(timeout=timedelta(seconds=node_timeout()))
    return options.strategy


def waiting_for_nodes(trainer: L.Trainer) -> str | None:
    """The line a multi-node run prints before it waits for the other nodes (``None`` for one node)."""
    if trainer.num_nodes < 2:
        return None
    environment = trainer.strategy.cluster_environment  # type: ignore[attr-defined]
    where = f"{environment.main_address}:{environment.main_port}"
    return (
        f"node {trainer.node_rank} of {trainer.num_nodes}: waiting for the other nodes to join at {where} "
        f"(start this command on the others with NODE_RANK set to their number, 1 to {trainer.num_nodes - 1}, "
        f"and MASTER_ADDR, MASTER_PORT set to this address and port); giving up after {node_timeout()} s "
        f"(${NODE_TIMEOUT_ENV})"
    )


def nodes_did_not_join(trainer: L.Trainer, error: Exception) -> UserError:
    """One line for a multi-node start whose other nodes never came."""
    environment = trainer.strategy.cluster_environment  # type: ignore[attr-defined]
    where = f"{environment.main_address}:{environment.main_port}"
    return UserError(
        f"the other nodes did not join at {where} within {node_timeout()} s ({str(error).splitlines()[0]}): "
        f"start this command on every node with NODE_RANK, MASTER_ADDR and MASTER_PORT set, or wait longer with "
        f"{NODE_TIMEOUT_ENV}=<seconds>"
    )
