"""Every command and snippet in README.md and docs/*.md runs, as a reader following along would run it.

The fenced ```bash and ```python blocks are read from the Markdown itself (nothing is
copied here). Each document's blocks run in order in one temporary working directory
whose ``data/`` holds a small synthetic CIFAR-10 in the official layout (``tests/conftest.py``),
beside a tiny image folder (``cifar10-images/``) and a few pictures that stand for the reader's
own (``cat.png``, ``dog.jpg``, ``photos/``).

How a command runs:

- ``python train.py ARGS``: in-process, ``lenet_lightning.cli.run(ARGS + SMALL)``, where
  training commands get :data:`SMALL` appended (later flags win), and its exit code must be 0;
- ``python -m lenet_lightning.lightning_cli ARGS``: in-process, its ``main(ARGS + LIGHTNING_SMALL)``
  for ``fit``; ``python -m benchmarks.NAME ARGS``: in-process, that module's ``main(ARGS)``;
- ``pip install ...``: not run; each extra it names must exist in pyproject.toml, each package
  must be one of the project's dependencies;
- ``python -m pytest ...``: not run (it would run this test again); the paths it names must exist
  and the markers it selects must be declared;
- anything else (``mkdir``, ``ls``, ``cat`` ...): ``bash -c`` in the working directory, exit code 0.

An HTML comment just before a block changes that, one per line:

- ``<!-- doc-test: skip: REASON -->``: the block is not run and its test is skipped with REASON,
  which must be one of :data:`SKIP_REASONS` (a GPU, the real data, a cluster, a server);
- ``<!-- doc-test: exit N -->``: the block's last command must exit with code N (a documented failure);
- ``<!-- doc-test: sigterm -->``: the block's first training command gets SIGTERM in its second
  epoch, as a preempted job does, and must exit 143 with ``last.ckpt`` saved.

A ```text block right after a block marked ``exit N`` is the ``error:`` line its last command must
print (``...`` stands for any text). The rows of docs/errors.md's tables that name a ``python
train.py`` command are run the same way: exit code and line as the row says.

A block the harness cannot run (an unknown command, a flag train.py does not have, a shell feature
it does not know) fails its test. ``LENET_LIGHTNING_DOCS=a.md:b.md`` points the harness at other files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import synthetic_images, write_cifar_archive, write_image_folder

ROOT = Path(__file__).resolve().parents[1]

# The documents whose blocks run; ``LENET_LIGHTNING_DOCS`` (os.pathsep-separated files) points the
# harness at others, e.g. a scratch copy of README.md with a renamed flag, which must then fail.
DOCUMENTS = (
    [Path(p) for p in os.environ["LENET_LIGHTNING_DOCS"].split(os.pathsep)]
    if os.environ.get("LENET_LIGHTNING_DOCS")
    else [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)

# Why a block may be left out; anything else is a typo or a block that should run.
SKIP_REASONS = {
    "needs a CUDA GPU",
    "needs the real CIFAR-10 data",
    "needs a cluster (several machines, torchrun or SLURM)",
    "starts a server",
    "downloads from the internet",
    "a benchmark: minutes of CPU time",
}
RUN_LANGUAGES = {"bash", "python"}
# Fences that show text (output, files) and are not run.
SHOW_LANGUAGES = {"text", "yaml", "json", "csv"}

# Appended to every training command (later flags win): one epoch. ``data/`` holds 6,000 training
# images, so the default --val-size 5000 leaves 1,000 to train on, and the documented flags stay as they are.
SMALL = ["--max-epochs", "1"]
# A block marked ``sigterm`` trains two epochs, so that the signal arrives mid-run.
SMALL_SIGTERM = ["--max-epochs", "2"]
LIGHTNING_SMALL = ["--trainer.max_epochs", "1"]
MODES = {"--evaluate", "--predict", "--export", "--print-config", "--help", "-h"}


@dataclass
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip: str | None = None
    exit_code: int = 0
    sigterm: bool = False
    error_line: str | None = None  # the ```text block right after a failing block: what it prints
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.document.name}:{self.line}"


DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(.*)$")


def read_blocks(document: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the ``doc-test`` directives just above each."""
    lines = document.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = previous_end = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, language = match[1], match[2].strip()
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end])
        block = Block(document, index + 1, language, code)
        above = index - 1
        while above >= 0 and (directive := DIRECTIVE.search(lines[above])):
            apply_directive(block, directive[1])
            above -= 1
        if language not in RUN_LANGUAGES | SHOW_LANGUAGES:
            block.problems.append(f"fence language {language!r}: use one of {sorted(RUN_LANGUAGES | SHOW_LANGUAGES)}")
        previous = blocks[-1] if blocks else None
        if language == "text" and previous and previous.exit_code and not previous.error_line:
            # Output shown right after a documented failure is the error line it prints.
            between = lines[previous_end + 1 : index]
            if all(not line.strip() for line in between):
                previous.error_line = code.strip().splitlines()[0]
        blocks.append(block)
        previous_end = end
        index = end + 1
    return blocks


