"""aot_kernels: anchors + optimal transport (AOT) visual-token reduction for video LLMs.

Ops (torch.ops.aot.*, schemas in csrc/schemas.cpp) and their Python API:

    cosine_cost(x [B,M,D], y [B,N,D]) -> C [B,M,N]
    sinkhorn(C, anchor_weight=None, source_weight=None, *, eps, max_iter, tol, ...)
    sinkhorn_aggregate(anchors, sources, *, eps, lam, max_iter, tol, tau, keep, ...)
    clip_aggregate(frames [C,L,M,D], lengths, sizes, *, tau | keep, ...)   (SPEC §5, whole clips)

Backends: "cpp" (compiled CPU kernels), "triton" (CUDA; CPU under TRITON_INTERPRET=1), "torch"
(plain PyTorch), "auto" (cpp on CPU when built, triton on CUDA when installed).
The contract is SPEC.md; reference/ holds the float64 NumPy reference that judges every backend.
"""
from . import clips, flops
from .api import (AggregateResult, ClipResult, SinkhornResult, clip_aggregate, cosine_cost,
                  sinkhorn, sinkhorn_aggregate)
from .ops import EXTENSION_ERROR, HAS_EXTENSION
from .authors import AuthorsAOTReducer
from .reducer import AOTReducer
from .selection import Anchors, select_anchors
from .video import ReducedVideo

import torch as _torch

from . import gpu

if _torch.cuda.is_available():  # Triton kernels become the ops' CUDA implementation
    gpu.register()

__version__ = "0.1.0"

# Submodules reachable as attributes (`aot_kernels.reducers.build(...)`) but imported on first
# use (PEP 562), so `import aot_kernels` stays as fast as it is and pulls in no optional
# dependency (transformers, matplotlib).
_LAZY_SUBMODULES = ("reducers", "metrics", "integrations", "compare", "demo")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)  # also binds it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))

__all__ = [
    "AggregateResult", "SinkhornResult", "ClipResult", "cosine_cost", "sinkhorn",
    "sinkhorn_aggregate", "clip_aggregate",
    "Anchors", "select_anchors", "clips", "flops", "AOTReducer", "AuthorsAOTReducer",
    "ReducedVideo",
    "HAS_EXTENSION", "EXTENSION_ERROR", "__version__",
]
