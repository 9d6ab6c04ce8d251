"""The command line behind ``train.py``: parse the flags, then train, resume, evaluate or predict.

``main(argv)`` returns its results (for tests and notebooks); ``run(argv)`` is the
console entry point that turns a :class:`UserError` into one ``error:`` line and
exit code 2. The work itself is in :mod:`lenet_lightning.experiment`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from typing_extensions import override

from lenet_lightning import evaluation, experiment
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.errors import Interrupted, SettingError, UserError, signal_name
from lenet_lightning.export import export_bundle, summary_text
from lenet_lightning.predict import predict_paths
from lenet_lightning.process import process_state_restored, quiet_console
from lenet_lightning.records import checkpoint_record, dump_config, load_config
from lenet_lightning.runs import check_resumable, find_last_checkpoint, launch_rank
from lenet_lightning.settings import (
    CHANGEABLE_ON_RESUME,
    DEFAULTS,
    RECIPES,
    SETTINGS,
    Setting,
    annotation_choices,
    annotation_types,
    check_resume_changes,
    flag,
    resolve_settings,
    validate_settings,
)
from lenet_lightning.signals import stops_on_signals


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` whose refusals are one ``error:`` line (and exit code 2), like every other refusal here."""

    @override
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag's help ends with its default."""
    parser = OneLineParser(
        description=(
            "Train LeNet-5 on CIFAR-10 with PyTorch Lightning, then test the best checkpoint. "
            "With --evaluate: test a saved checkpoint. With --predict: classify image files."
        ),
    )
    modes = parser.add_argument_group("what to do (default: train)")
    modes.add_argument("--evaluate", action="store_true", help="test the checkpoint given by --ckpt-path")
    modes.add_argument(
        "--predict",
        nargs="+",
        metavar="PATH",
        help="classify these image files and folders (recursively) with --ckpt-path (default: none)",
    )
    modes.add_argument("--json", action="store_true", help="with --predict: print JSON instead of text")
    modes.add_argument(
        "--output", metavar="FILE", help="with --predict: write results.csv or results.json (default: print)"
    )
    modes.add_argument(
        "--export",
        metavar="DIR",
        help="write a verified ONNX + torch.export bundle of --ckpt-path to DIR (default: none)",
    )
    modes.add_argument("--force", action="store_true", help="with --export: replace the bundle in a non-empty DIR")
    modes.add_argument(
        "--ckpt-path",
        help="checkpoint to resume training from ('last': the newest run's last.ckpt), or to evaluate/predict "
        "with (default: none, a new run)",
    )
    modes.add_argument(
        "--config", type=Path, help="YAML settings, e.g. a run's config.yaml; flags override it (default: none)"
    )
    modes.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    modes.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    for owner, title in SETTING_GROUPS.items():
        group = parser.add_argument_group(title)
        for setting in SETTINGS.values():
            if setting.owner == owner:
                add_setting(group, setting)
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, no checkpoints")
    return parser


SETTING_GROUPS = {
    "run": "run: recipe, epochs, hardware, output (defaults: the 'default' recipe; other recipes' values in [])",
    "model": "model and optimisation: LeNetClassifier's arguments",
    "data": "data: CIFAR10DataModule's arguments",
}


def add_setting(group: argparse._ArgumentGroup, setting: Setting) -> None:
    """A flag for one setting: its type, choices and help from the constructor that takes it."""
    kwargs: dict[str, Any] = {}
    types = annotation_types(setting.annotation)
    if choices := annotation_choices(setting.annotation):
        kwargs["choices"] = choices
    elif types == (bool,):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif types == (int,):
        kwargs["type"] = int
    elif types == (float,):
        kwargs["type"] = float
    elif set(types) == {int, float}:
        kwargs["type"] = number
    # The real default is applied after parsing, so that "not given" stays visible.
    text = f"{setting.help} ({default_text(setting.name)})"
    group.add_argument(flag(setting.name), default=None, help=text, **kwargs)


def default_text(key: str) -> str:
    """``default: 30 [fast: 4, tutorial: 5]``: the default, and the recipes that change it."""
    others = ", ".join(f"{name}: {values[key]}" for name, values in RECIPES.items() if key in values)
    return f"default: {DEFAULTS[key]}" + (f" [{others}]" if others else "")


