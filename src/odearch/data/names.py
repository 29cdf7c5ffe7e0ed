"""Data set names as the data set table spells them (one job, no imports: every data module may use it)."""

from __future__ import annotations

__all__ = ["canonical_name"]


def canonical_name(name: str) -> str:
    """A data set name as the table spells it: lower case, without ``-`` and ``_`` (``CIFAR-10`` -> ``cifar10``)."""
    return name.lower().replace("-", "").replace("_", "")