def apply_directive(block: Block, text: str) -> None:
    if text.startswith("skip:"):
        reason = text.removeprefix("skip:").strip()
        if reason not in SKIP_REASONS:
            block.problems.append(f"skip reason {reason!r} is not one of {sorted(SKIP_REASONS)}")
        block.skip = reason
    elif match := re.fullmatch(r"exit (\d+)", text):
        block.exit_code = int(match[1])
    elif text == "sigterm":
        block.sigterm = True
    else:
        block.problems.append(f"unknown directive {text!r}")


def runnable_blocks() -> list[Block]:
    return [block for document in DOCUMENTS for block in read_blocks(document) if block.language in RUN_LANGUAGES]


# --- the reader's working directory ----------------------------------------------------------


def make_workdir(factory: pytest.TempPathFactory, name: str) -> Path:
    """``data/`` with a small CIFAR-10 in the official layout, and a few of "your own" pictures."""
    template = factory.getbasetemp() / "docs-workdir"
    if not template.exists():  # made once per test session, copied into each working directory
        write_cifar_archive(template / "data", train_per_class=600, test_per_class=20)
        write_image_folder(template / "cifar10-images", train_per_class=8, test_per_class=3)
    root = factory.mktemp(name)
    shutil.copytree(template, root, dirs_exist_ok=True)
    images, _ = synthetic_images(1, seed=7)
    pictures = [Image.fromarray(image.transpose(1, 2, 0)) for image in images]
    pictures[3].resize((64, 48)).save(root / "cat.png")
    pictures[5].save(root / "dog.jpg", quality=90)
    (root / "photos" / "holiday").mkdir(parents=True)
    for index, picture in enumerate(pictures[:4]):
        picture.save(root / "photos" / f"{index}.png")
    pictures[8].convert("L").save(root / "photos" / "holiday" / "boat.jpg")
    return root


@dataclass
class Session:
    """One document being followed: its working directory and how far it has got."""

    workdir: Path
    done: int = 0
    env: dict[str, str] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)  # blocks whose first training command got SIGTERM


SESSIONS: dict[Path, Session] = {}


# --- running one command ---------------------------------------------------------------------


class DocError(AssertionError):
    pass


def commands(code: str) -> Iterator[str]:
    """Shell lines, with backslash continuations joined and blank and comment lines left out."""
    joined = code.replace("\\\n", " ")
    for line in joined.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            yield line


def run_command(line: str, block: Block, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    words = shlex.split(line, comments=True)
    if not words:
        return
    if any(word in {"|", "&&", "||", ";", "&", "<"} for word in words):
        return run_shell(line, block, session)
    stdout_file = None
    if ">" in words:
        at = words.index(">")
        words, stdout_file = words[:at], words[at + 1 :]
        if len(stdout_file) != 1:
            raise DocError(f"{block.name}: cannot run {line!r}: one '> FILE' at the end only")
    env = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[:1] == ["export"]:
        for assignment in words[1:]:
            key, _, value = assignment.partition("=")
            session.env[key] = value
            monkeypatch.setenv(key, value)
        return None
    words = expand_globs(words)
    with patched_env(env, monkeypatch), captured_to(stdout_file):
        if words[:2] == ["python", "train.py"]:
            return run_train(words[2:], block, session)
        if words[:3] == ["python", "-m", "lenet_lightning.lightning_cli"]:
            return run_lightning_cli(words[3:], block)
        if words[:2] == ["python", "-m"] and words[2].startswith("benchmarks."):
            return run_benchmark(words[2], words[3:], block)
        if words[:3] == ["python", "-m", "pytest"]:
            return check_pytest(words[3:], block)
        if words[:2] == ["pip", "install"]:
            return check_pip_install(words[2:], block)
    return run_shell(line, block, session)


def expand_globs(words: list[str]) -> list[str]:
    """As bash does: a word with ``*`` or ``?`` becomes the sorted paths it matches (itself if none)."""
    expanded: list[str] = []
    for word in words:
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        expanded += matches or [word]
    return expanded


@contextlib.contextmanager
def patched_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield


@contextlib.contextmanager
def captured_to(target: list[str] | None) -> Iterator[None]:
    if target is None:
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    Path(target[0]).write_text(buffer.getvalue())


def is_training(args: list[str]) -> bool:
    return not MODES & set(args)


def run_train(args: list[str], block: Block, session: Session) -> None:

    check_flags_exist(args, block)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["train.py"])  # as messages name the program: "python train.py"
        return run_train_as_program(args, block, session)


