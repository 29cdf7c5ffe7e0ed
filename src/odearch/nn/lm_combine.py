"""The LM combine's fast path: the velocity form of the LM update and its hand-written backward (one job).

The LM step u_{n+1} = (1 - k_n) u_n + k_n u_{n-1} + r_n, r_n = (eta_n / p_n) f_n(u_n), written with the velocity
v_n = u_n - u_{n-1}:

    v_{n+1} = r_n - k_n v_n,    u_{n+1} = u_n + v_{n+1}

the same update in fewer passes over the state. :class:`odearch.nn.stage.LMRunner` runs it by default (``fused``);
its ``run_reference`` is the update as the paper writes it, and ``tests/test_stage.py`` checks that both agree in
float64 (outputs, history, every gradient, dk included) to 1e-12. Why keep it: ``benchmarks/lm_combine.py`` times
the two forms of the combine on CPU, and ``benchmarks/lm_step.py`` the whole LM training step against its plain twin
(results/README.md, "Velocity form").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LMVelocity", "lm_dk"]


def _flat(t: Tensor) -> Tensor | None:
    """A 1-D view of a dense tensor in its memory order (row-major or channels_last), or None (one view op)."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.as_strided((t.numel(),), (1,))  # dense from its storage offset on: its elements in memory order
    return None


def lm_dk(t: Tensor, v: Tensor, k: Tensor, dtype: torch.dtype) -> Tensor:
    """dk = -sum of t v over the dimensions k broadcasts along, in k's shape and in ``dtype`` (k's own dtype: the
    float32 parameter, also where ``k`` is its autocast copy; t: the gradient of v_{n+1} = r - k v_n, v: the
    velocity v_n).

    Accumulated in float32 or better. float32 / float64 states: one BLAS dot <t, v>. bfloat16 / float16 states
    (autocast): the products t v in their dtype, summed per sample (torch accumulates a reduced-precision sum in
    float32 and rounds it once), the per-sample sums added in float32; each rounding is at most 2^-9 of a sum of
    |t v| terms, as the rounding of the products themselves, so dk stays within 2^-8 sum |t v| of the exact sum
    of the products. ``sum(dtype=float32)`` would first copy its whole input to float32 (an extra pass); a bf16
    ``torch.dot`` is slow on CPU and rounds the whole sum to bf16. The velocity is the tensor the forward pass
    multiplied by k: no difference of two nearly equal states is formed. Under ``torch.compile`` the same sum is
    written functionally: inductor fuses it.
    """
    acc = torch.promote_types(t.dtype, torch.float32)
    compiling = torch.compiler.is_compiling()
    if k.dim() == 0 and not compiling and t.stride() == v.stride():
        ft, fv = _flat(t), _flat(v)  # 1-D: summing a channels_last tensor over all four dims is 4x slower
        if ft is not None and fv is not None:
            if t.dtype == acc:
                return torch.dot(ft, fv).neg_().to(dtype)
            rows = t.shape[0] if t.dim() > 1 else 1
            return torch.mul(ft, fv).view(rows, -1).sum(1).sum(dtype=acc).neg_().to(dtype)
    lead = t.dim() - k.dim()
    dims = [i for i in range(t.dim()) if i < lead or k.shape[i - lead] == 1]
    prod = (t * v).sum(dims, dtype=acc)
    return (prod.neg() if compiling else prod.neg_()).view(k.shape).to(dtype)


class LMVelocity(torch.autograd.Function):
    """v_{n+1} = r - k v_n: the LM update in velocity form, with v_n = u_n - u_{n-1} and r = (eta_n / p_n) f_n(u_n).

    u_{n+1} = (1 - k) u_n + k u_{n-1} + r = u_n + v_{n+1}, so a step is this one fused multiply-add and one
    addition. ``k`` keeps its own dtype (the float32 parameter under autocast); the update runs in the states'
    dtype. Backward: dr = t, dv = -k t, dk = -sum t v accumulated in float32 or better, returned in k's dtype
    (:func:`lm_dk`). Against the two-state form (1 - k) u_n + k u_{n-1}, whose backward forms g (1 - k), g k,
    u_{n-1} - u_n and sums three gradients into every u_n, the backward makes 7 extra passes over the state
    instead of 12 (measured: ``benchmarks/lm_combine.py``, results/README.md "Velocity form").
    """

    @staticmethod
    def forward(ctx: Any, r: Tensor | None, v: Tensor, k: Tensor) -> Tensor:
        kc = k.to(v.dtype)  # no copy when the dtypes agree (fp32); cast once, kept for the backward (autocast)
        ctx.save_for_backward(v, kc)
        ctx.has_r, ctx.k_dtype = r is not None, k.dtype
        return torch.mul(v, kc.neg()) if r is None else torch.addcmul(r, v, kc, value=-1.0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, t: Tensor) -> tuple[Tensor | None, ...]:
        v, kc = ctx.saved_tensors
        need_r, need_v, need_k = ctx.needs_input_grad
        grad_k = lm_dk(t, v, kc, ctx.k_dtype) if need_k else None
        grad_v = torch.mul(t, kc.neg()) if need_v else None
        return (t if need_r and ctx.has_r else None), grad_v, grad_k
