"""Weights stored as autocast computes with them: what ``odearch ship`` writes for a run trained in bf16.

Under ``torch.autocast(dtype=torch.bfloat16)`` every convolution and linear layer casts its fp32 weight and bias to
bf16 before use (round to nearest even, as ``Tensor.to`` does); BatchNorm, the LM coefficients k_n and every other
tensor stay fp32. Storing exactly those tensors in bf16 therefore keeps everything that autocast sees: the net loaded
from the compact file computes bitwise the same logits under autocast as its fp32 master weights, in about half the
bytes (ResNet-20: 0.57 MB instead of 1.1 MB). Only the master weights' low mantissa bits, which the optimizer needs
to go on training and an fp32 evaluation reads, are dropped: evaluated in fp32 the compact net's logits differ
slightly from the master's. :func:`autocast_mismatches` is the check ``odearch ship`` runs on the test set before it
writes a compact file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["AUTOCAST_MODULES", "autocast_cast_names", "autocast_mismatches", "compact_state", "rounded_copy"]

AUTOCAST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # autocast runs them in its lower precision


def autocast_cast_names(model: nn.Module) -> set[str]:
    """``state_dict`` keys of the weights and biases of the convolutions and linear layers of ``model``."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, AUTOCAST_MODULES)
        for name, _ in module.named_parameters(recurse=False)
    }


def compact_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` on the CPU, dense, with :func:`autocast_cast_names` cast to ``dtype``."""
    cast = autocast_cast_names(model)
    return {
        k: (v.detach().to(dtype) if k in cast else v.detach()).contiguous().cpu() for k, v in model.state_dict().items()
    }


def rounded_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` holding what its compact file loads into it: the cast tensors rounded to ``dtype`` and
    back, the rest unchanged."""
    copied = copy.deepcopy(model)
    state = copied.state_dict()
    with torch.no_grad():
        for k in autocast_cast_names(copied):
            state[k].copy_(state[k].to(dtype))
    return copied


def autocast_mismatches(
    full: nn.Module, compact: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype
) -> tuple[int, int, int]:
    """(batches whose logits differ in any bit, correct, images) of ``compact`` against ``full``, both evaluated
    under CPU autocast to ``dtype`` on ``loader``: 0 mismatched batches is the claim a compact file makes."""
    full.eval()
    compact.eval()
    mismatched = correct = n = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        for x, y in loader:
            want, got = full(x), compact(x)
            mismatched += int(not torch.equal(want, got))
            correct += int((got.argmax(1) == y).sum())
            n += len(y)
    return mismatched, correct, n
