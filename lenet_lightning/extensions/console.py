"""What the console shows while a Trainer runs: bars and summary on stderr, the same with or without ``rich``."""

from __future__ import annotations

import contextlib
import sys

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelSummary, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

from lenet_lightning.runs import launch_rank
from lenet_lightning.signals import wait_for_children


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bars on stderr, so that stdout carries only results (tables, predictions).

    Lightning makes each bar with ``file=sys.stdout``, read when the bar is made; it is
    made while ``sys.stdout`` points at stderr.
    """

    @override
    def init_sanity_tqdm(self) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    @override
    def init_train_tqdm(self) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    @override
    def init_validation_tqdm(self) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    @override
    def init_test_tqdm(self) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()

    @override
    def init_predict_tqdm(self) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()


def console_callbacks(progress_bar: bool = True, model_summary: bool = True) -> list[Callback]:
    """The progress bar and model summary, chosen here so that whether ``rich`` is installed changes nothing.

    (Lightning picks its rich variants when ``rich`` is importable.) Bars and summary go to
    stderr; stdout carries only results. A redraw per step costs as much as a LeNet step at
    batch 4 (``benchmarks/throughput.py``), hence one redraw per 10 steps.
    """
    chosen: list[Callback] = [StderrProgressBar(refresh_rate=10)] if progress_bar else []
    return [*chosen, ModelSummary(max_depth=1)] if model_summary else chosen


def end_progress_bar(trainer: L.Trainer) -> None:
    """Close the bars of a stopped stage, so that none is redrawn after the last message.

    Under DDP, rank 0 then waits for the ranks it launched to stop too.
    """
    if trainer.world_size > 1 and launch_rank() == 0:
        wait_for_children()
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar):
        for name in ("val_progress_bar", "test_progress_bar", "predict_progress_bar", "train_progress_bar"):
            with contextlib.suppress(TypeError):  # that bar was never made
                getattr(bar, name).close()
        if trainer.is_global_zero:
            sys.stderr.write("\n")  # a closed bar leaves the cursor on its line: the message gets its own
