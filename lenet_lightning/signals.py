"""SIGTERM and SIGINT (Ctrl-C) in every phase: stop at a safe point, keep what can be resumed, say so.

Inside :func:`stops_on_signals` both signals end the work with :class:`Interrupted`, which the
command line prints as one line and turns into exit code 143 (SIGTERM) or 130 (SIGINT):

* outside a Trainer's loops (reading, decoding or downloading data, exporting, classifying
  files) the handler raises at once: nothing there is half-written (files are written under
  temporary names and renamed into place), so stopping anywhere is safe;
* from a Trainer's ``setup`` hook on (:class:`StopOnSignal` switches this on), the handler only
  records the signal, and the loops stop at the next batch boundary, where the training
  state is one Lightning resumes exactly (``LastCheckpoint`` saves it there).

Under DDP a signal may reach one rank only, and a rank that stops (or saves) alone leaves
the others waiting forever in their next collective. The ranks therefore decide together
(:func:`agreed_signal`, one all-reduce at each batch boundary), stay in that mode from the
``setup`` hook on, and a signal that arrives before (loading the data) is passed on to the
processes the launcher started.

Lightning's own SIGTERM handler is replaced while its loops run: it raises
``SIGTERMException``, a ``SystemExit`` without a code, so a run stopped in its test phase
exited 0 (Lightning-AI/pytorch-lightning#19916, fixed upstream by #21623, not in 2.6.6), and
under DDP it broadcasts from inside the handler, which deadlocks when the signal arrives
while the ranks are in another collective such as a checkpoint save's barrier
(Lightning-AI/pytorch-lightning#20806, the broadcast came with #20825).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lenet_lightning.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stops:
    """What the handler knows: whether it is installed, whether to wait for a batch boundary, what arrived."""

    def __init__(self) -> None:
        self.active = False
        self.deferred = False
        self.received: int | None = None
        self.raised = False
        self.forward: Callable[[int], None] | None = None


_stops = _Stops()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _stops.received is None:
        _stops.received = signum
        if _stops.forward is not None and not _stops.deferred:
            # As SIGINT, the signal Lightning leaves to us: a DDP rank that has not yet replaced
            # Lightning's SIGTERM handler would run it, and its broadcast deadlocks (see above).
            # While deferred, the ranks learn of the stop from each other at the next batch boundary.
            _stops.forward(signal.SIGINT)
    # Once raised, further signals (a second Ctrl-C) must not break the clean-up on its way out.
    if not _stops.deferred and not _stops.raised:
        _stops.raised = True
        raise Interrupted(signum)


@contextlib.contextmanager
def stops_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT raise :class:`Interrupted`; the previous handlers are restored after.

    Only the main thread can handle signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or _stops.active:
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _stops.__init__()  # type: ignore[misc]  # a fresh start for each command
    _stops.active = True
    take_over()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stops.__init__()  # type: ignore[misc]


def take_over() -> None:
    """(Re)install the handlers: Lightning puts its own SIGTERM handler in place when a stage starts."""
    if _stops.active and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handler)


def received() -> int | None:
    """The first stop signal this process received, if any."""
    return _stops.received


def forward_to(trainer: L.Trainer) -> None:
    """Pass signals on to the processes the Trainer's launcher starts (DDP launched from this process)."""
    launcher = trainer.strategy.launcher
    _stops.forward = None if launcher is None else launcher.kill


def wait_for_children(seconds: float = 30.0) -> None:
    """Wait (at most ``seconds``) until the processes this one started have exited.

    A DDP rank 0 stopped by a signal waits for the ranks it launched: it hosts their
    rendezvous store, and leaving first would make them print a C++ stack trace about it.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.05)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a signal is only recorded (for work that must not stop half-way); raised on leaving."""
    before = _stops.deferred
    _stops.deferred = True
    try:
        yield
    finally:
        _stops.deferred = before
    if _stops.active and not before:
        raise_if_received()


def raise_if_received() -> None:
    """Raise :class:`Interrupted` now if a signal has arrived (and none was raised yet)."""
    if _stops.received is not None and not _stops.raised:
        _stops.raised = True
        raise Interrupted(_stops.received)


def agreed_signal(trainer: L.Trainer) -> int | None:
    """The signal any rank has received, the same answer on every rank (one all-reduce under DDP).

    Every rank must call this at the same point of the loop.
    """
    # Lightning's handler is the one in place when a library caller runs a Trainer outside stops_on_signals.
    local = _stops.received or (int(signal.SIGTERM) if trainer.received_sigterm else 0)
    if trainer.world_size > 1:
        flag = torch.tensor(local, dtype=torch.int64, device=trainer.strategy.root_device)
        local = int(trainer.strategy.reduce(flag, reduce_op="max").item())
    if local and _stops.received is None:
        _stops.received = local  # another rank's signal: this rank stops for it too
    return local or None


def stop_here(trainer: L.Trainer) -> None:
    """At a batch boundary: when a signal has arrived on any rank, every rank raises :class:`Interrupted`."""
    signum = agreed_signal(trainer)
    if signum is not None:
        _stops.raised = True
        raise Interrupted(signum)


class StopOnSignal(Callback):
    """Makes a Trainer's loops stop at batch boundaries, and records the phase a stop came in (``phase``).

    Training batches stop in ``LastCheckpoint``, which saves first; here: validation (an
    abandoned validation changes nothing that a checkpoint holds), test and predict batches.
    """

    def __init__(self) -> None:
        self.phase = "while loading the data"

    def _enter(self, phase: str) -> None:
        self.phase = phase
        take_over()
        _stops.deferred = True

    def _leave(self, trainer: L.Trainer, phase: str) -> None:
        stop_here(trainer)  # a signal during the stage's last batch
        self.phase = phase
        # Under DDP a rank must not stop alone between stages: the next stage's first batch decides.
        _stops.deferred = trainer.world_size > 1

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The data are loaded (a download can be stopped at once); from here on Lightning's
        # handler is put in place, and the ranks stop together at the stage's first batch.
        _stops.deferred = True

    @override
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enter("during the sanity check")

    @override
    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._leave(trainer, "before training")

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enter("during training")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "during training"

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = f"at the end of epoch {trainer.current_epoch}"

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._enter(f"during epoch {trainer.current_epoch}'s validation, which is abandoned")

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.phase = "during training"

    @override
    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        stop_here(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._leave(trainer, "at the end of training")

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enter("while testing")

    @override
    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        stop_here(trainer)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._leave(trainer, "while testing")

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._enter("while predicting")

    @override
    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        stop_here(trainer)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._leave(trainer, "while predicting")

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        _stops.deferred = False


def stop_signal(stop: BaseException) -> int:
    """The signal behind a stop (Lightning raises ``SIGTERMException`` in the moment before our handler is in place)."""
    return stop.signum if isinstance(stop, Interrupted) else int(signal.SIGTERM)
