"""Whole-process wall time: ``train.py`` against a hand-written PyTorch script doing the same work.

Each run is a fresh process, timed from launch to exit, so everything a user waits
for counts: interpreter start, imports, data loading, set-up, every epoch with its
validation, checkpoints, logging, the test and the reports. Runs alternate and repeat;
the fastest of each counts (noise on a shared machine only slows runs down):

- batch 256, ``default`` recipe: ``train.py --max-epochs E --batch-size 256`` against
  ``benchmarks/plain_loop.py`` (same data, split, model, recipe; validation every
  epoch, test at the end; no Lightning). Target: plain / train.py >= 1.0;
- batch 4, ``tutorial`` recipe: ``train.py --recipe tutorial`` against the tutorial's
  pipeline (``plain_loop.py --pipeline pil``: per-image PIL transforms in a
  ``DataLoader`` with 2 workers, no validation). Target: tutorial / train.py >= 1.5.

Usage (prints a Markdown table; run it on an otherwise idle machine)::

    python -m benchmarks.wall_time --data-dir /tmp/cifar10-dev                 # 6 epochs at 256, 1 at 4
    python -m benchmarks.wall_time --data-dir /tmp/cifar10-dev --no-deterministic-too
    python -m benchmarks.wall_time --data-dir D --epochs 1 --tutorial-epochs 1 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lenet_lightning.records import dump_config
from lenet_lightning.settings import recipe_settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Contender:
    """One command, its wall times and the test accuracy it reported."""

    name: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)
    test_acc: float | None = None


def train_py(args: argparse.Namespace, log_dir: Path, *flags: str) -> list[str]:
    command = [sys.executable, str(ROOT / "train.py"), "--data-dir", args.data_dir, "--accelerator", "cpu"]
    return [*command, "--log-dir", str(log_dir), "--val-size", str(args.val_size), *flags]


def plain(args: argparse.Namespace, tmp: Path, recipe: str, *flags: str) -> list[str]:
    """The plain loop's command for a recipe, written for it as train.py's --print-config would."""
    config = tmp / f"{recipe}.yaml"
    config.write_text(dump_config(recipe_settings(recipe)))
    command = [sys.executable, "-m", "benchmarks.plain_loop", "--data-dir", args.data_dir, "--config", str(config)]
    return [*command, "--val-size", str(args.val_size), *flags]


def contenders(args: argparse.Namespace, tmp: Path) -> list[tuple[str, Contender, Contender]]:
    """(comparison, train.py, yardstick) triples."""
    epochs, tutorial_epochs = str(args.epochs), str(args.tutorial_epochs)
    default = ("--max-epochs", epochs, "--batch-size", "256")
    tutorial_epochs_flag = ("--max-epochs", tutorial_epochs)
    yardstick = Contender("plain PyTorch loop", plain(args, tmp, "default", *default))
    pairs = [
        (
            f"batch 256, default recipe, {epochs} epochs",
            Contender("train.py", train_py(args, tmp / "a256", *default)),
            yardstick,
        ),
    ]
    if args.no_deterministic_too:
        no_det = Contender("train.py --no-deterministic", train_py(args, tmp / "n256", *default, "--no-deterministic"))
        pairs.append((f"batch 256, default recipe, {epochs} epochs", no_det, yardstick))
    if args.tutorial_epochs:
        pairs.append(
            (
                f"batch 4, tutorial recipe, {tutorial_epochs} epoch(s)",
                Contender(
                    "train.py --recipe tutorial",
                    train_py(args, tmp / "a4", "--recipe", "tutorial", *tutorial_epochs_flag),
                ),
                Contender(
                    "tutorial pipeline", plain(args, tmp, "tutorial", *tutorial_epochs_flag, "--pipeline", "pil")
                ),
            )
        )
    return pairs


def run(contender: Contender) -> None:
    """Run the command once from the repository root; record its wall time and test accuracy."""
    start = time.perf_counter()
    done = subprocess.run(contender.command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(contender.command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    contender.seconds.append(seconds)
    contender.test_acc = test_accuracy(contender, done.stdout)
    log(f"{contender.name}: {seconds:.1f} s, test acc {contender.test_acc}")


def test_accuracy(contender: Contender, stdout: str) -> float | None:
    """The accuracy the run reported: plain_loop.py prints it, train.py writes test_metrics.json."""
    for line in stdout.splitlines():
        if line.startswith("test acc "):
            return float(line.split()[-1])
    if "--log-dir" in contender.command:
        log_dir = Path(contender.command[contender.command.index("--log-dir") + 1])
        newest = max(log_dir.glob("lenet/version_*/test_metrics.json"), key=os.path.getmtime, default=None)
        return json.loads(newest.read_text())["test/acc"] if newest else None
    return None


def warm_cache(data_dir: str) -> None:
    """Decode image folders into the cache once, so no timed run pays for a cold cache."""
    for train in (True, False):
        run(Contender("warm the decode cache", [sys.executable, "-c", WARM, data_dir, str(train)]))


WARM = (
    "import sys; from pathlib import Path; from lenet_lightning.cifar10 import default_cache_dir; "
    "from lenet_lightning.sources import load_split; "
    "load_split(Path(sys.argv[1]), sys.argv[2] == 'True', default_cache_dir())"
)


def table(pairs: list[tuple[str, Contender, Contender]], repeats: int) -> str:
    lines = [
        f"| comparison | train.py | yardstick | yardstick s / train.py s (best of {repeats}) | test acc |",
        "|---|---:|---:|---:|---|",
    ]
    for title, ours, theirs in pairs:
        mine, other = min(ours.seconds), min(theirs.seconds)
        accs = f"{ours.test_acc or float('nan'):.3f} / {theirs.test_acc or float('nan'):.3f}"
        lines.append(
            f"| {title} | {ours.name}: {mine:.1f} s | {theirs.name}: {other:.1f} s | **{other / mine:.2f}** | {accs} |"
        )
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[wall_time] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", default="data", help="CIFAR-10 folder, as train.py takes it (default: data)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs at batch 256 (default: 6)")
    parser.add_argument("--tutorial-epochs", type=int, default=1, help="epochs at batch 4; 0 skips (default: 1)")
    parser.add_argument("--val-size", type=int, default=5000, help="as train.py's --val-size (default: 5000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command (default: 2)")
    parser.add_argument(
        "--no-deterministic-too", action="store_true", help="also time train.py --no-deterministic at batch 256"
    )
    args = parser.parse_args(argv)
    warm_cache(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="wall-time-") as name:
        pairs = contenders(args, Path(name))
        everyone = list({id(c): c for _, ours, theirs in pairs for c in (ours, theirs)}.values())
        for repeat in range(args.repeats):
            for contender in everyone if repeat % 2 == 0 else everyone[::-1]:
                run(contender)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{table(pairs, args.repeats)}\n\n{os.cpu_count()} CPUs, load average {load:.2f} at the end.")


if __name__ == "__main__":
    main()
