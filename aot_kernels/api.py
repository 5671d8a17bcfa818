"""Public functions: cosine_cost, sinkhorn, sinkhorn_aggregate (SPEC §1-3, §5)."""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch

from . import composite, gpu, ops, validate

_warned_fallback = False


def _resolve(backend: str, device: torch.device) -> str:
    """"auto" -> "cpp" for CPU tensors when the extension is built, "triton" for CUDA tensors
    when triton is installed, else "torch"."""
    global _warned_fallback
    validate.backend(backend)
    if backend == "cpp":
        if not ops.HAS_EXTENSION:
            raise RuntimeError("backend='cpp' needs the compiled extension aot_kernels._C, which "
                               f"could not be loaded ({ops.EXTENSION_ERROR}); reinstall with "
                               "`pip install --no-build-isolation -e .` or use backend='torch'")
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        return "cpp"
    if backend == "triton":
        if not gpu.HAS_TRITON:
            raise RuntimeError(f"backend='triton' needs triton ({gpu.TRITON_ERROR}); "
                               "`pip install triton` or use backend='torch'")
        if device.type != "cuda" and not (device.type == "cpu" and gpu.interpreting()):
            raise ValueError(f"backend='triton' runs on CUDA tensors (or on CPU tensors with "
                             f"TRITON_INTERPRET=1), got tensors on {device}")
        return "triton"
    if backend == "auto":
        if device.type == "cpu" and ops.HAS_EXTENSION:
            return "cpp"
        if device.type == "cuda" and gpu.HAS_TRITON:
            return "triton"
        if device.type == "cpu" and not _warned_fallback:
            _warned_fallback = True
            warnings.warn("aot_kernels: compiled extension unavailable "
                          f"({ops.EXTENSION_ERROR}); using the slower 'torch' backend",
                          RuntimeWarning, stacklevel=3)
    return "torch"


def _through_op(device: torch.device) -> bool:
    """Triton on CUDA goes through torch.ops.aot.* (autograd, fake kernels); on CPU under the
    interpreter, or without the op schemas, the launchers are called directly (no autograd)."""
    return device.type == "cuda" and gpu.register()


class SinkhornResult(NamedTuple):
    """f [B,M], g [B,N]: log potentials (-inf on padding, cost units). iterations [B] int64.
    error [B]: final L1 row-marginal violation. plan [B,M,N] or None (rows anchors)."""
    f: torch.Tensor
    g: torch.Tensor
    iterations: torch.Tensor
    error: torch.Tensor
    plan: Optional[torch.Tensor]


class AggregateResult(NamedTuple):
    """tokens [B,M,D]: aggregated anchors. mass [B,M]: weight each anchor received (plan rows in
    intra mode; sum of p over merged sources in inter mode). confidence [B,N]: q_i = max_j p_ij.
    kept [B,N] bool: dynamic sources left as they are (inter mode; all False in intra mode).
    distance [B]: sum T*C. iterations [B] int64. f, g, error as in SinkhornResult.
    plan [B,M,N] or None."""
    tokens: torch.Tensor
    mass: torch.Tensor
    confidence: torch.Tensor
    kept: torch.Tensor
    distance: torch.Tensor
    iterations: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    error: torch.Tensor
    plan: Optional[torch.Tensor]


def _plan(cost, f, g, eps):
    """Plan in the potentials' (= the caller's) dtype, computed in the compute dtype."""
    cd = composite.compute_dtype(f.dtype)
    return composite.plan(cost.to(cd), f.to(cd), g.to(cd), eps).to(f.dtype)


