"""Memory format of LeNet-5's training step: contiguous (NCHW) against channels_last (NHWC).

Times the bare step (forward, cross-entropy, backward, SGD with momentum) on random
normalised batches, in one process, the two formats interleaved: each repeat times
every (batch size, format) pair once, in alternating order, and the best repeat of
each counts (noise on a shared machine only slows runs down). Optionally also with
bf16 autocast. Prints a Markdown table::

    python -m benchmarks.memory_format                   # batch 256 and 4, 5 repeats
    python -m benchmarks.memory_format --batch-sizes 256 --repeats 9 --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from lenet_lightning.model import LeNet5

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def step_rate(batch_size: int, memory_format: torch.memory_format, images: int, bf16: bool) -> float:
    """Images/s of training steps on ``images`` images (after 10 untimed warm-up steps)."""
    torch.manual_seed(0)
    model = LeNet5().to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    inputs = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=memory_format)
    targets = torch.randint(0, 10, (batch_size,))
    steps = max(1, images // batch_size)
    start = 0.0
    for step in range(10 + steps):
        if step == 10:
            start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(model(inputs), targets, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def measure(batch_sizes: Sequence[int], repeats: int, images: int, bf16: bool) -> dict[tuple[int, str, bool], float]:
    """Best images/s per (batch size, format, bf16), the pairs interleaved in alternating order."""
    cases = [(size, name, False) for size in batch_sizes for name in FORMATS]
    if bf16:
        cases += [(size, name, True) for size in batch_sizes for name in FORMATS]
    best: dict[tuple[int, str, bool], float] = {}
    for repeat in range(repeats):
        for case in cases if repeat % 2 == 0 else cases[::-1]:
            size, name, autocast = case
            # Small batches run fewer images: their steps are overhead-bound, not compute-bound.
            rate = step_rate(size, FORMATS[name], images if size >= 64 else images // 16, autocast)
            best[case] = max(best.get(case, 0.0), rate)
            print(f"[memory_format] repeat {repeat + 1}, {case}: {rate:,.0f} img/s", file=sys.stderr, flush=True)
    return best


def table(best: dict[tuple[int, str, bool], float]) -> str:
    lines = [
        "| batch | autocast | contiguous | channels_last | channels_last / contiguous |",
        "|---:|---|---:|---:|---:|",
    ]
    for size, autocast in dict.fromkeys((size, autocast) for size, _, autocast in best):
        plain, nhwc = best[(size, "contiguous", autocast)], best[(size, "channels_last", autocast)]
        mode = "bf16" if autocast else "-"
        lines.append(f"| {size} | {mode} | {plain:,.0f} img/s | {nhwc:,.0f} img/s | {nhwc / plain:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--batch-sizes", default="256,4", help="comma-separated (default: 256,4)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default: 5)")
    parser.add_argument("--images", type=int, default=25_600, help="timed images per run at batch >= 64 (25600)")
    parser.add_argument("--bf16", action="store_true", help="also time with bf16 autocast")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    best = measure(sizes, args.repeats, args.images, args.bf16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} interleaved runs\n")
    print(table(best))


if __name__ == "__main__":
    main()
