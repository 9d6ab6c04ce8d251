"""Training throughput: this project's Lightning run against plain PyTorch and the tutorial.

Measures training images/s in ONE process, on the same CIFAR-10 training tensors,
model (LeNet-5), batch size, loss, optimizer and learning-rate schedule:

(a) ``Trainer.fit`` of ``LeNetClassifier`` + ``CIFAR10DataModule``, built by the
    functions ``train.py`` itself uses (``lenet_lightning.cli``): TQDM progress bar,
    TensorBoard logging every 50 steps, ``deterministic=True``, checkpointing on;
    only validation is off (``limit_val_batches=0``), so only training is timed;
(b) a plain PyTorch loop: the same ``LeNet5``, the DataModule's own train loader
    (which yields augmented, normalised float batches), no Lightning;
(c) the PyTorch tutorial's pipeline: a dataset that turns each image into a PIL
    image (as ``torchvision.datasets.CIFAR10`` does) with per-image transforms
    ``Compose([ToTensor(), Normalize(...)])`` in ``DataLoader(shuffle=True,
    num_workers=2)``, and the same loop as (b).

Each batch size runs with the recipe that uses it (``--recipe auto``): batch 4 with
``tutorial`` (the tutorial exactly: SGD lr 0.001 momentum 0.9, no augmentation,
``Normalize(0.5, 0.5)``), any other with ``default`` (its augmentation is then done
by (c) per image with ``RandomHorizontalFlip`` + ``RandomCrop``, the same maths).
Every run trains a fresh model for ``--warmup`` untimed steps and then ``--steps``
timed steps (capped at one epoch); runs of (a), (b), (c) alternate, ``--repeats``
times, and the best run of each counts (noise on a shared machine only slows
runs down). A second table times (a) with loader worker processes, and the last
runs ``train.py --max-epochs 1`` for its peak memory and times the data loading
of a first (empty cache) and a second (warm cache) run, each in a fresh process.

Usage, from the repository root (prints Markdown tables for docs/performance.md)::

    python -m benchmarks.throughput --data-dir data               # full: ~6 min on 2 CPU cores
    python -m benchmarks.throughput --data-dir data --quick       # smoke test: ~1.5 min
    python -m benchmarks.throughput --data-dir data --batch-sizes 256 --skip-memory --skip-loading
    python -m benchmarks.throughput --data-dir data --accelerator gpu
    python -m benchmarks.throughput --data-dir data --quick --profile   # + cProfile of one (a) run

(``python benchmarks/throughput.py`` works too once the project is installed with
``pip install -e .``.) ``--data-dir`` takes the official archive folder or an
image folder (``train/<class>/``, ``test/<class>/``), as ``train.py`` does. The
report comes last on stdout, after (a)'s progress bars; ``--output FILE`` also
writes it to a file. Run it on an otherwise idle machine: with other processes
busy, PyTorch's threads wait on each other and every number drops, unevenly.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import functools
import gc
import io
import itertools
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lenet_lightning.cifar10 import NORMALIZATIONS
from lenet_lightning.cli import build_parser
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.experiment import build_trainer
from lenet_lightning.extensions.tensorboard import build_logger
from lenet_lightning.hardware import check_hardware
from lenet_lightning.model import LeNet5
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.optimization import build_optimizer, build_scheduler
from lenet_lightning.process import quiet_console
from lenet_lightning.runs import claim_run_dir
from lenet_lightning.settings import RECIPES, data_arguments, model_arguments, resolve_settings, run_options

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL_WORKERS = 2  # the tutorial's DataLoader(num_workers=2)
SWEEP_WORKERS = (1, 2)  # loader worker counts timed for (a) besides the default 0
GIB = 1024**3
# Targets: (batch size, ratio, minimum) for throughput, then memory and loading.
RATIO_TARGETS = ((256, "a/b", 0.95), (4, "a/c", 1.5))
MAX_RSS_GIB = 2.0
MAX_WARM_LOAD_S = 2.0
BUSY = 0.1  # above this share of the CPUs used by others, the report warns
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters

# Run in a fresh interpreter: time the data loading at the start of a run, into a file.
LOAD_PROBE = """
import pathlib, sys, time
from lenet_lightning.data import CIFAR10DataModule
start = time.perf_counter()
dm = CIFAR10DataModule(sys.argv[1], download=False)
dm.prepare_data(); dm.setup("fit"); dm.setup("test")
pathlib.Path(sys.argv[2]).write_text(str(time.perf_counter() - start))
"""
# Runs a command (its output to stderr), then prints its exit code and peak RSS (KiB). From
# this small process RUSAGE_CHILDREN sees the command alone: run straight from the benchmark,
# a child would report the benchmark's own peak, which it inherits until its exec.
PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=sys.stderr).returncode; "
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


@dataclass
class Timing:
    """Images trained on and seconds taken in a run's timed steps."""

    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