def run_train_as_program(args: list[str], block: Block, session: Session) -> None:
    from lenet_lightning.cli import run

    if not is_training(args):
        return expect_code(run(args), block, f"python train.py {shlex.join(args)}")
    if block.sigterm and block.name not in session.preempted:
        session.preempted.add(block.name)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = run_with_sigterm([*args, *SMALL_SIGTERM])
        if code != 143:
            raise DocError(f"{block.name}: SIGTERM mid-run should exit 143, got {code}:\n{err.getvalue()[-2000:]}")
        check_sigterm_line(block, err.getvalue())
        return None
    small = SMALL_SIGTERM if block.sigterm else SMALL
    if several_processes(args):
        return run_process([*args, *small], block)
    return expect_code(run([*args, *small]), block, f"python train.py {shlex.join(args)}")


def check_flags_exist(args: list[str], block: Block) -> None:
    """Each documented flag is one train.py has, spelled out: argparse would take a prefix of a renamed flag."""
    from lenet_lightning.cli import build_parser

    known = set(build_parser()._option_string_actions)
    unknown = [arg.partition("=")[0] for arg in args if arg.startswith("--") and arg.partition("=")[0] not in known]
    if unknown:
        raise DocError(f"{block.name}: train.py has no flag {', '.join(unknown)}")


def several_processes(args: list[str]) -> bool:
    """DDP launches its processes by running the script again: that must be train.py, not pytest."""
    value = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag in {"--devices", "--strategy"}}
    return value.get("--devices", "1") not in {"1", "auto"} or value.get("--strategy", "auto").startswith("ddp")


def run_process(args: list[str], block: Block) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != block.exit_code:
        raise DocError(
            f"{block.name}: python train.py {shlex.join(args)} exited {done.returncode}, expected "
            f"{block.exit_code}:\n{done.stderr[-2000:]}"
        )


def check_sigterm_line(block: Block, err: str) -> None:
    """The line a stopped run prints is the one the document shows (numbers aside)."""
    shown = re.search(r"^\s*(stopped by SIGTERM at step .*)$", block.document.read_text(encoding="utf-8"), re.M)
    if shown is None:
        raise DocError(f"{block.name}: a block marked sigterm needs the 'stopped by SIGTERM ...' line in its document")
    pattern = re.sub(r"\\d+|\d+", r"\\d+", re.escape(shown[1]))
    printed = [line for line in err.splitlines() if line.startswith("stopped by SIGTERM")]
    if len(printed) != 1 or not re.fullmatch(pattern, printed[0]):
        raise DocError(f"{block.name}: documented\n  {shown[1]}\nbut it prints\n  {printed}")


def run_with_sigterm(args: list[str]) -> int:
    """``run(args)`` with SIGTERM sent to this process a few steps into the second epoch."""
    from lightning.pytorch.callbacks import Callback

    from lenet_lightning import experiment
    from lenet_lightning.cli import run

    class Preempt(Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            if trainer.current_epoch == 1 and trainer.global_step % trainer.num_training_batches == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    original = experiment.train

    def train(settings, resume_from=None, fast_dev_run=False, callbacks=()):
        return original(settings, resume_from, fast_dev_run, [*callbacks, Preempt()])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "train", train)
        return run(args)


