"""torch.hub entry points: one per odearch model, e.g.

    model = torch.hub.load("path/to/odearch", "lm_resnet20", source="local", pretrained=False, num_classes=10)

Every name of ``odearch.list_models()`` is an entry; its keyword arguments are ``odearch.create_model``'s
(``pretrained``, ``num_classes`` (0: pooled features), ``features_only``, ``in_chans``, ``drop_path_rate``,
``scheme``, ``p_last``, ...). The clone's own ``src/`` is imported (no install needed).
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import odearch  # noqa: E402

dependencies = ["torch", "torchvision", "numpy", "safetensors"]


def _hub_entry(name):
    def entry(pretrained=False, **kwargs):
        return odearch.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = odearch.models.model_entrypoint(name).__doc__
    return entry


for _name in odearch.list_models():
    globals()[_name] = _hub_entry(_name)
