"""Opt-in: one epoch on real CIFAR-10 images.

Set ``LENET_LIGHTNING_REAL_DATA`` to an unpacked CIFAR-10 folder (official archive
or image folder, e.g. ``cifar10-dev/``) to run it; it takes about half a minute on 2 cores.
"""

import json
import os
from pathlib import Path

import pytest

from lenet_lightning.cli import main

REAL_DATA = os.environ.get("LENET_LIGHTNING_REAL_DATA")

pytestmark = pytest.mark.skipif(not REAL_DATA, reason="set LENET_LIGHTNING_REAL_DATA to a CIFAR-10 folder")


def test_one_epoch_on_real_data_beats_35_percent(tmp_path: Path) -> None:
    metrics = main(["--data-dir", str(REAL_DATA), "--max-epochs", "1", "--log-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "lenet" / "version_0" / "test_metrics.json").read_text())
    assert len(saved) == 11
    assert metrics["test/acc"] > 0.35
