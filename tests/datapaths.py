"""Where the tests find the real CIFAR-10 (official python format): the first candidate holding it.

1. ``$ODEARCH_TEST_DATA``; 2. ``<repo>/../shared/data`` (a checkout beside the shared data folder);
3. ``/work/shared/data`` (the development machine, for clones made elsewhere, e.g. by CI). Tests that need real
images skip with the list of places looked at when none holds ``cifar-10-batches-py/data_batch_1``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [Path(p) for p in (os.environ.get("ODEARCH_TEST_DATA"),) if p] + [
    REPO.parent / "shared" / "data",
    Path("/work/shared/data"),
]


def find_cifar_root() -> Path:
    """The first candidate with CIFAR-10 in it, else the first candidate (tests then skip)."""
    for root in CANDIDATES:
        if (root / "cifar-10-batches-py" / "data_batch_1").is_file():
            return root
    return CANDIDATES[0]


CIFAR_ROOT = find_cifar_root()
HAS_CIFAR = (CIFAR_ROOT / "cifar-10-batches-py" / "data_batch_1").is_file()
SKIP_REASON = "real CIFAR-10 not found in any of: " + ", ".join(map(str, CANDIDATES)) + " (set ODEARCH_TEST_DATA)"
