"""README.md stays true: its model table is the registry's, and it starts with the install and test commands."""

from __future__ import annotations

import re

import pytest

from datapaths import REPO
from odearch.cli import models_markdown


@pytest.mark.slow
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


def test_readme_documents_the_fast_inner_loop_and_ci_runs_everything() -> None:
    """The inner loop ``pytest -m "not slow"`` is documented; the default run and CI deselect nothing."""
    text = (REPO / "README.md").read_text()
    assert 'python -m pytest -m "not slow"' in text
    pyproject = (REPO / "pyproject.toml").read_text()
    addopts = re.search(r'^addopts = "(.*)"$', pyproject, re.M).group(1)
    assert "-m" not in addopts.split() and "slow" not in addopts  # CI runs the README's plain ``pytest -q``


def test_readme_lists_the_differences_from_the_official_code() -> None:
    """Issue 14: each documented difference from the official code (and from the baselines' reference code) has its
    entry, naming what to set to follow the original."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"## Differences from the official code\n(.*?)\n## ", text, re.S)
    assert section, "README.md lost its 'Differences from the official code' section"
    body = " ".join(section.group(1).split())
    for needle in ("`lm_weight_decay`", "kappa_n = 1 - k_n", "`downsample22`", "history_projection=False",
                   "`MResNetC`", "lm_channel_mresnetc", "U(0, sigma)", "resnet110_sd", "average-pools",
                   "SpatialZeroPadding(1, -1, 1, -1)", "v1.5", "23.87 / 22.63 / 21.69"):  # fmt: skip
        assert needle in body, needle
