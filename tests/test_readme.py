"""README.md and docs/ stay true: the model table (docs/models.md) is the registry's, the README starts with the install
and test commands and stays one screen, and CI builds the docs strictly."""

from __future__ import annotations

import re

import pytest

from datapaths import REPO
from odearch.cli import models_markdown


@pytest.mark.slow
def test_model_table_is_generated_from_the_registry() -> None:
    text = (REPO / "docs" / "models.md").read_text()
    block = re.search(r"<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->", text, re.S)
    assert block, "docs/models.md lost its model-table markers"
    assert block.group(1) == models_markdown(), "run: python scripts/update_readme_models.py"


def test_readme_starts_with_install_and_test_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install -e . && odearch train ")
    assert first_block[1] == 'pip install -e ".[dev]" && python -m pytest -q'
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q\n" in ci  # CI calls the README's test command


def test_readme_is_one_screen_and_ci_builds_the_docs_strictly() -> None:
    """Issue 35: the README sells and starts (the manual is docs/); CI installs the docs extra and builds strictly."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 170
    ci = (REPO / ".ci" / "run").read_text()
    assert '-e ".[dev,docs]"' in ci and "mkdocs build --strict" in ci
    assert ci.index("mkdocs build --strict") < ci.index("python -m pytest -q\n")


def test_readme_documents_the_fast_inner_loop_and_ci_runs_everything() -> None:
    """The inner loop ``pytest -m "not slow"`` is documented; the default run and CI deselect nothing."""
    text = (REPO / "README.md").read_text()
    assert 'python -m pytest -m "not slow"' in text
    pyproject = (REPO / "pyproject.toml").read_text()
    addopts = re.search(r'^addopts = "(.*)"$', pyproject, re.M).group(1)
    assert "-m" not in addopts.split() and "slow" not in addopts  # CI runs the README's plain ``pytest -q``


def test_docs_list_the_differences_from_the_official_code() -> None:
    """Issue 14: each documented difference from the official code (and from the baselines' reference code) has its
    entry, naming what to set to follow the original (docs/differences.md)."""
    text = (REPO / "docs" / "differences.md").read_text()
    section = re.search(r"^# Differences from the official code\n(.*?)(?=\n#|\Z)", text, re.S | re.M)
    assert section, "docs/differences.md lost its 'Differences from the official code' heading"
    body = " ".join(section.group(1).split())
    for needle in ("`lm_weight_decay`", "kappa_n = 1 - k_n", "`downsample22`", "history_projection=False",
                   "`MResNetC`", "lm_channel_mresnetc", "U(0, sigma)", "resnet110_sd", "average-pools",
                   "SpatialZeroPadding(1, -1, 1, -1)", "v1.5", "23.87 / 22.63 / 21.69"):  # fmt: skip
        assert needle in body, needle


def test_version_changelog_and_citation_agree() -> None:
    """``odearch --version`` (the package's ``__version__``), pyproject.toml, CITATION.cff and CHANGELOG.md agree."""
    import tomllib

    import odearch

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert odearch.__version__ == version
    assert re.search(rf"^version: {re.escape(version)}$", (REPO / "CITATION.cff").read_text(), re.M)
    assert f"## [{version}]" in (REPO / "CHANGELOG.md").read_text()
