"""One command that checks a CUDA machine end to end; exits non-zero on any failure.

On one GPU (a few minutes, most of it loading the data once):

1. one epoch of ``train.py`` (fit, then test of the best checkpoint) in each of
   ``32-true``, ``bf16-mixed``, ``16-mixed`` and ``bf16-true``: it must finish, test
   accuracy must be finite and above ``--min-acc``, the weights must have the
   precision's dtype, and the data set must live on the GPU (no per-batch copy);
2. with two or more GPUs: ``train.py --devices 2 --strategy ddp`` for one epoch;
3. ``Trainer.fit`` (as ``train.py`` builds it) against a plain PyTorch loop, in this
   process, at batch 256, 1024 and 4096: images/s and seconds per epoch, both on the
   same GPU-resident data; the second epoch of each is timed.

GPU results are not expected to equal CPU results bit for bit (other kernels, other
summation orders): accuracy is checked against a floor, never against a CPU run::

    python -m benchmarks.gpu_check --data-dir /tmp/cifar10-dev
    python -m benchmarks.gpu_check --dry-run                    # the plan; no GPU needed
    python -m benchmarks.gpu_check --device cpu --data-dir D --precisions 32-true --batch-sizes 64   # smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F

from lenet_lightning import experiment
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.extensions.tensorboard import build_logger
from lenet_lightning.model import LeNet5
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.optimization import build_optimizer, build_scheduler
from lenet_lightning.process import quiet_console
from lenet_lightning.runs import claim_run_dir
from lenet_lightning.settings import data_arguments, model_arguments, resolve_settings, run_options

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
BATCH_SIZES = (256, 1024, 4096)
WEIGHT_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.float32, "16-mixed": torch.float32}
WEIGHT_DTYPES["bf16-true"] = torch.bfloat16
TIMED_EPOCHS = 2  # the first epoch warms up (kernel selection, allocator); the second is timed


@dataclass
class Result:
    """One check's outcome, for the summary table."""

    name: str
    ok: bool
    detail: str


def settings_for(args: argparse.Namespace, log_dir: Path, **overrides: Any) -> dict[str, Any]:
    """``train.py``'s resolved settings for one epoch on ``args.device``, with ``overrides``."""
    given = {"data_dir": args.data_dir, "log_dir": str(log_dir), "val_size": args.val_size, "devices": "1"}
    given = {**given, "max_epochs": 1, **overrides}
    return resolve_settings({"accelerator": "gpu" if args.device == "cuda" else "cpu", **given})


def check_precision(args: argparse.Namespace, precision: str, log_dir: Path) -> Result:
    """One epoch of ``experiment.train`` (what ``train.py`` runs) in ``precision``."""
    datamodules: list[CIFAR10DataModule] = []

    class KeepDataModule(Callback):
        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            datamodules.append(trainer.datamodule)  # type: ignore[attr-defined]

    start = time.perf_counter()
    metrics = experiment.train(settings_for(args, log_dir, precision=precision), callbacks=[KeepDataModule()])
    seconds = time.perf_counter() - start
    problems = []
    accuracy = metrics["test/acc"]
    if not (torch.isfinite(torch.tensor(accuracy)) and accuracy > args.min_acc):
        problems.append(f"test accuracy {accuracy:.3f} not above {args.min_acc}")
    train_split = datamodules[0].train_split
    where = "none" if train_split is None else train_split[0].device.type
    if where != args.device:
        problems.append(f"training data on {where}, not {args.device}")
    checkpoint = torch.load(next(log_dir.glob("lenet/version_*/checkpoints/last.ckpt")), weights_only=True)
    dtype = checkpoint["state_dict"]["net.conv1.weight"].dtype
    if dtype != WEIGHT_DTYPES[precision]:
        problems.append(f"weights in {dtype}, expected {WEIGHT_DTYPES[precision]}")
    detail = f"test acc {accuracy:.3f}, {seconds:.1f} s, data on {where}, weights {dtype}"
    return Result(f"one epoch, {precision}", not problems, "; ".join([*problems, detail]))


