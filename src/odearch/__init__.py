"""odearch: deep residual networks as numerical discretisations of ODEs (Lu, Zhong, Li, Dong, ICML 2018).

    >>> import odearch, torch
    >>> model = odearch.create_model("lm_resnet56", num_classes=10)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])

Layers, arrows pointing down only: ``schemes`` (data) -> ``nn`` (Stage, blocks) -> ``models`` (registry).
"""

import sys

from . import schemes
from .convert import from_lm, to_lm
from .mesh import coarsen, refine
from .models import create_model, list_models, list_pretrained, register_model
from .nn import Stage, lm_coefficients, set_memory
from .schemes import SCHEMES, ButcherTableau, LinearMultistep, get_scheme

__version__ = "0.1.0"

if "timm" in sys.modules:  # timm imported first: odearch's models appear in its registry as odearch_<name>
    from .timm_models import register_timm

    register_timm()

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
