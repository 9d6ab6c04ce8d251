"""The hand-written yardstick of the wall-time benchmark: same data, same normalisation, no Lightning."""

import subprocess
import sys
from pathlib import Path

from lenet_lightning.records import dump_config
from lenet_lightning.settings import recipe_settings

ROOT = Path(__file__).resolve().parents[1]


def test_plain_loop_trains_validates_and_tests_without_importing_lightning(cifar_archive, tmp_path):
    probe = (
        "import sys; from benchmarks import plain_loop; plain_loop.main(sys.argv[1:]); "
        "print('lightning imported' if 'lightning' in sys.modules else 'no lightning')"
    )
    config = tmp_path / "default.yaml"
    config.write_text(dump_config(recipe_settings("default")))
    flags = ["--data-dir", str(cifar_archive), "--config", str(config), "--val-size", "100", "--max-epochs", "1"]
    flags += ["--batch-size", "32"]
    done = subprocess.run([sys.executable, "-c", probe, *flags], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("epoch 0: train loss") and "val acc" in lines[0]
    assert lines[-2].startswith("test acc ") and lines[-1] == "no lightning"
