"""The aot op family (torch.ops.aot.*; schemas once in csrc/schemas.cpp) and its Python API.

    api           cosine_cost, sinkhorn, sinkhorn_aggregate, clip_aggregate: validation and
                  backend dispatch ("cpp", "triton", "torch", "auto"), result types
    library       loads the compiled extension (aot_kernels.ops._C), registers fake kernels
                  and autograd on the ops
    composite     the torch backend: each op in plain PyTorch (also the autograd replay)
    implicit_grad the Sinkhorn fixed point differentiated implicitly
    validate      argument checks shared by every layer above
    backends      where aot_kernels.gpu (the Triton launchers) plugs in

The lowest layer of the package: nothing here imports from aot_kernels outside aot_kernels.ops.
"""
from .api import (AggregateResult, ClipResult, SinkhornResult, clip_aggregate, cosine_cost,
                  sinkhorn, sinkhorn_aggregate)
from .library import EXTENSION_ERROR, HAS_EXTENSION

__all__ = ["AggregateResult", "ClipResult", "SinkhornResult", "clip_aggregate", "cosine_cost",
           "sinkhorn", "sinkhorn_aggregate", "EXTENSION_ERROR", "HAS_EXTENSION"]
