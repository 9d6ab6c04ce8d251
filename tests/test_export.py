"""``--export``: the bundle's files, its verification, its model card, and using it without this project."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lenet_lightning import CIFAR10_CLASSES, export
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.cli import main, run
from lenet_lightning.errors import UserError
from lenet_lightning.export import BUNDLE_FILES, export_bundle
from lenet_lightning.inference import classifier_from_checkpoint
from lenet_lightning.model_card import card_test_metrics, metrics_lines
from lenet_lightning.reporting import metrics_from_confusion
from tests.conftest import synthetic_images

# Without the export extra (pip install -e ".[export]") there is nothing to test here.
onnxruntime = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained_checkpoint(small_checkpoint):
    return small_checkpoint


@pytest.fixture(scope="module")
def bundle(trained_checkpoint, tmp_path_factory):
    """A bundle exported through the command line, and what the command returned."""
    out_dir = tmp_path_factory.mktemp("bundle") / "lenet"
    summary = main(["--export", str(out_dir), "--ckpt-path", str(trained_checkpoint)])
    return out_dir, summary


def test_bundle_holds_every_file_with_its_size_and_sha256(bundle):
    out_dir, summary = bundle
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(BUNDLE_FILES)
    for name, info in summary["files"].items():
        data = (out_dir / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    card = json.loads((out_dir / "model_card.json").read_text())
    for name in ("model.onnx", "model.pt2", "labels.json"):
        assert card["files"][name]["sha256"] == summary["files"][name]["sha256"]
    assert json.loads((out_dir / "labels.json").read_text()) == {str(i): n for i, n in enumerate(CIFAR10_CLASSES)}
    assert not list(out_dir.parent.glob(".*export-*")), "the staging folder was left behind"


def test_exports_compute_what_the_checkpoint_computes(bundle, trained_checkpoint):
    out_dir, summary = bundle
    check = summary["verification"]
    assert check["images"] == 200  # the whole synthetic test split
    for runtime in ("onnxruntime", "torch.export"):
        assert check[runtime]["top1_agree"] == 200 and check[runtime]["max_abs_prob_diff"] <= 1e-4
    # Independently of the export's own check: raw uint8 in, probabilities out, any batch size.
    model, _ = classifier_from_checkpoint(load_checkpoint(trained_checkpoint))
    images = torch.from_numpy(synthetic_images(1, seed=9)[0][:7])
    expected = model(images).detach()
    session = onnxruntime.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"images": images.numpy()})[0]
    from_pt2 = torch.export.load(out_dir / "model.pt2").module()(images)
    assert from_onnx.shape == (7, 10)
    assert np.abs(from_onnx - expected.numpy()).max() < 1e-5
    assert (from_pt2 - expected).abs().max() < 1e-5
    assert np.allclose(from_onnx.sum(axis=1), 1, atol=1e-5)


def test_model_card_describes_model_data_metrics_and_limits(bundle, trained_checkpoint):
    out_dir, _ = bundle
    card = json.loads((out_dir / "model_card.json").read_text())
    assert card["model"]["parameters"] == 62006
    assert card["training"]["recipe"]["seed"] == 3 and card["training"]["recipe"]["recipe"] == "default"
    assert card["data"]["train"].startswith("500 images") and card["data"]["test"].startswith("200 images")
    saved = json.loads((trained_checkpoint.parents[1] / "test_metrics.json").read_text())
    metrics = card["test_metrics"]
    assert metrics["accuracy"] == saved["test/acc"] and metrics["same_checkpoint"]
    assert metrics["per_class"] == {name: saved[f"test/acc_{name}"] for name in CIFAR10_CLASSES}
    assert {"torch", "lightning", "lenet-lightning", "onnxruntime"} <= set(card["versions"])
    assert card["date"] and any("32x32" in limit for limit in card["limits"])
    markdown = (out_dir / "model_card.md").read_text()
    assert "62,006 parameters" in markdown and card["files"]["model.onnx"]["sha256"] in markdown
    assert f"{100 * saved['test/acc']:.2f} %" in markdown and "| onnxruntime | 200 / 200 |" in markdown


def test_non_empty_folder_needs_force(bundle, trained_checkpoint, capsys):
    out_dir, _ = bundle
    assert run(["--export", str(out_dir), "--ckpt-path", str(trained_checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--force" in err and "\n" not in err
    before = (out_dir / "model_card.json").stat().st_mtime_ns
    assert run(["--export", str(out_dir), "--ckpt-path", str(trained_checkpoint), "--force"]) == 0
    assert (out_dir / "model_card.json").stat().st_mtime_ns != before
    out = capsys.readouterr().out
    assert all(f"bytes  {name}  sha256 " in out for name in BUNDLE_FILES)
    assert "verified onnxruntime: same top-1 class on 200/200 test images" in out and f"bundle: {out_dir}" in out


def test_failed_verification_leaves_no_bundle(trained_checkpoint, tmp_path, monkeypatch, capsys):
    def corrupted_onnx(model, example, path):
        # Exports a model whose last-layer bias differs from the checkpoint's.
        broken, _ = classifier_from_checkpoint(load_checkpoint(trained_checkpoint))
        with torch.no_grad():
            broken.net.fc3.bias[0] += 5.0
        real_export_onnx(broken, example, path)

    real_export_onnx = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", corrupted_onnx)
    out_dir = tmp_path / "bundle"
    assert run(["--export", str(out_dir), "--ckpt-path", str(trained_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "verification failed" in err and "onnxruntime" in err and err.count("\n") == 1
    assert not out_dir.exists() and not list(tmp_path.glob(".*"))  # no bundle, no staging folder


def test_missing_export_extra_says_what_to_install(trained_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    assert run(["--export", str(tmp_path / "b"), "--ckpt-path", str(trained_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err == 'error: --export needs the export extra (onnx, onnxruntime, onnxscript): pip install -e ".[export]"\n'


def test_missing_test_images_name_data_dir(trained_checkpoint, tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        export_bundle(trained_checkpoint, tmp_path / "b", data_dir=str(tmp_path / "nowhere"))
    assert not (tmp_path / "b").exists()


def readme_example(marker: str) -> str:
    """The Python block that follows ``<!-- marker -->`` in the README."""
    text = (ROOT / "docs" / "export.md").read_text()
    found = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, f"README has no {marker} example"
    return found.group(1)


@pytest.mark.parametrize("marker", ["onnx-example", "pt2-example"])
def test_readme_examples_classify_an_image_without_this_project(marker, bundle, trained_checkpoint, tmp_path):
    code = readme_example(marker)
    assert len(code.strip().splitlines()) <= 12
    if marker == "onnx-example":
        imported = set(re.findall(r"^(?:import|from) (\w+)", code, re.MULTILINE))
        assert imported <= {"json", "numpy", "onnxruntime", "PIL"}
    (tmp_path / "bundle").symlink_to(bundle[0])
    image = synthetic_images(1, seed=4)[0][2]
    Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "cat.png")  # 32x32: no resizing differences
    # Neither this project nor Lightning may be imported, even indirectly (None in sys.modules blocks an import).
    blocked = "import sys\nsys.modules.update(lenet_lightning=None, lightning=None, pytorch_lightning=None)\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", blocked + code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    name, probability = done.stdout.split()
    model, class_names = classifier_from_checkpoint(load_checkpoint(trained_checkpoint))
    expected = model(torch.from_numpy(image)[None])[0].detach()
    assert name == class_names[int(expected.argmax())]
    assert float(probability) == pytest.approx(float(expected.max()), abs=1e-5)


def test_card_says_when_test_metrics_describe_another_checkpoint(trained_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    copy = run_dir / "checkpoints" / "other.ckpt"
    copy.write_bytes(trained_checkpoint.read_bytes())
    (run_dir / "test_metrics.json").write_text(json.dumps({"test/acc": 0.0, "test/acc_cat": 0.0}))
    card = export_bundle(copy, tmp_path / "bundle")["card"]
    assert card["test_metrics"]["accuracy"] == 0.0 and not card["test_metrics"]["same_checkpoint"]
    assert "DIFFERENT" in (tmp_path / "bundle" / "model_card.md").read_text()


def test_a_test_split_of_one_image_exports_with_a_dynamic_batch_size(trained_checkpoint, tmp_path):
    for name in CIFAR10_CLASSES:
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
    image = synthetic_images(1, seed=6)[0][3]
    Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "data" / "test" / "cat" / "0.png")
    summary = export_bundle(trained_checkpoint, tmp_path / "bundle", data_dir=str(tmp_path / "data"))
    assert summary["verification"]["images"] == 1
    program = torch.export.load(tmp_path / "bundle" / "model.pt2").module()
    assert program(torch.from_numpy(synthetic_images(1, seed=9)[0][:3])).shape == (3, 10)  # any batch size


def card_metrics(trained_checkpoint, tmp_path, saved: str) -> tuple[dict, str]:
    """The card's test metrics and their Markdown, for a run folder whose test_metrics.json holds ``saved``."""
    checkpoint_path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    checkpoint_path.parent.mkdir(parents=True)
    (tmp_path / "run" / "test_metrics.json").write_text(saved)
    model, class_names = classifier_from_checkpoint(load_checkpoint(trained_checkpoint))
    images, labels = synthetic_images(2, seed=1)
    data = {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}
    metrics = card_test_metrics(checkpoint_path, model, class_names, data)
    json.dumps(metrics, allow_nan=False)  # the card stays valid JSON
    return metrics, "\n".join(metrics_lines(metrics))