def check_ddp(args: argparse.Namespace, log_dir: Path) -> Result:
    """``train.py --devices 2 --strategy ddp`` in its own process (DDP re-launches the script it runs)."""
    command = [sys.executable, str(ROOT / "train.py"), "--data-dir", args.data_dir, "--log-dir", str(log_dir)]
    command += ["--accelerator", "gpu", "--devices", "2", "--strategy", "ddp", "--max-epochs", "1"]
    command += ["--val-size", str(args.val_size)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    results = list(log_dir.glob("lenet/version_*/test_metrics.json"))
    if done.returncode != 0 or not results:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Result("one epoch, 2-GPU DDP", False, f"exit code {done.returncode}: {tail}")
    accuracy = json.loads(results[0].read_text())["test/acc"]
    ok = accuracy > args.min_acc
    return Result("one epoch, 2-GPU DDP", ok, f"test acc {accuracy:.3f}, {seconds:.1f} s (whole process)")


class EpochTimer(Callback):
    """Seconds of the last training epoch, with the device's queued work included."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = 0.0
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fit(settings: dict[str, Any], datamodule: CIFAR10DataModule, log_dir: Path) -> float:
    """Seconds of ``Trainer.fit``'s last epoch, as ``train.py`` builds the Trainer; validation off."""
    L.seed_everything(settings["seed"], verbose=False)
    model = LeNetClassifier(class_names=datamodule.classes, **model_arguments(settings))
    run_dir = claim_run_dir(log_dir / "fit")
    timer = EpochTimer(torch.device(datamodule.device or "cpu"))
    trainer = experiment.build_trainer(run_options(settings), build_logger(run_dir), run_dir, False, [timer])
    trainer.limit_val_batches = 0
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # the Trainer sets it globally: keep it from the loop
    return timer.seconds


def time_plain(settings: dict[str, Any], datamodule: CIFAR10DataModule) -> float:
    """Seconds of a plain PyTorch loop's last epoch over the DataModule's own train loader."""
    device = torch.device(datamodule.device or "cpu")
    torch.manual_seed(settings["seed"])
    model = LeNet5(datamodule.num_classes).to(device).train()
    loader = datamodule.train_dataloader()
    optimizer = build_optimizer(model.parameters(), settings)
    scheduler = build_scheduler(optimizer, settings, TIMED_EPOCHS * len(loader))
    seconds = 0.0
    for epoch in range(TIMED_EPOCHS):
        loader.sampler.set_epoch(epoch)
        synchronize(device)
        start = time.perf_counter()
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels, label_smoothing=settings["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds


def check_throughput(args: argparse.Namespace, batch_size: int, log_dir: Path) -> Result:
    """``Trainer.fit`` against the plain loop at ``batch_size``, on the same device-resident data."""
    settings = settings_for(args, log_dir, batch_size=batch_size, max_epochs=TIMED_EPOCHS)
    datamodule = CIFAR10DataModule(**data_arguments(settings))
    datamodule.device = torch.device(args.device)  # both pipelines on the data set Trainer.fit would use
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.train_split is not None
    train_images = len(datamodule.train_split[1])  # one process: an epoch is every training image
    fit = time_fit(settings, datamodule, log_dir)
    plain = time_plain(settings, datamodule)
    detail = (
        f"fit {train_images / fit:,.0f} img/s ({fit:.2f} s/epoch), plain {train_images / plain:,.0f} img/s "
        f"({plain:.2f} s/epoch), fit/plain {plain / fit:.2f}"
    )
    return Result(f"fit vs plain loop, batch {batch_size}", fit > 0 and plain > 0, detail)


def plan(args: argparse.Namespace) -> list[tuple[str, Callable[[Path], Result]]]:
    """The checks to run, by name, each taking a fresh log folder."""
    checks: list[tuple[str, Callable[[Path], Result]]] = []
    for precision in args.precisions:
        checks.append((f"one epoch, {precision}", functools.partial(check_precision, args, precision)))
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if gpus >= 2 and not args.no_ddp:
        checks.append(("one epoch, 2-GPU DDP", functools.partial(check_ddp, args)))
    for size in args.batch_sizes:
        checks.append((f"fit vs plain loop, batch {size}", functools.partial(check_throughput, args, size)))
    return checks


def run_checks(checks: list[tuple[str, Callable[[Path], Result]]]) -> list[Result]:
    """Run every check (a crash fails that check only), each in its own log folder."""
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as name:
        for index, (title, check) in enumerate(checks):
            print(f"[gpu_check] {title}", file=sys.stderr, flush=True)
            try:
                results.append(check(Path(name) / str(index)))
            except Exception as error:  # a failing check is a result, and the others still run
                traceback.print_exc()
                results.append(Result(title, False, f"{type(error).__name__}: {error}"))
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", default="data", help="CIFAR-10 folder, as train.py takes it (default: data)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated (default: all four)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="default: 256,1024,4096")
    parser.add_argument("--val-size", type=int, default=5000, help="as train.py's --val-size (default: 5000)")
    parser.add_argument("--min-acc", type=float, default=0.2, help="test accuracy floor after one epoch (0.2)")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-GPU DDP run")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: smoke-test this script (default: cuda)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the checks and exit (no GPU needed)")
    args = parser.parse_args(argv)
    args.precisions = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"unknown precision(s) {unknown}: use some of {', '.join(PRECISIONS)}")
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size]
    if args.device == "cuda" and not args.dry_run and not torch.cuda.is_available():
        parser.error("PyTorch sees no CUDA GPU here: run on a GPU machine, or pass --dry-run or --device cpu")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; 0 when all passed, 1 otherwise."""
    args = parse_args(argv)
    checks = plan(args)
    if args.dry_run:
        print("\n".join(title for title, _ in checks))
        if not any(title.endswith("DDP") for title, _ in checks) and not args.no_ddp:
            print("one epoch, 2-GPU DDP: only with two or more GPUs")
        return 0
    start = time.perf_counter()
    with quiet_console():
        results = run_checks(checks)
    print("\n| check | ok | result |\n|---|---|---|")
    for result in results:
        print(f"| {result.name} | {'yes' if result.ok else '**no**'} | {result.detail} |")
    failed = [result.name for result in results if not result.ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