@dataclass
class Case:
    """What every run at one batch size shares: settings, loaded data, step counts."""

    settings: dict[str, Any]
    datamodule: CIFAR10DataModule
    tutorial_data: PILImages
    warmup: int
    steps: int
    device: torch.device
    timings: dict[str, list[Timing]] = field(default_factory=dict)


class PILImages(Dataset[tuple[Tensor, int]]):
    """The tutorial's dataset: ``torchvision.datasets.CIFAR10``'s per-item work on our tensors.

    Items are ``(transform(PIL image), label)``, made from an ``(N, H, W, C)`` uint8
    array exactly as ``torchvision.datasets.CIFAR10.__getitem__`` makes them.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Image.Image], Tensor]) -> None:
        self.data: np.ndarray = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets: list[int] = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


class StepTimer(Callback):
    """Times a fit's single training epoch from the end of its warm-up steps to its end."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.start = 0.0
        self.images = 0
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.warmup == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup - 1:
            synchronize(self.device)
            self.start = time.perf_counter()
        elif batch_idx >= self.warmup:
            self.images += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def keep_freed_memory() -> None:
    """Make glibc's malloc keep the memory each step frees for the next step (Linux only).

    Without it, this long-lived process (several copies of the data set, dozens of runs) at
    times hands the megabytes a step frees back to the OS and faults them in again in the next
    step: some runs, of any pipeline, then spent a quarter of their time in page faults, others
    none. ``train.py`` does not show this (same page faults with these settings as without).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    mallopt(M_MMAP_THRESHOLD, 64 << 20)  # a fixed threshold: blocks under 64 MiB come from the heap
    mallopt(M_TRIM_THRESHOLD, 256 << 20)  # and up to 256 MiB of free heap stays mapped


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures work done rather than queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the three pipelines ------------------------------------------------------------


def run_lightning(case: Case, num_workers: int = 0) -> Timing:
    """(a): what ``train.py`` runs (``cli.train``), on ``warmup + steps`` batches, validation off."""
    settings = case.settings
    L.seed_everything(settings["seed"], workers=True, verbose=False)
    model = LeNetClassifier(class_names=case.datamodule.classes, **model_arguments(settings))
    timer = StepTimer(case.warmup, case.device)
    # The Trainer's deterministic=True is set globally: keep it from reaching (b) and (c).
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        run_dir = claim_run_dir(Path(settings["log_dir"]) / settings["name"])
        trainer = build_trainer(
            run_options(settings), build_logger(run_dir), run_dir, fast_dev_run=False, extra_callbacks=[timer]
        )
        trainer.limit_train_batches = case.warmup + case.steps
        trainer.limit_val_batches = 0
        trainer.fit(model, datamodule=datamodule_with_workers(case, num_workers))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return Timing(timer.images, timer.seconds)


def datamodule_with_workers(case: Case, num_workers: int) -> CIFAR10DataModule:
    """The case's DataModule, or a copy with other loader workers sharing its loaded tensors."""
    if num_workers == case.datamodule.num_workers:
        return case.datamodule
    datamodule = CIFAR10DataModule(**data_arguments({**case.settings, "num_workers": num_workers}))
    datamodule.train_split, datamodule.val_split = case.datamodule.train_split, case.datamodule.val_split
    return datamodule