def number(text: str) -> int | float:
    """An ``int`` when the text is a whole number, else a ``float`` (``--val-size 5000`` or ``0.1``)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command line; returns the test metrics (train, evaluate), the predictions or the settings."""
    args = build_parser().parse_args(argv)
    check_modes(args)
    with quiet_console(), process_state_restored(), stops_on_signals():
        if args.predict:
            output = Path(args.output) if args.output else None
            return {"predictions": nothing_written_when_stopped(predict, args, "classifying files", output)}
        if args.export:
            return nothing_written_when_stopped(export, args, f"exporting to '{args.export}'", Path(args.export))
        if args.evaluate:
            return evaluate(args)
        return train(args)


def nothing_written_when_stopped(
    work: Callable[[argparse.Namespace], Any], args: argparse.Namespace, doing: str, target: Path | None
) -> Any:
    """Run ``work``; a stop signal becomes one line saying whether ``target`` (file or folder) was changed.

    Predictions are written only once all are made, and a bundle is built in a staging
    folder that is removed on the way out, so a stop leaves ``target`` as it was, unless it
    came while the finished files were being moved into place: then the line says so.
    """
    before = file_states(target)
    try:
        return work(args)
    except Interrupted as stop:
        changed = target is not None and file_states(target) != before
        outcome = f"'{target}' may be incomplete: run it again" if changed else "nothing was written"
        raise Interrupted(stop.signum, f"stopped by {signal_name(stop.signum)} while {doing}: {outcome}") from None


def file_states(target: Path | None) -> dict[str, tuple[int, int]]:
    """Size and modification time of ``target``'s files (itself, if a file): enough to see that it changed."""
    if target is None or not target.exists():
        return {}
    files = [target] if target.is_file() else [p for p in target.iterdir() if p.is_file()]
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def check_modes(args: argparse.Namespace) -> None:
    """One thing at a time, and every flag given is used: nothing given is silently dropped."""
    modes = [name for name in ("--evaluate", "--predict", "--export", "--print-config") if getattr(args, mode(name))]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot be combined: run them one at a time")
    if not modes and args.fast_dev_run and args.ckpt_path:
        raise UserError("--fast-dev-run cannot resume a run: leave out --ckpt-path")
    used = MODE_FLAGS.get(modes[0]) if modes else None
    given = [key for key, value in vars(args).items() if value not in (None, False) and key in OPTIONAL_FLAGS]
    unused = [flag(key) for key in given if used is not None and key not in used]
    unused += [flag(key) for key in given if key in ONLY_WITH and ONLY_WITH[key] not in modes]
    if unused:
        doing = modes[0] if modes else "training"
        raise UserError(f"{', '.join(dict.fromkeys(unused))} has no effect with {doing}: leave it out")


# What each mode uses besides its own flags; every other setting and option is refused there.
LOCATING = {"ckpt_path", "log_dir", "name"}  # --ckpt-path last looks in --log-dir/--name
EVALUATION_SETTINGS = set(CHANGEABLE_ON_RESUME) - {"strategy", "devices", "num_nodes", "checkpoint_every_n_steps"}
MODE_FLAGS: dict[str, set[str]] = {
    "--predict": {"predict", "json", "output", "debug", *LOCATING},
    "--export": {"export", "force", "data_dir", "cache_dir", "debug", *LOCATING},
    "--evaluate": {"evaluate", "debug", *LOCATING, *EVALUATION_SETTINGS} - {"log_every_n_steps"},
    "--print-config": {"print_config", "debug", "config", "ckpt_path", *SETTINGS},
}
ONLY_WITH = {"json": "--predict", "output": "--predict", "force": "--export"}
OPTIONAL_FLAGS = {"config", "fast_dev_run", "json", "output", "force", *LOCATING, *SETTINGS}


