"""odearch: deep residual networks as numerical discretisations of ODEs (Lu, Zhong, Li, Dong, ICML 2018).

    >>> import odearch, torch
    >>> model = odearch.create_model("lm_resnet56", num_classes=10)
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])

Layers, arrows pointing down only: ``schemes`` (data) -> ``nn`` (Stage, blocks) -> ``models`` (registry).
"""

from . import schemes
from .convert import from_lm, to_lm
from .models import create_model, list_models, register_model
from .nn import Stage, lm_coefficients, set_memory
from .schemes import SCHEMES, ButcherTableau, LinearMultistep, get_scheme

__version__ = "0.1.0"

__all__ = [
    "SCHEMES",
    "ButcherTableau",
    "LinearMultistep",
    "Stage",
    "create_model",
    "from_lm",
    "get_scheme",
    "list_models",
    "lm_coefficients",
    "register_model",
    "schemes",
    "set_memory",
    "to_lm",
]
