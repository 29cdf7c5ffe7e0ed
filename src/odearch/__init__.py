"""odearch: deep residual networks as numerical discretisations of ODEs (Lu, Zhong, Li, Dong, ICML 2018).

    >>> import odearch, torch
    >>> model = odearch.create_model("lm_resnet56", num_classes=10)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])

Layers, arrows pointing down only: ``schemes`` (data) -> ``nn`` (Stage, blocks) -> ``models`` (registry).
"""

import importlib
import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import schemes
from .schemes import SCHEMES, ButcherTableau, LinearMultistep, get_scheme

if TYPE_CHECKING:
    from .convert import from_lm, to_lm
    from .mesh import coarsen, refine
    from .models import create_model, list_models, list_pretrained, register_model
    from .nn import Stage, lm_coefficients, set_memory

__version__ = "0.1.0"

# The names that need torch are imported on first use, so that `odearch --help` answers without importing it.
_LAZY = {
    "from_lm": "convert",
    "to_lm": "convert",
    "coarsen": "mesh",
    "refine": "mesh",
    "create_model": "models",
    "list_models": "models",
    "list_pretrained": "models",
    "register_model": "models",
    "Stage": "nn",
    "lm_coefficients": "nn",
    "set_memory": "nn",
}
_SUBMODULES = (
    "analysis",
    "arms",
    "cli",
    "convert",
    "data",
    "mesh",
    "models",
    "nn",
    "report",
    "runfiles",
    "timm_models",
    "train",
)


def __getattr__(name: str) -> Any:
    """``odearch.create_model`` and the other torch-dependent names, and the submodules, imported on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _TimmHook(importlib.abc.MetaPathFinder):
    """Imports :mod:`odearch.timm_models` (and torch) only when timm is imported, handing over to its import hook."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """None but for timm: its spec from the hook that registers odearch's models once timm is imported."""
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        from .timm_models import register_timm_on_import

        register_timm_on_import()  # timm is being imported, not yet in sys.modules: this installs its hook
        hook = next((f for f in sys.meta_path if type(f).__name__ == "_RegisterOnImport"), None)
        return hook.find_spec(fullname, path, target) if hook is not None else None


# odearch's models in timm's registry as odearch_<name>, now or once timm is imported
if "timm" in sys.modules:
    from .timm_models import register_timm_on_import

    register_timm_on_import()
elif not any(isinstance(f, _TimmHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TimmHook())

__all__ = [
    "SCHEMES",
    "ButcherTableau",
    "LinearMultistep",
    "Stage",
    "coarsen",
    "create_model",
    "from_lm",
    "get_scheme",
    "list_models",
    "list_pretrained",
    "lm_coefficients",
    "refine",
    "register_model",
    "schemes",
    "set_memory",
    "to_lm",
]