def run_lightning_cli(args: list[str], block: Block) -> None:
    from lenet_lightning.lightning_cli import main

    small = LIGHTNING_SMALL if args[:1] == ["fit"] and "--print_config" not in args else []
    try:
        main([*args, *small])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    expect_code(code, block, f"python -m lenet_lightning.lightning_cli {shlex.join(args)}")


def run_benchmark(module: str, args: list[str], block: Block) -> None:
    import importlib

    try:
        result = importlib.import_module(module).main(args)
        code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    expect_code(code, block, f"python -m {module} {shlex.join(args)}")


def expect_code(code: int, block: Block, command: str) -> None:
    if code != block.exit_code:
        raise DocError(f"{block.name}: {command!r} exited {code}, expected {block.exit_code}")


def check_pytest(args: list[str], block: Block) -> None:
    """The paths exist, the markers are declared (running the suite here would run this test again)."""
    declared = {marker.split(":")[0] for marker in pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
    words = iter(args)
    for word in words:
        if word == "-m":
            markers = set(re.findall(r"\w+", next(words))) - {"not", "and", "or"}
            if not markers <= declared:
                raise DocError(f"{block.name}: pytest -m names undeclared markers {sorted(markers - declared)}")
        elif not word.startswith("-") and not (ROOT / word.split("::")[0]).exists():
            raise DocError(f"{block.name}: pytest path {word!r} does not exist")


def check_pip_install(args: list[str], block: Block) -> None:
    """``-e .`` / ``-e ".[a,b]"``: the extras exist; other names: the project depends on them."""
    project = pyproject()["project"]
    dependencies = {re.split(r"[<>=\[ ;]", spec)[0].lower() for spec in project["dependencies"]}
    words = iter(args)
    for word in words:
        if word in {"--index-url", "--extra-index-url"}:
            url = next(words)
            if not url.startswith("https://"):
                raise DocError(f"{block.name}: {word} {url!r} is not an https URL")
        elif word == "-e":
            target = next(words)
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
            if not match:
                raise DocError(f"{block.name}: pip install -e {target!r}: expected . or .[extra,...]")
            for extra in (match[1] or "").split(","):
                if extra and extra not in project["optional-dependencies"]:
                    raise DocError(f"{block.name}: pyproject.toml has no extra {extra!r}")
        elif word.startswith("-"):
            raise DocError(f"{block.name}: pip install option {word!r} is not known to this harness")
        elif word.lower() not in dependencies:
            raise DocError(f"{block.name}: pip install {word!r}: not a dependency of the project")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_shell(line: str, block: Block, session: Session) -> None:
    env = {**os.environ, **session.env, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", "-c", line], cwd=session.workdir, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != block.exit_code:
        raise DocError(
            f"{block.name}: {line!r} exited {done.returncode}, expected {block.exit_code}:\n{done.stderr[-2000:]}"
        )


def run_python(block: Block) -> None:
    code = compile(block.code, f"{block.document}:{block.line}", "exec")
    exec(code, {"__name__": "__main__"})


def run_block(block: Block, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.language == "python":
        return run_python(block)
    lines = list(commands(block.code))
    for index, line in enumerate(lines):
        # A documented failure is the block's last command; the ones before it must succeed.
        if index < len(lines) - 1:
            run_command(line, dataclasses.replace(block, exit_code=0), session, monkeypatch)
            continue
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            run_command(line, block, session, monkeypatch)
        sys.stderr.write(err.getvalue())
        if block.error_line is not None:
            printed = [text for text in err.getvalue().splitlines() if text.startswith("error: ")]
            if not printed or not matches(block.error_line, printed[-1]):
                raise DocError(f"{block.name}: documented\n  {block.error_line}\nbut it prints\n  {printed}")
    return None


# --- the tests -------------------------------------------------------------------------------

BLOCKS = runnable_blocks()


@pytest.fixture
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Session:
    block: Block = request.param
    if block.document not in SESSIONS:
        SESSIONS[block.document] = Session(make_workdir(tmp_path_factory, block.document.stem))
    return SESSIONS[block.document]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("block", "session"), [(b, b) for b in BLOCKS], ids=[b.name for b in BLOCKS], indirect=["session"]
)
def test_documented_block_runs(block: Block, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the document's earlier blocks first (once, as a reader would have), then this one."""
    monkeypatch.chdir(session.workdir)
    for key, value in session.env.items():
        monkeypatch.setenv(key, value)
    blocks = [b for b in BLOCKS if b.document == block.document]
    position = blocks.index(block)
    while session.done < position:
        earlier = blocks[session.done]
        session.done += 1
        if earlier.skip is None and not earlier.problems:
            try:  # only when this test runs without the earlier ones (-k): they ran in their own tests otherwise
                run_block(earlier, session, monkeypatch)
            except Exception as error:
                raise DocError(f"{block.name}: the earlier block {earlier.name} failed: {error}") from error
    session.done = position + 1
    assert not block.problems, f"{block.name}: " + "; ".join(block.problems)
    if block.skip is not None:
        pytest.skip(f"{block.skip} ({block.name})")
    run_block(block, session, monkeypatch)


def test_every_fence_names_a_known_language() -> None:
    """A block in an unknown (or no) language would be neither run nor knowingly left out."""
    problems = [
        f"{b.name}: {p}"
        for d in DOCUMENTS
        for b in read_blocks(d)
        for p in b.problems
        if b.language not in RUN_LANGUAGES
    ]
    assert not problems, "\n".join(problems)


# --- the documents themselves ----------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_links_inside_the_repository_resolve(document: Path) -> None:
    """Relative links point at files that exist (and headings that exist), never outside the repository."""
    broken = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        if (
            not resolved.is_relative_to(ROOT)
            or not resolved.exists()
            or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved))
        ):
            broken.append(target)
    assert not broken, f"{document.name}: broken links {broken}"


def test_readme_is_short_and_self_contained() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "../" not in text, "README.md points outside the repository"


def test_readme_layout_names_every_module() -> None:
    """One line per module of the package: a new module without its line fails here."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text.partition("## Layout")[2].partition("\n## ")[0]
    listed = set(re.findall(r"^\s+(\w+\.py)\s", layout, flags=re.M))
    modules = {path.name for path in (ROOT / "lenet_lightning").glob("*.py")} - {"__init__.py"}
    assert not modules - listed, f"README.md's layout lacks {sorted(modules - listed)}"
    assert not listed - modules, f"README.md's layout lists missing modules {sorted(listed - modules)}"


# --- the error table: each row's command prints the row's line ---------------------------------

ERRORS = ROOT / "docs" / "errors.md"


@dataclass
class ErrorRow:
    line: int
    case: str
    command: list[str]
    expected: str
    exit_code: int


def error_rows() -> list[ErrorRow]:
    """Rows of docs/errors.md's tables whose command cell is a ``python train.py`` command."""
    if not ERRORS.exists() or ERRORS not in DOCUMENTS:
        return []
    rows = []
    for number, line in enumerate(ERRORS.read_text(encoding="utf-8").splitlines(), start=1):
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) != 4 or not cells[1].startswith("`python train.py"):
            continue
        expected = re.search(r"`([^`]+)`", cells[2])
        assert expected, f"errors.md:{number}: no `error:` line in {cells[2]!r}"
        rows.append(ErrorRow(number, cells[0], shlex.split(cells[1].strip("`"))[2:], expected[1], int(cells[3])))
    return rows


