"""Public functions: cosine_cost, sinkhorn, sinkhorn_aggregate (SPEC §1-3, §5)."""
from __future__ import annotations

import functools
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
        f, g, iterations, error = composite.sinkhorn_op(*args)
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


class ClipResult(NamedTuple):
    """anchors [C,M,D]: each clip's anchors after absorbing its frames. sizes [C,M]: original
    tokens each anchor stands for. kept [C,L,M] bool: dynamic tokens of each frame (frame 0 and
    frames past a clip's length: False). confidence [C,L,M]: q_i of each frame's tokens."""
    anchors: torch.Tensor
    sizes: torch.Tensor
    kept: torch.Tensor
    confidence: torch.Tensor


def _clip_inputs(frames, lengths, sizes, anchor_weight, keep, tau):
    validate.features(frames, "frames", rank=4, what="[C, L, M, D]")
    c, length, m, d = frames.shape
    if min(c, length, m, d) == 0:
        raise ValueError(f"frames is empty: shape {list(frames.shape)}")
    validate.finite(frames, "frames")
    dev = frames.device
    lengths = torch.full((c,), length, dtype=torch.int64, device=dev) if lengths is None else \
        torch.as_tensor(lengths, device=dev)
    if lengths.shape != (c,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be {c} integers, got {lengths.dtype} of shape {list(lengths.shape)}")
    if bool(((lengths < 1) | (lengths > length)).any()):
        raise ValueError(f"lengths must be in [1, L={length}], got {lengths.tolist()}")
    sdt = torch.float64 if frames.dtype == torch.float64 else torch.float32
    if sizes is None:
        sizes = torch.ones(c, length, m, dtype=sdt, device=dev)
    else:
        validate.features(sizes, "sizes", rank=3, what=f"[C={c}, L={length}, M={m}]")
        if sizes.shape != (c, length, m):
            raise ValueError(f"sizes must have shape [{c}, {length}, {m}], got {list(sizes.shape)}")
        validate.finite(sizes, "sizes")
    validate.weight(anchor_weight, "anchor_weight", c, m, dev)
    if tau is not None and keep is not None:
        raise ValueError("give tau (threshold mode) or keep (keep-count mode), not both")
    if tau is None:
        keep = torch.zeros(c, length, dtype=torch.int64, device=dev) if keep is None else \
            torch.as_tensor(keep, device=dev)
        if keep.shape != (c, length) or keep.dtype.is_floating_point or keep.dtype == torch.bool:
            raise ValueError(f"keep must be [C={c}, L={length}] integer counts, got {keep.dtype} "
                             f"of shape {list(keep.shape)}")
        if bool(((keep < 0) | (keep > m)).any()):
            raise ValueError(f"keep counts must be in [0, M={m}]")
    return lengths, sizes, keep


def clip_aggregate(frames: torch.Tensor, lengths=None, sizes: Optional[torch.Tensor] = None, *,
                   anchor_weight: Optional[torch.Tensor] = None, eps: float = 0.1,
                   lam: float = 1.0, max_iter: int = 100, tol: float = 0.0,
                   tau: Optional[float] = None, keep=None, backend: str = "auto") -> ClipResult:
    """Inter-frame aggregation of whole clips (SPEC §5): all clips at once, frames in order.

    frames [C,L,M,D]: each clip's intra-frame tokens, frame 0 being its anchors; clip c uses its
    first lengths[c] frames (default all L; the rest is padding, never read). sizes [C,L,M]:
    original tokens each token stands for (default 1). anchor_weight [C,M]: anchor marginals
    (default uniform probabilities); each frame's M tokens share the same total uniformly. At
    step l the anchors absorb frame l: tokens with confidence below `tau`, or the keep[c, l]
    lowest (keep: [C,L] counts), stay dynamic; the rest are merged with weights p_ij (lam).
    Neither tau nor keep: every token is merged. On "triton" each step is one batched set of
    kernels over all clips (no host synchronisation); otherwise each step is one batched
    sinkhorn_aggregate call per group of clips sharing a keep count. Not differentiable.
    """
    lengths, sizes, keep = _clip_inputs(frames, lengths, sizes, anchor_weight, keep, tau)
    validate.solver(eps, max_iter, tol)
    validate.aggregation(lam, tau, None, None, 1)
    chosen = _resolve(backend, frames.device)
    args = (frames, lengths, sizes, anchor_weight, eps, lam, max_iter, tol, tau, keep)
    if chosen == "triton" and frames.dtype != torch.float64:
        return ClipResult(*gpu.clip_aggregate(*args, fallback=functools.partial(
            _clip_steps, backend="torch")))
    return ClipResult(*_clip_steps(*args, backend=chosen))


def _clip_steps(frames, lengths, sizes, anchor_weight, eps, lam, max_iter, tol, tau, keep,
                backend):
    """clip_aggregate as one batched sinkhorn_aggregate call per step and keep count."""
    c, length, m, _ = frames.shape
    anchors, anchor_sizes = frames[:, 0].clone(), sizes[:, 0].clone()
    kept = torch.zeros(c, length, m, dtype=torch.bool, device=frames.device)
    confidence = torch.zeros(c, length, m, dtype=frames.dtype, device=frames.device)
    steps = lengths.tolist()
    counts = None if keep is None else keep.tolist()
    for step in range(1, length):
        groups = {}
        for k in range(c):
            if step < steps[k]:
                groups.setdefault(None if counts is None else counts[k][step], []).append(k)
        for count, members in groups.items():
            idx = torch.tensor(members, device=frames.device)
            out = sinkhorn_aggregate(anchors[idx], frames[idx, step],
                                     anchor_weight=None if anchor_weight is None else anchor_weight[idx],
                                     eps=eps, lam=lam, max_iter=max_iter, tol=tol, tau=tau,
                                     keep=count, return_plan=True, backend=backend)
            plan = out.plan.to(anchor_sizes.dtype)
            p_ij = plan / plan.sum(1, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
            stable = torch.where(out.kept, 0.0, sizes[idx, step])
            anchor_sizes[idx] += torch.bmm(p_ij, stable.unsqueeze(2)).squeeze(2)
            anchors[idx] = out.tokens
            kept[idx, step] = out.kept
            confidence[idx, step] = out.confidence
    return anchors, anchor_sizes, kept, confidence
