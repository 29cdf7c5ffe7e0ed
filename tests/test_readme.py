"""README.md and docs/ stay true: the model table (docs/models.md) is the registry's, the README starts with the install
and test commands and stays one screen, its results headline is the one ``odearch report`` generates, and CI builds the
docs strictly and runs every test. (The docs' code blocks themselves run as tests through Sybil: conftest.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datapaths import REPO
from doctext import DOC_FILES
from odearch.cli import models_markdown


@pytest.mark.slow
def test_model_table_is_generated_from_the_registry() -> None:
    text = (REPO / "docs" / "models.md").read_text()
    block = re.search(r"<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->", text, re.S)
    assert block, "docs/models.md lost its model-table markers"
    assert block.group(1) == models_markdown(), "run: python scripts/update_readme_models.py"


@pytest.mark.slow  # ~3 s: every run of the campaign summarised
def test_readme_results_headline_is_the_one_the_report_generates(tmp_path: Path) -> None:
    """The README's results headline is never typed: it is what ``odearch report results/campaign --probes
    results/probes --out docs/results.md --readme README.md`` writes from the run directories (here into a copy,
    without plots)."""
    from odearch.cli import main

    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    argv = ["report", str(REPO / "results" / "campaign"), "--out", str(tmp_path / "docs" / "results.md")]
    assert main([*argv, "--no-plots", "--readme", str(tmp_path / "README.md")]) == 0
    assert (tmp_path / "README.md").read_text() == (REPO / "README.md").read_text(), (
        "run: odearch report results/campaign --probes results/probes --out docs/results.md --readme README.md"
    )


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


def test_the_default_run_and_ci_deselect_nothing() -> None:
    """The README's plain ``pytest -q`` (CI's command) runs every test, slow ones and the docs' examples included."""
    import tomllib

    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m" not in pytest_options["addopts"].split() and "slow" not in pytest_options["addopts"]
    assert pytest_options["testpaths"] == ["tests", "README.md", "docs"]  # Sybil collects the docs (conftest.py)


def test_every_skip_of_a_doc_example_says_why() -> None:
    """Sybil runs a block after a bare ``<!-- skip: next -->`` as passed without running it: every skip directive of
    README.md and docs/ gives a reason (``"why"``, or ``if(condition, reason="why")``), reported by ``pytest -ra``."""
    for path in DOC_FILES:
        for line in path.read_text().splitlines():
            if re.match(r"\s*<!--+\s*skip\b", line) and not re.match(r"\s*<!--+\s*skip:\s*end\s*-->", line):
                assert re.search(r"""(\bnext|\bstart)\s+(["'].+["']|if\(.*reason=["'].+["']\))\s*-->""", line), (
                    f"{path.name}: a skip directive needs a reason: {line!r}"
                )


def test_version_changelog_and_citation_agree() -> None:
    """``odearch --version`` (the package's ``__version__``), pyproject.toml, CITATION.cff and CHANGELOG.md agree."""
    import tomllib

    import odearch

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert odearch.__version__ == version
    assert re.search(rf"^version: {re.escape(version)}$", (REPO / "CITATION.cff").read_text(), re.M)
    assert f"## [{version}]" in (REPO / "CHANGELOG.md").read_text()