@pytest.mark.parametrize(
    ("saved", "reason"),
    [
        ('{"test/acc": 0.7', "not valid JSON"),
        ('{"test/acc": null}', "'test/acc' is null"),
        ("[0.7, 0.6]", "holds a JSON list"),
        ('{"test/acc": "0.7"}', "'test/acc' is \"0.7\""),
        ('{"test/acc": NaN}', "'test/acc' is NaN"),
        ('{"test/acc": 0.7, "test/acc_cat": {"x": 1}}', "'test/acc_cat' is {\"x\": 1}"),
    ],
)
def test_a_damaged_test_metrics_file_is_named_in_one_line_and_recomputed(
    saved, reason, trained_checkpoint, tmp_path, capsys
):
    metrics, markdown = card_metrics(trained_checkpoint, tmp_path, saved)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: '{tmp_path / 'run' / 'test_metrics.json'}' is damaged") and reason in line
    assert "recomputed on the test split" in line
    assert metrics["accuracy"] is None and metrics["source"] is None and reason in metrics["note"]
    assert list(metrics["per_class"]) == list(CIFAR10_CLASSES)  # recomputed: 2 images of each class
    assert f"{100 * metrics['accuracy_recomputed_at_export']:.2f} %" in markdown and reason in markdown


def test_export_with_a_damaged_test_metrics_file_succeeds_saying_so(trained_checkpoint, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    copy = run_dir / "checkpoints" / "best.ckpt"
    copy.write_bytes(trained_checkpoint.read_bytes())
    (run_dir / "test_metrics.json").write_text("{not json")
    assert run(["--export", str(tmp_path / "bundle"), "--ckpt-path", str(copy)]) == 0
    [warning] = [line for line in capsys.readouterr().err.splitlines() if "test_metrics.json" in line]
    assert warning.startswith("warning: ") and "is damaged (not valid JSON" in warning
    card = json.loads((tmp_path / "bundle" / "model_card.json").read_text())
    assert card["test_metrics"]["accuracy"] is None and len(card["test_metrics"]["per_class"]) == 10


def test_after_a_tta_run_the_card_lists_the_ten_classes_and_tta_apart(trained_checkpoint, tmp_path, capsys):
    confusion = torch.eye(10, dtype=torch.int64) * 4 + 1
    saved = metrics_from_confusion(confusion, CIFAR10_CLASSES)
    saved |= metrics_from_confusion(confusion * 2 - torch.eye(10, dtype=torch.int64), CIFAR10_CLASSES, "test/acc_tta")
    metrics, markdown = card_metrics(trained_checkpoint, tmp_path, json.dumps(saved))  # as a --tta run writes it
    assert list(metrics["per_class"]) == list(CIFAR10_CLASSES)
    assert metrics["per_class"]["cat"] == saved["test/acc_cat"]
    assert metrics["tta"]["accuracy"] == saved["test/acc_tta"]
    assert metrics["tta"]["per_class"]["cat"] == saved["test/acc_tta_cat"]
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| class")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(CIFAR10_CLASSES)
    assert "test-time augmentation" in markdown and f"{100 * saved['test/acc_tta']:.2f} %" in markdown
    assert capsys.readouterr().err == ""


def test_a_class_without_test_images_shows_as_such_in_the_card(trained_checkpoint, tmp_path):
    confusion = torch.eye(10, dtype=torch.int64) * 3
    confusion[3, 3] = 0  # no cat in the test split: null in test_metrics.json
    saved = metrics_from_confusion(confusion, CIFAR10_CLASSES)
    metrics, markdown = card_metrics(trained_checkpoint, tmp_path, json.dumps(saved))
    assert metrics["per_class"]["cat"] is None and metrics["accuracy"] == 1.0
    assert "| cat | no test images |" in markdown and "| dog | 100.00 % |" in markdown
