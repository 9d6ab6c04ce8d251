"""Fixed cost of a run: time to the first training step, and the work after the last one.

Runs ``train.py`` with the given flags in a fresh process (through a small driver that
adds one timing callback to the Trainer ``train.py`` builds) and splits the wall time
from launch to exit into: launch to the first training step (imports, data loading,
set-up, model summary, graph logging), the training steps, and the last step to exit
(validation, checkpoints, pictures, the test, reports, and the interpreter's own exit).
Best of ``--repeats`` runs::

    python -m benchmarks.fixed_cost --data-dir /tmp/cifar10-dev
    python -m benchmarks.fixed_cost --repeats 3 -- --max-epochs 1 --batch-size 256
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_ENV = "FIXED_COST_LAUNCH"
RESULT_ENV = "FIXED_COST_RESULT"
PHASES = ("to first step", "training steps", "last step to exit", "of which interpreter exit", "whole process")


def drive(argv: Sequence[str]) -> None:
    """In the child: ``train.py argv`` with a callback that stamps the first and last training step."""
    import train  # first, as in ``python train.py``: its exit handler must be registered before Lightning's

    # isort: split
    from lightning.pytorch.callbacks import Callback

    from lenet_lightning import experiment

    stamps: dict[str, float] = {}

    class StepStamps(Callback):
        def on_train_batch_start(self, *args: object) -> None:
            stamps.setdefault("first_step", time.time())

        def on_train_batch_end(self, *args: object) -> None:
            stamps["last_step"] = time.time()

    build_trainer = experiment.build_trainer

    def with_stamps(*args: object, **kwargs: object) -> object:
        trainer = build_trainer(*args, **kwargs)  # type: ignore[arg-type]
        trainer.callbacks.append(StepStamps())  # type: ignore[attr-defined]
        return trainer

    def run_and_stamp(args: list[str] | None = None) -> int:
        code = run(args)
        stamps["returned"] = time.time()
        Path(os.environ[RESULT_ENV]).write_text(json.dumps(stamps))
        return code

    experiment.build_trainer = with_stamps  # type: ignore[assignment]
    run = train.run
    train.run = run_and_stamp  # type: ignore[assignment]
    train.launch(list(argv))


def run_once(train_args: Sequence[str], tmp: Path) -> dict[str, float]:
    """One fresh process: seconds per phase."""
    result = tmp / "stamps.json"
    launch = time.time()
    env = {**os.environ, LAUNCH_ENV: str(launch), RESULT_ENV: str(result)}
    command = [sys.executable, "-m", "benchmarks.fixed_cost", "--drive", "--", *train_args]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    stamps = json.loads(result.read_text())
    return {
        "to first step": stamps["first_step"] - launch,
        "training steps": stamps["last_step"] - stamps["first_step"],
        "last step to exit": end - stamps["last_step"],
        "of which interpreter exit": end - stamps["returned"],
        "whole process": end - launch,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", default="data", help="CIFAR-10 folder, as train.py takes it (default: data)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes; the best counts (default: 3)")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("train_args", nargs="*", help="train.py flags (default: --max-epochs 1)")
    args = parser.parse_args(argv)
    if args.drive:
        drive(args.train_args)
    with tempfile.TemporaryDirectory(prefix="fixed-cost-") as name:
        tmp = Path(name)
        train_args = [*(args.train_args or ["--max-epochs", "1"]), "--data-dir", args.data_dir]
        train_args += ["--log-dir", str(tmp / "logs")]
        runs = [run_once(train_args, tmp) for _ in range(args.repeats)]
    print(f"train.py {' '.join(args.train_args or ['--max-epochs', '1'])}: best of {args.repeats} fresh processes\n")
    print("| phase | seconds |\n|---|---:|")
    for phase in PHASES:
        print(f"| {phase} | {min(run[phase] for run in runs):.2f} |")


if __name__ == "__main__":
    main()
