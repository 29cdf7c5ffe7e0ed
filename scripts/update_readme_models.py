"""Regenerates the model table of docs/models.md (between the model-table markers) from the registry.

python scripts/update_readme_models.py          # rewrite docs/models.md in place
python scripts/update_readme_models.py --check  # exit 1 if it is out of date (tests/test_readme.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from odearch.models import models_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "models.md"  # the page that holds the table
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def render(text: str) -> str:
    """`text` with the block between the markers replaced by the generated table."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{PAGE}: markers {START} / {END} not found")
    return f"{head}{START}\n{models_markdown()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if docs/models.md is out of date")
    args = parser.parse_args()
    text = PAGE.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("docs/models.md's model table is out of date: run python scripts/update_readme_models.py")
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