ERROR_ROWS = error_rows()


def matches(expected: str, line: str) -> bool:
    """``...`` in the documented line stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, line) is not None


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("row", ERROR_ROWS, ids=[f"errors.md:{row.line}" for row in ERROR_ROWS])
def test_documented_error_line(
    row: ErrorRow, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    """The command of each row exits with the row's code, printing the row's line (after the setup blocks)."""
    import torch

    from lenet_lightning.cli import run

    if torch.cuda.is_available() and ("without a GPU" in row.case or "without GPUs" in row.case):
        pytest.skip(f"needs a machine without a CUDA GPU (errors.md:{row.line})")
    if ERRORS not in SESSIONS:
        SESSIONS[ERRORS] = Session(make_workdir(tmp_path_factory, "errors"))
    session = SESSIONS[ERRORS]
    monkeypatch.chdir(session.workdir)
    blocks = [b for b in BLOCKS if b.document == ERRORS]
    while session.done < len(blocks):  # the setup blocks, once
        session.done += 1
        if blocks[session.done - 1].skip is None:
            run_block(blocks[session.done - 1], session, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    capsys.readouterr()
    code = run(row.command)
    err = capsys.readouterr().err.replace("\r", "\n")
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "stopped by "))]
    assert code == row.exit_code, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert matches(row.expected, lines[0]), (
        f"errors.md:{row.line} documents\n  {row.expected}\nbut it prints\n  {lines[0]}"
    )


# --- the harness itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "python train.py --epochs 1",  # --max-epochs renamed
        "python train.py --max-epoch 1",  # a prefix argparse would accept
        "python -m lenet_lightning.lightning_cli fit --trainer.epochs 1",
        'pip install -e ".[gpu]"',  # an extra that does not exist
        "python -m pytest -q tests/test_nothing.py",
        "some-tool --version",
    ],
)
def test_a_wrong_command_fails(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the docs would say after a flag, extra or file is renamed: the block's test fails."""
    monkeypatch.chdir(tmp_path)
    block = Block(tmp_path / "scratch.md", 1, "bash", command)
    with pytest.raises(DocError):
        run_block(block, Session(tmp_path), monkeypatch)