def run_plain(case: Case) -> Timing:
    """(b): the DataModule's own train loader (model-ready batches) in a plain loop."""
    datamodule, device = case.datamodule, case.device
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)

    def prepare(batch: Any) -> tuple[Tensor, Tensor]:
        return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)

    return train_loop(case, iter(loader), prepare)


def run_tutorial(case: Case) -> Timing:
    """(c): per-image PIL transforms in a shuffling ``DataLoader`` with 2 workers, plain loop."""
    device = case.device
    loader = DataLoader(
        case.tutorial_data, batch_size=case.settings["batch_size"], shuffle=True, num_workers=TUTORIAL_WORKERS
    )

    def prepare(batch: Any) -> tuple[Tensor, Tensor]:
        return batch[0].to(device), batch[1].to(device)

    return train_loop(case, iter(loader), prepare)


def train_loop(case: Case, batches: Iterator[Any], prepare: Callable[[Any], tuple[Tensor, Tensor]]) -> Timing:
    """The tutorial's training loop (plus the recipe's schedule); times the steps after the warm-up."""
    settings, device = case.settings, case.device
    torch.manual_seed(settings["seed"])  # the same initial weights as (a)
    model = LeNet5(len(case.datamodule.classes)).to(device).train()
    optimizer, scheduler = make_optimizer(model, settings, case.warmup + case.steps)
    running_loss, images, start = 0.0, 0, time.perf_counter()
    for step, batch in enumerate(itertools.islice(batches, case.warmup + case.steps)):
        if step == case.warmup:
            synchronize(device)
            images, start = 0, time.perf_counter()
        inputs, labels = prepare(batch)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels, label_smoothing=settings["label_smoothing"])
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running_loss += loss.item()
        images += len(labels)
    synchronize(device)
    return Timing(images, time.perf_counter() - start)


def make_optimizer(model: torch.nn.Module, settings: dict[str, Any], total_steps: int) -> tuple[Optimizer, Any]:
    """The optimizer and per-step schedule ``LeNetClassifier.configure_optimizers`` makes from ``settings``."""
    optimizer = build_optimizer(model.parameters(), settings)
    return optimizer, build_scheduler(optimizer, settings, total_steps)


def tutorial_transform(settings: dict[str, Any]) -> transforms.Compose:
    """The tutorial's ``Compose([ToTensor(), Normalize(...)])``, after the recipe's augmentation if any."""
    mean, std = NORMALIZATIONS[settings["normalization"]]
    steps: list[Any] = []
    if settings["hflip"]:
        steps.append(transforms.RandomHorizontalFlip())
    if settings["translate"]:
        steps.append(transforms.RandomCrop(32, padding=settings["translate"]))
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


# --- measuring ----------------------------------------------------------------------


def make_case(args: argparse.Namespace, batch_size: int, log_dir: Path) -> Case:
    """Resolve train.py's settings for this batch size and load the data once."""
    settings = resolve_settings(vars(build_parser().parse_args(train_argv(args, batch_size, log_dir))))
    check_hardware(settings)
    datamodule = CIFAR10DataModule(**data_arguments(settings))
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.train_split is not None
    epoch = len(datamodule.train_dataloader())
    if args.warmup >= epoch:
        raise SystemExit(f"--warmup {args.warmup} leaves no timed step: an epoch has {epoch} batches of {batch_size}")
    tutorial_data = PILImages(*datamodule.train_split, tutorial_transform(settings))
    device = torch.device("cuda" if settings["accelerator"] in ("gpu", "cuda") else "cpu")
    return Case(settings, datamodule, tutorial_data, args.warmup, min(args.steps, epoch - args.warmup), device)