def cosine_cost(x: torch.Tensor, y: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Cosine cost C [B,M,N] = 1 - cos(x_j, y_i), in [0, 2] (SPEC §1).

    x: anchors [B,M,D]; y: sources [B,N,D]; same dtype and device. fp16/bf16 are accumulated in
    fp32; the result has the input dtype. A zero vector has cost 1 to everything.
    """
    validate.pair(x, y, "x", "y")
    chosen = _resolve(backend, x.device)
    if chosen == "cpp" or (chosen == "triton" and _through_op(x.device)):
        return torch.ops.aot.cosine_cost(x, y)
    if chosen == "triton":
        return gpu.cosine_cost(x, y)
    return composite.cosine_cost(x, y).to(x.dtype)


def sinkhorn(cost: torch.Tensor, anchor_weight: Optional[torch.Tensor] = None,
             source_weight: Optional[torch.Tensor] = None, *, eps: float = 0.1,
             max_iter: int = 100, tol: float = 0.0, return_plan: bool = False,
             backend: str = "auto") -> SinkhornResult:
    """Entropic OT between anchors (rows) and sources (columns), log-domain Sinkhorn (SPEC §2).

    cost [B,M,N] (cost units, e.g. cosine_cost). anchor_weight [B,M], source_weight [B,N]:
    non-negative masses, uniform probabilities when None; zero = padding (that row/column of the
    plan is exactly 0); sources are rescaled to the anchors' total. eps: entropic regularisation
    in cost units. Stops a problem when its L1 row-marginal error < tol (tol = 0: exactly
    max_iter iterations). The plan is T = exp((f + g - C)/eps), formed only if return_plan.
    Differentiable w.r.t. cost (implicitly, at the fixed point, on the compiled backend).
    """
    validate.cost(cost)
    b, m, n = cost.shape
    validate.weight(anchor_weight, "anchor_weight", b, m, cost.device)
    validate.weight(source_weight, "source_weight", b, n, cost.device)
    validate.solver(eps, max_iter, tol)
    chosen = _resolve(backend, cost.device)
    args = (cost, anchor_weight, source_weight, float(eps), int(max_iter), float(tol))
    if chosen == "cpp" or (chosen == "triton" and _through_op(cost.device)):
        f, g, iterations, error = torch.ops.aot.sinkhorn(*args)
    elif chosen == "triton":
        f, g, iterations, error = gpu.sinkhorn(*args)
    else:
        cd = composite.compute_dtype(cost.dtype)
        a, s = composite.marginals(anchor_weight, source_weight, b, m, n, cd, cost.device)
        f, g, iterations, error = composite.sinkhorn(cost.to(cd), a, s, eps, max_iter, tol)
        f, g, error = f.to(cost.dtype), g.to(cost.dtype), error.to(cost.dtype)
    return SinkhornResult(f, g, iterations, error, _plan(cost, f, g, eps) if return_plan else None)


def sinkhorn_aggregate(anchors: torch.Tensor, sources: torch.Tensor, *,
                       anchor_weight: Optional[torch.Tensor] = None,
                       source_weight: Optional[torch.Tensor] = None, eps: float = 0.1,
                       lam: float = 1.0, max_iter: int = 100, tol: float = 0.0,
                       tau: Optional[float] = None, keep: Optional[int] = None,
                       return_plan: bool = False, backend: str = "auto") -> AggregateResult:
    """Cosine cost + Sinkhorn + mass-normalised aggregation in one call.

    anchors [B,M,D], sources [B,N,D]; weights, eps, max_iter, tol as in `sinkhorn`.
    Intra mode (default, SPEC §3, Eq. 11): tokens_j = (x_j + lam sum_i T_ji y_i)/(1 + lam m_j).
    Inter mode (SPEC §5, Eq. 13-16) with a threshold `tau` in [0, 1] or a count `keep`: sources
    with confidence q_i = max_j T_ji / sum_j' T_j'i below tau, or the `keep` lowest (ties to the
    lower index), are kept as they are (`kept`); the others are merged with weights p_ij.
    Returns an AggregateResult; `plan` [B,M,N] (rows anchors) only with return_plan=True.
    Differentiable w.r.t. anchors and sources (tokens, mass, confidence, distance, f, g).
    """
    validate.pair(anchors, sources, "anchors", "sources")
    b, m, _ = anchors.shape
    n = sources.shape[1]
    validate.weight(anchor_weight, "anchor_weight", b, m, anchors.device)
    validate.weight(source_weight, "source_weight", b, n, anchors.device)
    validate.solver(eps, max_iter, tol)
    validate.aggregation(lam, tau, keep, source_weight, n)
    args = (anchors, sources, anchor_weight, source_weight, float(eps), float(lam),
            int(max_iter), float(tol), None if tau is None else float(tau),
            None if keep is None else int(keep))
    chosen = _resolve(backend, anchors.device)
    if chosen == "cpp" or (chosen == "triton" and _through_op(anchors.device)):
        out = torch.ops.aot.sinkhorn_aggregate(*args)
    elif chosen == "triton":
        out = gpu.sinkhorn_aggregate(*args)
    else:
        out = composite.sinkhorn_aggregate(*args)
    transport = None
    if return_plan:
        transport = _plan(composite.cosine_cost(anchors, sources), out[6], out[7], eps)
    return AggregateResult(*out, transport)