def test_directives_are_checked(tmp_path: Path) -> None:
    document = tmp_path / "scratch.md"
    document.write_text(
        "<!-- doc-test: skip: not today -->\n```bash\nls\n```\n<!-- doc-test: exit two -->\n```python\npass\n```\n"
        "```\nplain\n```\n"
    )
    problems = [problem for block in read_blocks(document) for problem in block.problems]
    assert len(problems) == 3, problems


def test_training_md_flag_tables_match_the_parser() -> None:
    """Every train.py flag is in docs/training.md; each table row's default is the constructor's default."""
    from lenet_lightning.cli import build_parser
    from lenet_lightning.settings import DEFAULTS, flag

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    flags = {option for option in build_parser()._option_string_actions if option.startswith("--")}
    missing = sorted(f for f in flags - {"--help"} if f"`{f}" not in text and not f.startswith("--no-"))
    assert not missing, f"docs/training.md does not mention {missing}"
    rows = re.findall(r"^\| `(--[\w-]+)` \| ([^|]+) \|", text.partition("## Flags")[2], flags=re.M)
    documented = {name: default.strip() for name, default in rows}
    wrong = {
        name: (documented[name], str(DEFAULTS[key]))
        for key in DEFAULTS
        if (name := flag(key)) in documented and documented[name] != str(DEFAULTS[key])
    }
    assert not wrong, f"docs/training.md defaults (documented, actual): {wrong}"
    assert set(documented) == {flag(key) for key in DEFAULTS}, set(documented) ^ {flag(key) for key in DEFAULTS}


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_inline_commands_use_existing_flags(document: Path) -> None:
    """``python train.py ...`` in running text and tables (not run) names only flags train.py has."""
    from lenet_lightning.cli import build_parser

    known = set(build_parser()._option_string_actions)
    text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.S)
    spans = re.findall(r"`((?:python train\.py|train\.py|\.\.\.) [^`]*)`", text)
    flags = {word for span in spans for word in re.findall(r"(?<!\S)--[a-z][\w-]*", span)}
    # A flag on its own in running text (`--val-size`, `--lr 0.05`): train.py's, or one of these others'.
    flags |= set(re.findall(r"`(--[a-z][\w-]*)[^`]*`", text)) - OTHER_TOOLS_FLAGS
    assert not flags - known, f"{document.name}: train.py has no {sorted(flags - known)}"


# Flags the docs mention on their own that belong to other commands (benchmarks.gpu_check's).
OTHER_TOOLS_FLAGS = {"--min-acc"}


def test_training_md_recipe_table_matches_recipes() -> None:
    """The recipe table's values are RECIPES' (an empty cell: the default's value)."""
    from lenet_lightning.settings import RECIPES, flag, recipe_settings

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    table = text.partition("## Recipes")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| `(--[\w-]+)`[^|]* \|([^|]*)\|([^|]*)\|([^|]*)\|$", table, flags=re.M)
    assert rows
    keys = {flag(key): key for key in recipe_settings("default")}
    for name, *cells in rows:
        for recipe, cell in zip(("default", "fast", "tutorial"), cells, strict=True):
            value = cell.strip() or str(recipe_settings("default")[keys[name]])
            assert value == str(recipe_settings(recipe)[keys[name]]), (name, recipe, value)
    changed = {flag(key) for values in RECIPES.values() for key in values}
    assert changed <= {name for name, *_ in rows}, changed - {name for name, *_ in rows}