def mode(flag_name: str) -> str:
    return flag_name.removeprefix("--").replace("-", "_")


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train a new run (or resume one): resolve, check, then hand over to :func:`experiment.train`."""
    resume_from = resolve_checkpoint(args, unfinished=True)
    saved = checkpoint_record(resumable(resume_from)) if resume_from else None
    config = load_config(args.config) if args.config else None
    given = {key: value for key, value in vars(args).items() if value is not None and key in SETTINGS}
    origins = {
        **{key: f"checkpoint '{resume_from}'" for key in saved or {}},
        **{key: f"--config '{args.config}'" for key in config or {}},
        **dict.fromkeys(given, "flag"),
    }
    with settings_named_by(origins):
        if saved is not None:
            check_resume_changes(saved, {**(config or {}), **given})
        settings = resolve_settings(given, saved, config)
        if not args.print_config:
            return experiment.train(settings, resume_from, fast_dev_run=args.fast_dev_run)  # validates them first
        validate_settings(settings)
        print(dump_config(settings), end="")
        return settings


def resumable(checkpoint_path: Path) -> dict[str, Any]:
    """The checkpoint to resume, refused when its run has finished or train.py cannot rebuild its training exactly."""
    check_resumable(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    if (checkpoint.get("datamodule_hyper_parameters") or {}).get("mean") is not None:
        raise UserError(
            f"'{checkpoint_path}' was trained with a normalisation of its own (mean/std), which train.py has no "
            "flags for: resume it the way it was trained (Python or LightningCLI, with ckpt_path); --evaluate, "
            "--predict and --export take it as it is"
        )
    return checkpoint


@contextlib.contextmanager
def settings_named_by(origins: dict[str, str]) -> Iterator[None]:
    """Reword a class's :class:`SettingError` for this command line: the flag, or the file the value came from."""
    try:
        yield
    except SettingError as error:
        origin = origins.get(error.parameter, "flag")
        if origin == "flag":
            raise UserError(f"{flag(error.parameter)} {error.problem}") from None
        raise UserError(f"{origin}: {error.parameter} {error.problem}") from None


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Test a checkpoint with the settings it holds; data, hardware and ``--tta`` given now win."""
    checkpoint = resolve_checkpoint(args)
    if checkpoint is None:
        raise UserError("--evaluate needs --ckpt-path <checkpoint.ckpt>")
    given = {key: value for key, value in vars(args).items() if value is not None and key in SETTINGS}
    with settings_named_by(dict.fromkeys(given, "flag")):
        return evaluation.evaluate(checkpoint, given)


def run(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one ``error:`` line and exit code 2 for problems the user can fix."""
    try:
        result = main(argv)
    except SystemExit as parsed:  # --help, or a refused flag (already reported in one line)
        return parsed.code if isinstance(parsed.code, int) else 2
    except UserError as error:
        if "--debug" in (argv if argv is not None else sys.argv):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        if launch_rank() == 0:  # every DDP process stops alike; one says so
            print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # before the handlers are in place (reading the flags): nothing was done yet
        print("stopped by SIGINT (Ctrl-C) while starting: nothing was done", file=sys.stderr)
        return 130
    failed = result.get("predictions") is not None and not any("error" not in p for p in result["predictions"])
    return 1 if failed else 0


def resolve_checkpoint(args: argparse.Namespace, unfinished: bool = False) -> Path | None:
    """``--ckpt-path``: ``None``, ``last`` (the newest run's last.ckpt; ``unfinished``: newest unfinished) or a path."""
    if args.ckpt_path is None:
        return None
    return resolve_last(args, unfinished) if args.ckpt_path == "last" else Path(args.ckpt_path)


def resolve_last(args: argparse.Namespace, unfinished: bool = False) -> Path:
    """The newest run's last.ckpt under ``--log-dir``/``--name``."""
    log_dir, name = Path(args.log_dir or DEFAULTS["log_dir"]), args.name or DEFAULTS["name"]
    return find_last_checkpoint(log_dir, name, unfinished)


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Top-3 classes of each file (folders: every image in them); unreadable files get an error entry."""
    if args.ckpt_path is None:
        raise UserError("--predict needs --ckpt-path <checkpoint.ckpt>")
    output = Path(args.output) if args.output else None
    checkpoint = resolve_checkpoint(args) or resolve_last(args)
    return predict_paths(checkpoint, [Path(p) for p in args.predict], output=output, as_json=args.json)


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Write and verify the bundle; print its files and the verification numbers."""
    checkpoint = resolve_checkpoint(args)
    if checkpoint is None:
        raise UserError("--export needs --ckpt-path <checkpoint.ckpt>")
    summary = export_bundle(
        checkpoint, Path(args.export), force=args.force, data_dir=args.data_dir, cache_dir=args.cache_dir
    )
    print(summary_text(summary))
    return summary
