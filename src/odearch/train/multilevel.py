"""Multi-level training (``--refine-at E1 E2 ...``; Chang et al. 2018): train a shallow net, refine its mesh, go on.

After each listed epoch E the model becomes :func:`odearch.refine` of itself (every stage's mesh steps times
``refine_factor``, each of the matching fraction of the step), before epoch E + 1 trains. The SGD momentum buffers
follow their parameters through the same linear map as the weights (copies scaled like the copied layers, means like
the averaged ones; :class:`odearch.mesh.ParamMap`), so the update keeps its direction; the learning-rate schedule,
a function of the global step, goes on unchanged.

A run's mesh level is a function of where it stands (:func:`mesh_level`), so a resume rebuilds the model at the
level of its checkpoint before loading it; refinement draws no random numbers, so a run resumed across a
refinement repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

from torch import nn

from ..mesh import ParamMap, refine, remesh
from .config import TrainConfig

__all__ = ["carry_momentum", "mesh_level", "refine_times", "refined_model"]


def mesh_level(cfg: TrainConfig, epoch: int, batch: int) -> int:
    """Refinements done at this point of the run (``epoch`` finished epochs, ``batch`` batches into the next): one
    per ``refine_at`` epoch E < ``epoch``, and one for E = ``epoch`` once the next epoch has begun."""
    return sum(e < epoch or (e == epoch and batch > 0) for e in cfg.refine_at)


def refine_times(model: nn.Module, factor: int, times: int) -> nn.Module:
    """``model`` refined by ``factor`` ``times`` times (itself when ``times`` is 0)."""
    for _ in range(times):
        model = refine(model, factor)
    return model


def refined_model(model: nn.Module, factor: int) -> tuple[nn.Module, dict[nn.Parameter, ParamMap]]:
    """(``model`` refined once, the map of its parameters from ``model``'s)."""
    return remesh(model, factor, "refine")


def carry_momentum(
    old: dict[nn.Parameter, dict], new: dict[nn.Parameter, dict], maps: dict[nn.Parameter, ParamMap]
) -> int:
    """Sets each new parameter's ``momentum_buffer`` in the optimizer state ``new`` from its sources' in ``old``
    through the parameter map; returns how many were set (none before the first step, when SGD has no buffers)."""
    done = 0
    for param, m in maps.items():
        buffers = [old.get(src, {}).get("momentum_buffer") for src in m.sources]
        if buffers and all(b is not None for b in buffers):
            new[param] = {"momentum_buffer": m.combine(buffers)}
            done += 1
    return done
