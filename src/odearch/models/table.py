"""The registry as a table: what ``odearch models`` prints and the model table of docs/models.md, and the model
keywords that the command line offers as flags (:data:`MODEL_OPTIONS`), each with the models that take it."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..nn import Stage
from ._pretrained import PretrainedError, list_pretrained
from ._registry import create_model, list_models, model_entrypoint, models_taking

__all__ = ["MODEL_OPTIONS", "model_table", "models_markdown", "option_help"]

# Model keywords offered as `odearch train` flags (any other one: --model-kw KEY=VALUE, or model_kwargs in YAML). All
# go into the config's model_kwargs; a model that does not take one refuses it, naming the models that do.
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "p_last": {"type": float, "help": "stochastic depth: survival probability of the last block (linear decay)"},
    "drop_mode": {"choices": ("batch", "sample"), "help": "stochastic depth: one draw per batch or per sample"},
    "noise_sigma": {"type": float, "help": "std of the Gaussian noise injected after each block in training"},
    "shake": {"type": bool, "help": "shake-shake residual functions"},
}


def option_help(option: str) -> str:
    """The help text of a :data:`MODEL_OPTIONS` keyword, naming the models that take it unless all of them do."""
    takers = models_taking(option)
    text = MODEL_OPTIONS[option]["help"]
    return text if len(takers) == len(list_models()) else f"{text} (only {', '.join(takers)})"


def model_table(pattern: str | None = None) -> list[dict[str, Any]]:
    """Name, parameter count (with the entry's own classifier: 10 classes for CIFAR models, 1000 for ImageNet
    ones), classes, family, scheme and shipped weights tags of every registered model (built on the meta device:
    no memory); a registry file that cannot be read lists no weights (``registry_problems`` says why)."""
    weights: dict[str, list[str]] = {}  # model -> tags of its shipped weights (create_model(..., pretrained=True))
    try:
        shipped = list_pretrained()
    except PretrainedError:
        shipped = []
    for full in shipped:
        weights.setdefault(full.partition(".")[0], []).append(full.partition(".")[2])
    rows = []
    for name in list_models(pattern):
        params, classes, family, scheme = _shape_of(name, model_entrypoint(name))
        row = {"name": name, "params": params, "classes": classes, "family": family, "scheme": scheme}
        rows.append(row | {"pretrained": weights.get(name, [])})
    return rows


@functools.cache
def _shape_of(name: str, entrypoint: Any) -> tuple[int, int | None, str, str]:
    """Parameter count, classes, family and schemes of registered model ``name`` built on the meta device: once per
    process and entry point (``odearch models``, docs and tests ask for the whole table several times)."""
    with torch.device("meta"):
        model = create_model(name)
    schemes = sorted({m.scheme.name for m in model.modules() if isinstance(m, Stage)})
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    params = sum(p.numel() for p in model.parameters())
    return (
        params,
        heads[-1].out_features if heads else None,
        entrypoint.__module__.rsplit(".", 1)[-1],
        ",".join(schemes),
    )


def models_markdown(pattern: str | None = None) -> str:
    """The model table as Markdown (docs/models.md's model table is this text, checked by tests/test_readme.py)."""
    lines = ["| model | params | classes | family | scheme |", "|---|--:|--:|---|---|"]
    for r in model_table(pattern):
        lines.append(f"| `{r['name']}` | {r['params']:,} | {r['classes']} | {r['family']} | {r['scheme']} |")
    return "\n".join(lines)
