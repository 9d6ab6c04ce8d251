"""The training step never makes the host wait for the device."""

import contextlib
import functools
import math

import pytest
import torch

from lenet_lightning.cli import main
from lenet_lightning.extensions.callbacks import FiniteLossGuard
from lenet_lightning.module import LeNetClassifier

# Each of these copies a device tensor to the host, so the host waits for all queued device work.
SYNCING_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")


class HostSyncError(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    """Within the block, every tensor method that reads a value back to the host raises."""
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING_METHODS}

    def refusing(name):
        def refuse(self, *args, **kwargs):
            raise HostSyncError(f"Tensor.{name} called: it waits for the device")

        return refuse

    try:
        for name in SYNCING_METHODS:
            setattr(torch.Tensor, name, refusing(name))
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def without_host_sync(method, calls):
    """``method``, run inside :func:`no_host_sync`; each call is counted in ``calls``."""

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        calls.append(method.__name__)
        with no_host_sync():
            return method(*args, **kwargs)

    return wrapped


def test_no_host_sync_catches_a_finiteness_check():
    loss = torch.tensor(1.0)
    with no_host_sync(), pytest.raises(HostSyncError):
        bool(torch.isfinite(loss))
    assert bool(torch.isfinite(loss))  # restored afterwards


def test_training_step_and_loss_guard_never_wait_for_the_device(cifar_archive, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(LeNetClassifier, "training_step", without_host_sync(LeNetClassifier.training_step, calls))
    guard_hook = FiniteLossGuard.on_train_batch_end
    monkeypatch.setattr(FiniteLossGuard, "on_train_batch_end", without_host_sync(guard_hook, calls))
    # Steps that Lightning does not log (log_every_n_steps beyond the run) are the hot path.
    args = ["--data-dir", str(cifar_archive), "--log-dir", str(tmp_path), "--accelerator", "cpu", "--max-epochs", "1"]
    metrics = main([*args, "--batch-size", "32", "--val-size", "100", "--log-every-n-steps", "1000"])
    steps = math.ceil((600 - 100) / 32)  # the synthetic training split, less validation, in batches of 32
    assert calls.count("training_step") == steps and calls.count("on_train_batch_end") == steps
    assert "test/acc" in metrics
