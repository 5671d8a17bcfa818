"""aot_kernels: anchors + optimal transport (AOT) visual-token reduction for video LLMs.

Ops (torch.ops.aot.*, schemas in csrc/schemas.cpp) and their Python API:

    cosine_cost(x [B,M,D], y [B,N,D]) -> C [B,M,N]
    sinkhorn(C, anchor_weight=None, source_weight=None, *, eps, max_iter, tol, ...)
    sinkhorn_aggregate(anchors, sources, *, eps, lam, max_iter, tol, tau, keep, ...)
    clip_aggregate(frames [C,L,M,D], lengths, sizes, *, tau | keep, ...)   (SPEC §5, whole clips)

Backends: "cpp" (compiled CPU kernels), "triton" (CUDA; CPU under TRITON_INTERPRET=1), "torch"
(plain PyTorch), "auto" (cpp on CPU when built, triton on CUDA when installed).
Layers, bottom to top (each imports only those below; tests/test_layers.py): ops, gpu,
reducers, eval, integrations, then this package, the CLI (__main__) and the demo.
The contract is SPEC.md; reference/ holds the float64 NumPy reference that judges every backend.
"""
import torch as _torch

from .ops import (EXTENSION_ERROR, HAS_EXTENSION, AggregateResult, ClipResult, SinkhornResult,
                  clip_aggregate, cosine_cost, sinkhorn, sinkhorn_aggregate)
from . import gpu  # plugs the Triton launchers into the op API (ops/backends.py)
from .reducers import clips
from .reducers.aot import AOTReducer
from .reducers.authors import AuthorsAOTReducer
from .reducers.selection import Anchors, select_anchors
from .reducers.video import ReducedVideo
from .eval import flops

if _torch.cuda.is_available():  # Triton kernels become the ops' CUDA implementation
    gpu.register()

__version__ = "0.1.0"

# Submodules reachable as attributes (`aot_kernels.reducers.build(...)`, `aot_kernels.metrics`)
# but imported on first use (PEP 562), so `import aot_kernels` pulls in no optional dependency
# (transformers, matplotlib). Name -> module.
_LAZY_SUBMODULES = {"metrics": ".eval.metrics", "compare": ".eval.compare",
                    "integrations": ".integrations", "demo": ".demo"}


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(_LAZY_SUBMODULES[name], __name__)
        globals()[name] = module  # later lookups skip __getattr__
        return module
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
