"""Where the tests find the real CIFAR-10 (official python format), never by a machine path.

``$ODEARCH_TEST_DATA``, else ``$ODEARCH_DATA`` (a folder set there is the only place looked at), else a ``shared/data``
folder beside the repository or beside one of its parent folders (``<repo>/../shared/data`` for a checkout next to the
shared data). Without it the tests that need real images skip, naming the places looked at; when CI runs (``$CI``
set) ``conftest.py`` stops the session with that line instead, so that a CI run cannot pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = Path("cifar-10-batches-py") / "data_batch_1"


def candidates(environ: Mapping[str, str] = os.environ, repo: Path = REPO) -> list[Path]:
    """The folders looked at, in order: the environment's, else ``shared/data`` beside the repository or an ancestor."""
    for var in ("ODEARCH_TEST_DATA", "ODEARCH_DATA"):
        if environ.get(var):
            return [Path(environ[var])]
    return [folder / "shared" / "data" for folder in repo.parents]


def find_cifar_root(environ: Mapping[str, str] = os.environ, repo: Path = REPO) -> Path | None:
    """The first candidate holding ``cifar-10-batches-py/data_batch_1``, else None."""
    return next((root for root in candidates(environ, repo) if (root / MARKER).is_file()), None)


FOUND = find_cifar_root()
HAS_CIFAR = FOUND is not None
CIFAR_ROOT = FOUND or candidates()[0]
SKIP_REASON = (
    "real CIFAR-10 not found in any of: "
    + ", ".join(map(str, candidates()))
    + " (set ODEARCH_TEST_DATA or ODEARCH_DATA to the folder holding cifar-10-batches-py/)"
)
