"""The documentation as the tests read it: README.md and every page under docs/."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def doc_text() -> str:
    """README.md and the docs pages as one string, runs of whitespace made single spaces (prose phrases rewrap)."""
    return " ".join(" ".join(p.read_text().split()) for p in DOC_FILES)
