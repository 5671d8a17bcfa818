"""Triton kernels for the aot ops (the CUDA implementation of torch.ops.aot.*).

Importing this package never fails: HAS_TRITON says whether triton imported, TRITON_ERROR why
not. `register()` makes the Triton launchers the CUDA kernels of the ops defined in
csrc/schemas.cpp (so autograd, fake kernels and torch.compile work as on CPU). With
TRITON_INTERPRET=1 the same launchers run on CPU tensors (backend="triton"), which is how CI
tests them without a GPU; `python -m aot_kernels.gpu.compile_check` compiles them for real.

A kernel that fails to compile or launch never crashes a user: the call warns once (naming the
kernel and the cause) and is served by the torch backend. AOT_KERNELS_STRICT=1 raises instead.
"""
from __future__ import annotations

import warnings

from ..ops import backends, composite

try:
    import triton  # noqa: F401

    from . import cost_kernels as _cost_mod
    from . import sinkhorn_kernels as _sinkhorn_mod
    from .common import KernelError, interpreting, strict  # noqa: F401 (KernelError: public)

    HAS_TRITON = True
    TRITON_ERROR = None
except Exception as exc:  # ImportError, or a triton that cannot initialise here
    HAS_TRITON = False
    TRITON_ERROR = f"{type(exc).__name__}: {exc}"

    def interpreting() -> bool:
        return False

_registered = False
_warned = set()


def _guarded(launcher, fallback, *args):
    """launcher(*args), or fallback(*args) with a one-time warning if a kernel fails."""
    try:
        return launcher(*args)
    except KernelError as exc:
        if strict():
            raise
        key = (exc.kernel, type(exc.cause).__name__)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"aot_kernels: {exc}; this call (and any like it) runs on the torch "
                          "backend instead. Set AOT_KERNELS_STRICT=1 to raise.",
                          RuntimeWarning, stacklevel=3)
        return fallback(*args)


def cosine_cost(x, y, x_pos=None, y_pos=None, spatial=0.0):
    return _guarded(_cost_mod.cost_with_spatial, composite.cosine_cost_op, x, y, x_pos, y_pos,
                    spatial)


def sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol, stop="marginal"):
    return _guarded(_sinkhorn_mod.sinkhorn, composite.sinkhorn_op, cost, anchor_weight,
                    source_weight, eps, max_iter, tol, stop)


def sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps, lam, max_iter, tol,
                       tau=None, keep=None, anchor_pos=None, source_pos=None, spatial=0.0,
                       stop="marginal", nn_blend=0.0, keep_quantile=None, shift_min=False):
    return _guarded(_sinkhorn_mod.sinkhorn_aggregate, composite.sinkhorn_aggregate, anchors,
                    sources, anchor_weight, source_weight, eps, lam, max_iter, tol, tau, keep,
                    anchor_pos, source_pos, spatial, stop, nn_blend, keep_quantile, shift_min)


def clip_aggregate(frames, lengths, sizes, anchor_weight=None, eps=0.1, lam=1.0, max_iter=100,
                   tol=0.0, tau=None, keep=None):
    return _guarded(_sinkhorn_mod.clip_aggregate, composite.clip_aggregate, frames, lengths,
                    sizes, anchor_weight, eps, lam, max_iter, tol, tau, keep)


def register() -> bool:
    """Register the launchers as the ops' CUDA kernels (once). False when triton is missing or
    the op schemas are (no compiled extension)."""
    global _registered
    if _registered:
        return True
    from ..ops.library import HAS_EXTENSION

    if not (HAS_TRITON and HAS_EXTENSION):
        return False
    import torch

    torch.library.register_kernel("aot::cosine_cost", "cuda", cosine_cost)
    torch.library.register_kernel("aot::sinkhorn", "cuda", sinkhorn)
    torch.library.register_kernel("aot::sinkhorn_aggregate", "cuda", sinkhorn_aggregate)
    torch.library.register_kernel("aot::clip_aggregate", "cuda", clip_aggregate)
    _registered = True
    return True


# The op API (a layer below) dispatches backend="triton" through this (ops/backends.py).
backends.set_triton(backends.TritonBackend(
    HAS_TRITON, TRITON_ERROR, interpreting, register,
    {"cosine_cost": cosine_cost, "sinkhorn": sinkhorn, "sinkhorn_aggregate": sinkhorn_aggregate,
     "clip_aggregate": clip_aggregate}))