def train_argv(args: argparse.Namespace, batch_size: int, log_dir: Path) -> list[str]:
    recipe = args.recipe
    if recipe == "auto":
        recipe = "tutorial" if batch_size == RECIPES["tutorial"]["batch_size"] else "default"
    return [
        *("--data-dir", args.data_dir, "--recipe", recipe, "--batch-size", str(batch_size)),
        *("--accelerator", args.accelerator, "--devices", "1", "--max-epochs", "1", "--log-dir", str(log_dir)),
    ]


def variants(sweep: bool) -> dict[str, Callable[[Case], Timing]]:
    """Named runs: the three pipelines, then (a) with loader workers (``sweep``)."""
    runs: dict[str, Callable[[Case], Timing]] = {"a": run_lightning, "b": run_plain, "c": run_tutorial}
    if sweep:
        for workers in SWEEP_WORKERS:
            runs[f"a, workers={workers}"] = functools.partial(run_lightning, num_workers=workers)
    return runs


def measure(case: Case, runs: dict[str, Callable[[Case], Timing]], repeats: int) -> None:
    """Run every variant ``repeats`` times, alternating their order, into ``case.timings``."""
    names = list(runs)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            timing = runs[name](case)
            gc.collect()  # stops finished runs' loader workers before the next run
            case.timings.setdefault(name, []).append(timing)
            log(f"batch {case.settings['batch_size']}, run {repeat + 1}/{repeats}, ({name}): {timing.rate:,.0f} img/s")


def profile_lightning(case: Case, top: int) -> str:
    """cProfile of one (a) run: the ``top`` functions by own time, then by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    run_lightning(case)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def measure_memory(args: argparse.Namespace, tmp: Path) -> tuple[float, float] | None:
    """Peak RSS (GiB) and seconds of ``train.py --max-epochs 1``; ``None`` if it failed."""
    command = [sys.executable, str(ROOT / "train.py"), *("--data-dir", args.data_dir, "--max-epochs", "1")]
    command += ["--log-dir", str(tmp / "rss-logs"), "--accelerator", args.accelerator, "--devices", "1"]
    log(f"running {' '.join(command[1:])}")
    start = time.perf_counter()
    code, rss = run_with_peak_rss(command, dict(os.environ))
    if code != 0:
        log(f"train.py failed (exit code {code}): no peak RSS")
        return None
    return rss, time.perf_counter() - start


def measure_loading(args: argparse.Namespace, tmp: Path) -> list[tuple[float, float]]:
    """(seconds, peak RSS GiB) of loading the data in a fresh process: empty cache, then warm cache."""
    env = {**os.environ, "LENET_LIGHTNING_CACHE": str(tmp / "cache")}
    results = []
    for kind in ("first run, empty cache", "second run, warm cache"):
        log(f"timing data loading, {kind}")
        seconds = tmp / "load-seconds.txt"
        code, rss = run_with_peak_rss([sys.executable, "-c", LOAD_PROBE, args.data_dir, str(seconds)], env)
        if code != 0:
            raise SystemExit(f"loading {args.data_dir} failed (exit code {code})")
        results.append((float(seconds.read_text()), rss))
    return results


def run_with_peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run ``command`` from the repository root; its exit code and peak RSS in GiB."""
    wrapped = [sys.executable, "-c", PEAK_RSS, *command]
    result = subprocess.run(wrapped, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE)
    code, rss_kib = result.stdout.split()[-2:]
    return int(code), int(rss_kib) * 1024 / GIB


# --- reporting ----------------------------------------------------------------------


def best(timings: list[Timing]) -> float:
    return max(t.rate for t in timings)


def spread(timings: list[Timing]) -> float:
    """How much slower the slowest run was than the best, as a fraction."""
    return 1 - min(t.rate for t in timings) / best(timings)


def ratio(case: Case, other: str) -> float:
    """(a)'s best images/s over ``other``'s."""
    return best(case.timings["a"]) / best(case.timings[other])


