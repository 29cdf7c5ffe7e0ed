"""The documentation as tests, through Sybil (pytest's collector for README.md and docs/*.md; ``testpaths`` lists them).

- Every ```python block runs, in order, in one namespace per page, in a fresh temporary working directory that holds
  what the examples read: a clone's ``hubconf.py``, a smoke run's ``runs/try/checkpoints/best.safetensors`` and an
  akamaster checkpoint ``resnet20-12fca82f.th`` (tiny stand-ins made here, once a session).
- A block that needs something only some machines have carries a Sybil skip directive on the line before it, with its
  reason, e.g. ``<!-- skip: next if(not HAS_TIMM, reason="needs timm") -->``: it runs where that exists and is
  reported as skipped, with the reason, elsewhere (``pytest -ra``). ``HAS_TIMM`` and ``HAS_CIFAR`` (CIFAR-10 found
  where the tests look for it: ``tests/datapaths.py``) are in every page's namespace for those conditions.
- Every ``odearch ...`` command of a ```bash block (also after ``&&`` and in ``python -m`` / ``torchrun -m odearch``)
  is parsed by the real command-line parser: a renamed subcommand or flag fails; nothing is executed.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

REPO = Path(__file__).resolve().parent
SEPARATORS = {"&&", "||", ";", "|", "&"}


def odearch_commands(block: str) -> list[list[str]]:
    """The argument lists of the ``odearch`` commands in a shell block (comments, continuations and pipes handled)."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                command.append(token)
                continue
            if command and command[0] == "odearch":
                commands.append(command[1:])
            elif "-m" in command and command[command.index("-m") + 1 :][:1] == ["odearch"]:
                commands.append(command[command.index("-m") + 2 :])
            command = []
    return commands


def check_odearch_commands(example: Example) -> None:
    """Sybil evaluator of a shell block: each ``odearch`` command parses (``odearch.cli.build_parser``)."""
    from odearch.cli import UsageError, build_parser

    for argv in odearch_commands(example.parsed):
        try:
            build_parser().parse_args(argv)
        except UsageError as error:
            raise AssertionError(f"`odearch {shlex.join(argv)}` does not parse: {error}") from error
        except SystemExit as done:  # --help, --version: parsed, printed, exited 0
            assert done.code == 0, f"`odearch {shlex.join(argv)}` exited {done.code}"


def _namespace(namespace: dict) -> None:
    """What the skip conditions of a page can name."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from datapaths import HAS_CIFAR

    namespace["HAS_TIMM"] = importlib.util.find_spec("timm") is not None
    namespace["HAS_CIFAR"] = HAS_CIFAR


@pytest.fixture(scope="session")
def doc_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples read, made once: a run's best weights and an akamaster ``resnet20`` checkpoint."""
    import torch

    import odearch
    from odearch.train.checkpoint import save_weights

    root = tmp_path_factory.mktemp("doc_files")
    run = root / "runs" / "try" / "checkpoints"
    run.mkdir(parents=True)
    meta = {"model": "lm_resnet20", "num_classes": 10, "dataset": "cifar10", "scheme": None, "model_kwargs": {}}
    save_weights(run / "best.safetensors", odearch.create_model("lm_resnet20"), meta)
    renames = {"stem.0.": "conv1.", "stem.1.": "bn1.", "head.2.": "linear."}  # odearch's names -> akamaster's
    akamaster = {}
    for key, value in odearch.create_model("resnet20").state_dict().items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs) if key.startswith(ours) else key
        if key.startswith("stages."):
            _, stage, _, rest = key.split(".", 3)
            key = f"layer{int(stage) + 1}.{rest}"
        akamaster[key] = value
    torch.save({"state_dict": akamaster, "best_prec1": 91.73}, root / "resnet20-12fca82f.th")
    return root


@pytest.fixture
def doc_workdir(doc_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory for one example, with ``hubconf.py``, ``runs/`` and the akamaster file in it."""
    for name in ("hubconf.py", "runs", "resnet20-12fca82f.th"):
        (tmp_path / name).symlink_to(REPO / name if name == "hubconf.py" else doc_files / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


pytest_collect_file = Sybil(
    parsers=[
        PythonCodeBlockParser(),
        CodeBlockParser(language="bash", evaluator=check_odearch_commands),
        SkipParser(),
    ],
    patterns=["README.md", "docs/*.md"],
    setup=_namespace,
    fixtures=["doc_workdir"],
).pytest()
