"""Triton kernels for the aot ops (the CUDA implementation of torch.ops.aot.*).

Importing this package never fails: HAS_TRITON says whether triton imported, TRITON_ERROR why
not. `register()` makes the Triton launchers the CUDA kernels of the ops defined in
csrc/schemas.cpp (so autograd, fake kernels and torch.compile work as on CPU). With
TRITON_INTERPRET=1 the same launchers run on CPU tensors (backend="triton"), which is how CI
tests them without a GPU; `python -m aot_kernels.gpu.compile_check` compiles them for real.

Every call (`_guarded`):
- runs under its inputs' device, on that device's current stream (Triton launches on the
  current device); inputs on different devices are a ValueError naming them;
- float64 is computed in float64 by the torch backend (the kernels compute in fp32, or TF32
  for float32 where the user allowed it);
- a kernel that fails to compile or launch never crashes a user: the call warns once (naming
  the kernel and the cause) and is served by the torch backend, and the failure is remembered
  (per kernel configuration and device, and per call signature), so later calls go straight
  to the fallback. AOT_KERNELS_STRICT=1 raises instead;
- never falls back on an asynchronous CUDA error (the context is unusable: CudaContextError),
  nor inside a CUDA-graph capture (the torch fallback may synchronise): those raise.
"""
from __future__ import annotations

import inspect
import warnings

import torch

from ..ops import backends, composite
from .common import (CudaContextError, KernelError, capturing, device_guard,  # noqa: F401
                     sticky_cuda_error, strict)

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
_warned = set()
# Call signatures (op, shapes, dtypes, device, options) whose kernels failed: served by the
# fallback at once, with no launch at all.
_failed_calls = {}
_FAILED_CALLS_MAX = 256


def _one_device(op: str, names, args) -> torch.device:
    """The device of every tensor argument (ValueError naming two that differ)."""
    tensors = [(n, a) for n, a in zip(names, args) if isinstance(a, torch.Tensor)]
    first_name, first = tensors[0]
    for name, t in tensors[1:]:
        if t.device != first.device:
            raise ValueError(f"aot::{op}: {first_name} is on {first.device} but {name} is on "
                             f"{t.device}; put every tensor argument on one device")
    return first.device


def _signature(op: str, args) -> tuple:
    return (op,) + tuple((str(a.dtype), tuple(a.shape), str(a.device))
                         if isinstance(a, torch.Tensor) else a for a in args)


def _fallback(op: str, fallback, args, error: KernelError):
    if strict():
        raise error
    if capturing():
        raise RuntimeError(
            f"aot_kernels: aot::{op} cannot run inside a CUDA-graph capture: {error}. The torch "
            "fallback is not tried during a capture (it may synchronise, which breaks it); "
            "capture with backend='torch', or on a GPU where the kernel runs") from error
    key = (error.kernel, type(error.cause).__name__)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"aot_kernels: {error}; this call (and any like it) runs on the torch "
                      "backend instead. Set AOT_KERNELS_STRICT=1 to raise.",
                      RuntimeWarning, stacklevel=4)
    return fallback(*args)


def _guarded(op: str, launcher, fallback, names, *args):
    """launcher(*args) under the inputs' device, or fallback(*args) (module docstring)."""
    device = _one_device(op, names, args)
    if any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args):
        return fallback(*args)  # float64 in float64: the kernels have no fp64 path
    call = _signature(op, args)
    with device_guard(device):
        failed = _failed_calls.get(call)
        if failed is not None:
            return _fallback(op, fallback, args, failed)
        try:
            return launcher(*args)
        except KernelError as exc:
            if len(_failed_calls) >= _FAILED_CALLS_MAX:
                _failed_calls.clear()
            _failed_calls[call] = exc
            return _fallback(op, fallback, args, exc)
        except CudaContextError:
            raise
        except RuntimeError as exc:  # torch's own CUDA calls in the launcher
            if sticky_cuda_error(exc):
                raise CudaContextError(f"aot::{op} (Triton)", exc) from exc
            raise


def cosine_cost(x, y, x_pos=None, y_pos=None, spatial=0.0):
    return _guarded("cosine_cost", _cost_mod.cost_with_spatial, composite.cosine_cost_op,
                    _NAMES["cosine_cost"], x, y, x_pos, y_pos, spatial)


def sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol, stop="marginal"):
    return _guarded("sinkhorn", _sinkhorn_mod.sinkhorn, composite.sinkhorn_op, _NAMES["sinkhorn"],
                    cost, anchor_weight, source_weight, eps, max_iter, tol, stop)


def sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps, lam, max_iter, tol,
                       tau=None, keep=None, anchor_pos=None, source_pos=None, spatial=0.0,
                       stop="marginal", nn_blend=0.0, keep_quantile=None, shift_min=False):
    return _guarded("sinkhorn_aggregate", _sinkhorn_mod.sinkhorn_aggregate,
                    composite.sinkhorn_aggregate, _NAMES["sinkhorn_aggregate"], anchors,
                    sources, anchor_weight, source_weight, eps, lam, max_iter, tol, tau, keep,
                    anchor_pos, source_pos, spatial, stop, nn_blend, keep_quantile, shift_min)


def clip_aggregate(frames, lengths, sizes, anchor_weight=None, eps=0.1, lam=1.0, max_iter=100,
                   tol=0.0, tau=None, keep=None):
    return _guarded("clip_aggregate", _sinkhorn_mod.clip_aggregate, composite.clip_aggregate,
                    _NAMES["clip_aggregate"], frames, lengths, sizes, anchor_weight, eps, lam,
                    max_iter, tol, tau, keep)


# Argument names of each op (its schema's), for the device error.
_NAMES = {f.__name__: tuple(inspect.signature(f).parameters)
          for f in (cosine_cost, sinkhorn, sinkhorn_aggregate, clip_aggregate)}


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