def throughput_table(cases: Sequence[Case]) -> list[str]:
    lines = [
        "| batch | recipe | (a) Lightning `Trainer.fit` | (b) plain PyTorch | (c) tutorial pipeline | a/b | a/c |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        rates = " | ".join(f"{best(case.timings[name]):,.0f} img/s" for name in "abc")
        size, recipe = case.settings["batch_size"], case.settings["recipe"]
        lines.append(f"| {size} | {recipe} | {rates} | {ratio(case, 'b'):.2f} | {ratio(case, 'c'):.2f} |")
    return lines


def sweep_table(cases: Sequence[Case]) -> list[str]:
    heads = ["num_workers=0 (default)", *(f"num_workers={w}" for w in SWEEP_WORKERS)]
    lines = [f"| batch | {' | '.join(heads)} |", "|---:|" + "---:|" * len(heads)]
    for case in cases:
        rates = [best(case.timings[name]) for name in ("a", *(f"a, workers={w}" for w in SWEEP_WORKERS))]
        cells = [f"{rate:,.0f} img/s ({rate / rates[0]:.2f}x)" for rate in rates]
        lines.append(f"| {case.settings['batch_size']} | {' | '.join(cells)} |")
    return lines


def targets(cases: Sequence[Case], extras: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, met) for each speed, memory and loading target."""
    rows = []
    for batch_size, name, minimum in RATIO_TARGETS:
        case = next((c for c in cases if c.settings["batch_size"] == batch_size), None)
        value = None if case is None else ratio(case, name[-1])
        rows.append(target_row(f"batch {batch_size}: {name} >= {minimum}", value, minimum, "{:.2f}", higher=True))
    rss = extras["rss"][0] if "rss" in extras else None
    rows.append(target_row(f"peak RSS of train.py < {MAX_RSS_GIB:g} GiB", rss, MAX_RSS_GIB, "{:.2f} GiB"))
    warm = extras["loading"][1][0] if "loading" in extras else None
    rows.append(target_row(f"second-run data loading < {MAX_WARM_LOAD_S:g} s", warm, MAX_WARM_LOAD_S, "{:.2f} s"))
    return rows


def target_row(name: str, value: float | None, limit: float, fmt: str, higher: bool = False) -> tuple[str, str, str]:
    if value is None:
        return name, "not measured", "-"
    met = value >= limit if higher else value < limit
    return name, fmt.format(value), "yes" if met else "**no**"


def machine_line(args: argparse.Namespace, busy_before: float | None) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo() if line.startswith("model name")), "unknown CPU")
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.accelerator == "gpu" else ""
    line = (
        f"Machine: {cpu}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable){gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads, the default), "
        f"lightning {L.__version__}."
    )
    busy = [value for value in (busy_before, other_cpu_use()) if value is not None]
    if busy:
        line += f" Other processes used {' / '.join(f'{value:.0%}' for value in busy)} of the CPUs before / after."
    if busy and max(busy) > BUSY:
        line += " **The machine was busy: other processes skew these numbers.**"
    return line


def other_cpu_use(seconds: float = 1.0) -> float | None:
    """The share of all CPUs busy over ``seconds`` while this process sleeps (Linux); ``None`` elsewhere."""

    def busy_and_total() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)  # all but idle and iowait

    try:
        busy0, total0 = busy_and_total()
        time.sleep(seconds)
        busy1, total1 = busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(1, total1 - total0)


def cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def notes(args: argparse.Namespace, cases: Sequence[Case]) -> list[str]:
    steps = ", ".join(f"{c.steps} at batch {c.settings['batch_size']}" for c in cases)
    worst = max((spread(t) for c in cases for t in c.timings.values()), default=0.0)
    return [
        f"Best of {args.repeats} interleaved runs per cell (the slowest was up to {worst:.0%} slower), each "
        f"training a fresh model for {args.warmup} untimed warm-up steps, then timed steps ({steps}); one process, "
        "whose malloc keeps freed memory for reuse (`keep_freed_memory`).",
        "(a): `Trainer.fit` as train.py builds it (`lenet_lightning.cli`): TQDM progress bar, TensorBoard "
        "logging every 50 steps, `deterministic=True`, checkpointing on (last.ckpt and best, written at the "
        "epoch's end, after the timed window); validation off (`limit_val_batches=0`).",
        "(b): the same LeNet5, optimizer, schedule and loss on the DataModule's train loader with "
        "model-ready batches; no Lightning. (c): each image as a PIL image through "
        "`transforms.Compose([ToTensor(), Normalize(...)])` (after `RandomHorizontalFlip` + `RandomCrop` when "
        f"the recipe augments) in `DataLoader(shuffle=True, num_workers={TUTORIAL_WORKERS})`; the loop of (b).",
    ]


def report(args: argparse.Namespace, cases: Sequence[Case], extras: dict[str, Any], busy: float | None) -> str:
    lines = ["## Training throughput", "", *throughput_table(cases), ""]
    lines += [*(f"- {note}" for note in notes(args, cases)), "", machine_line(args, busy), ""]
    if args.sweep:
        lines += ["### Loader worker processes, (a)", "", *sweep_table(cases), ""]
        lines += [
            "- (a) with `CIFAR10DataModule(num_workers=n)`: persistent workers slice the same tensors and send "
            "each batch back through shared memory. `pin_memory` is not timed: it needs CUDA (the loader "
            "skips it on a CPU-only machine, as a DataLoader does).",
            "",
        ]
    if "rss" in extras:
        rss, seconds = extras["rss"]
        lines += [f"Peak RSS of `train.py --max-epochs 1` (fit, then test): {rss:.2f} GiB ({seconds:.0f} s).", ""]
    if "loading" in extras:
        (cold, cold_rss), (warm, warm_rss) = extras["loading"]
        lines += [
            "Data loading at the start of a run (`prepare_data(); setup('fit'); setup('test')`, fresh process): "
            f"first run (empty cache) {cold:.1f} s, peak RSS {cold_rss:.2f} GiB; second run (warm cache) "
            f"{warm:.2f} s, peak RSS {warm_rss:.2f} GiB.",
            "",
        ]
    rows = [f"| {name} | {value} | {met} |" for name, value, met in targets(cases, extras)]
    return "\n".join([*lines, "### Targets", "", "| target | measured | met |", "|---|---:|---|", *rows])


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


# --- command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", default="data", help="CIFAR-10 archive or image folder (default: data)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="(default: cpu)")
    parser.add_argument("--batch-sizes", default="4,256", help="comma-separated (default: 4,256)")
    parser.add_argument("--recipe", choices=("auto", *RECIPES), default="auto", help="auto: tutorial at batch 4")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per run, at most an epoch (2000)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline (default: 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: at most 300 steps, 1 repeat")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip (a) with loader workers")
    parser.add_argument("--skip-memory", action="store_true", help="skip train.py's peak RSS")
    parser.add_argument("--skip-loading", action="store_true", help="skip the data-loading times")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one (a) run per batch size")
    parser.add_argument(
        "--output", help="also write the Markdown report to this file (the progress bars of (a) go to stdout)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = min(args.steps, 300), min(args.warmup, 10), 1
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: no CUDA GPU here")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with quiet_console():
        keep_freed_memory()
        # (a) has no validation, so the best-checkpoint callback has nothing to monitor.
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
        busy_before = other_cpu_use()
        extras: dict[str, Any] = {}
        cases = []
        with tempfile.TemporaryDirectory(prefix="throughput-") as name:
            tmp = Path(name)
            for batch_size in args.batch_sizes:
                case = make_case(args, batch_size, tmp / f"logs-{batch_size}")
                measure(case, variants(args.sweep), args.repeats)
                if args.profile:
                    log(f"cProfile of one (a) run at batch {batch_size}:\n{profile_lightning(case, 30)}")
                cases.append(case)
            if not args.skip_memory and (rss := measure_memory(args, tmp)) is not None:
                extras["rss"] = rss
            if not args.skip_loading:
                extras["loading"] = measure_loading(args, tmp)
        text = report(args, cases, extras, busy_before)
        print(f"\n{text}")
        if args.output:
            Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
