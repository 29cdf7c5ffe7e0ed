"""Every Python block of README.md and docs/*.md runs as written (issue 35).

A block runs in a fresh namespace with a temporary working directory. A block that needs data, a network or a long
training run carries ``<!-- skip: reason -->`` on the line before it; the blocks between ``<!-- examples:start -->``
and ``<!-- examples:end -->`` need files (a run's checkpoint, an akamaster checkpoint, a clone's hubconf.py) and run
with them in tests/test_ecosystem.py. Both show up as skips with their reasons (``pytest -ra``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from doctext import DOC_FILES, REPO

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip:\s*(.+?)\s*-->\s*$")
REGION = re.compile(r"<!-- examples:start -->.*?<!-- examples:end -->", re.S)
DELEGATED = "needs a run, an akamaster checkpoint and hubconf.py: run by tests/test_ecosystem.py with those files"


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it is, its code, and why it is skipped (None: it runs)."""

    where: str
    code: str
    skip: str | None


def collect(path: Path) -> list[Block]:
    """The Python blocks of one Markdown file, each with its skip reason if it has one."""
    text = path.read_text()
    regions = [(m.start(), m.end()) for m in REGION.finditer(text)]
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP.search(before)
        skip = marker.group(1) if marker else DELEGATED if any(a < m.start() < b for a, b in regions) else None
        blocks.append(Block(f"{path.relative_to(REPO)}:{line}", m.group(1), skip))
    return blocks


BLOCKS = [b for p in DOC_FILES for b in collect(p)]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_example_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.code, block.where, "exec"), {"__name__": "__doc_example__"})


def test_examples_are_found_and_every_skip_says_why() -> None:
    """The README's tour and the pages' blocks are found; a skip marker without a reason is refused."""
    assert any(b.where.startswith("README.md") and b.skip is None for b in BLOCKS)
    assert sum(b.skip is None for b in BLOCKS) >= 6
    for path in DOC_FILES:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("<!-- skip"):
                assert SKIP.search(line), f"{path.name}: a skip marker needs a reason: {line!r}"
