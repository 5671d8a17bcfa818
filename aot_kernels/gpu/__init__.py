"""Triton kernels for the aot ops (the CUDA implementation of torch.ops.aot.*).

Importing this package never fails: HAS_TRITON says whether triton imported, TRITON_ERROR why
not. `register()` makes the Triton launchers the CUDA kernels of the ops defined in
csrc/schemas.cpp (so autograd, fake kernels and torch.compile work as on CPU). With
TRITON_INTERPRET=1 the same launchers run on CPU tensors (backend="triton"), which is how CI
tests them without a GPU.
"""
from __future__ import annotations

try:
    import triton  # noqa: F401

    from . import cost_kernels as _cost_mod
    from . import sinkhorn_kernels as _sinkhorn_mod
    from .common import interpreting

    HAS_TRITON = True
    TRITON_ERROR = None
except Exception as exc:  # ImportError, or a triton that cannot initialise here
    HAS_TRITON = False
    TRITON_ERROR = f"{type(exc).__name__}: {exc}"

    def interpreting() -> bool:
        return False

_registered = False


def cosine_cost(x, y):
    return _cost_mod.cosine_cost(x, y)


def sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol):
    return _sinkhorn_mod.sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol)


def sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps, lam, max_iter, tol,
                       tau=None, keep=None):
    return _sinkhorn_mod.sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps,
                                            lam, max_iter, tol, tau, keep)


def clip_aggregate(frames, lengths, sizes, anchor_weight, eps, lam, max_iter, tol, tau, keep):
    return _sinkhorn_mod.clip_aggregate(frames, lengths, sizes, anchor_weight, eps, lam, max_iter,
                                        tol, tau, keep)


def register() -> bool:
    """Register the launchers as the ops' CUDA kernels (once). False when triton is missing or
    the op schemas are (no compiled extension)."""
    global _registered
    if _registered:
        return True
    from ..ops import HAS_EXTENSION

    if not (HAS_TRITON and HAS_EXTENSION):
        return False
    import torch

    torch.library.register_kernel("aot::cosine_cost", "cuda", cosine_cost)
    torch.library.register_kernel("aot::sinkhorn", "cuda", sinkhorn)
    torch.library.register_kernel("aot::sinkhorn_aggregate", "cuda", sinkhorn_aggregate)
    _registered = True
    return True
