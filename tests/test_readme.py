"""README.md stays true: its model table is the registry's, and it starts with the install and test commands."""

from __future__ import annotations

import re

from datapaths import REPO
from odearch.cli import models_markdown


def test_model_table_is_generated_from_the_registry() -> None:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->", text, re.S)
    assert block, "README.md lost its model-table markers"
    assert block.group(1) == models_markdown(), "run: python scripts/update_readme_models.py"


def test_readme_starts_with_install_and_test_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install -e . && odearch train ")
    assert first_block[1] == 'pip install -e ".[dev]" && python -m pytest -q'
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q\n" in ci  # CI calls the README's test command
