"""What a run changes process-wide, and puts back: console noise, RNGs, deterministic mode, environment."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lenet_lightning.runs import (
    RUN_DIR_ENV,
)

QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Keep the console to what users can act on (progress, results, problems) while inside; restored after."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # Our loaders are in-memory tensors: advice about DataLoader workers does not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # "best" means our monitored checkpoint, which is the first callback by construction.
        warnings.filterwarnings("ignore", message=".*configured with multiple `ModelCheckpoint` callbacks.*")
        # A resumed run writes into its own checkpoints/ folder again, by design.
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # Raised inside PyTorch/Lightning (graph tracing, pytree), not by anything a user does.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


# What Lightning's seed_everything, Trainer(deterministic=True) and a run's DDP launch set in the environment.
RESTORED_ENV = (
    *("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG", RUN_DIR_ENV),
    *("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"),
)


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Put back what a run changes process-wide: global RNGs, deterministic mode, cuDNN, environment variables.

    The processes a DDP run launches inherit them while it runs; a notebook or a test that
    trains twice finds the process as it was. Inside, ``fill_uninitialized_memory`` is off:
    ``deterministic=True`` would fill every new tensor with NaN to expose reads of
    uninitialised memory, nothing here reads any, and the fills cost time every step.
    """
    env = {key: os.environ.get(key) for key in RESTORED_ENV}
    rngs = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda_rngs = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    switch: Any = torch.utils.deterministic
    fill = switch.fill_uninitialized_memory
    switch.fill_uninitialized_memory = False
    try:
        yield
    finally:
        switch.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.random.set_rng_state(rngs[2])
        if cuda_rngs is not None:
            torch.cuda.set_rng_state_all(cuda_rngs)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
