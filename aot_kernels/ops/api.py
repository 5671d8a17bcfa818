"""Public functions: cosine_cost, sinkhorn, sinkhorn_aggregate, clip_aggregate (SPEC §1-3, §5)."""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch

from . import backends, composite, library, validate

_warned_fallback = False


def _resolve(backend: str, device: torch.device) -> str:
    """"auto" -> "cpp" for CPU tensors when the extension is built, "triton" for CUDA tensors
    when triton is installed, else "torch"."""
    global _warned_fallback
    validate.backend(backend)
    if backend == "cpp":
        if not library.HAS_EXTENSION:
            raise RuntimeError("backend='cpp' needs the compiled extension aot_kernels._C, which "
                               f"could not be loaded ({library.EXTENSION_ERROR}); reinstall with "
                               "`pip install --no-build-isolation -e .` or use backend='torch'")
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors, got tensors on {device}")
        return "cpp"
    if backend == "triton":
        triton = backends.triton()
        if not triton.available:
            raise RuntimeError(f"backend='triton' needs triton ({triton.error}); "
                               "`pip install triton` or use backend='torch'")
        if device.type != "cuda" and not (device.type == "cpu" and triton.interpreting()):
            raise ValueError(f"backend='triton' runs on CUDA tensors (or on CPU tensors with "
                             f"TRITON_INTERPRET=1), got tensors on {device}")
        return "triton"
    if backend == "auto":
        if device.type == "cpu" and library.HAS_EXTENSION:
            return "cpp"
        if device.type == "cuda" and backends.triton().available:
            return "triton"
        if device.type == "cpu" and not _warned_fallback:
            _warned_fallback = True
            warnings.warn("aot_kernels: compiled extension unavailable "
                          f"({library.EXTENSION_ERROR}); using the slower 'torch' backend",
                          RuntimeWarning, stacklevel=4)
    return "torch"


# The torch backend of each op: plain PyTorch with the op's contract (composite.py).
_TORCH_IMPL = {"cosine_cost": composite.cosine_cost_op, "sinkhorn": composite.sinkhorn_op,
               "sinkhorn_aggregate": composite.sinkhorn_aggregate,
               "clip_aggregate": composite.clip_aggregate}


def _run(op: str, backend: str, device: torch.device, args: tuple):
    """Op `op` on the chosen backend: torch.ops.aot.<op> (the C++ kernel, or Triton through the
    op registry on CUDA), the Triton launchers directly (interpreter), or plain torch."""
    chosen = _resolve(backend, device)
    if chosen == "cpp" or (chosen == "triton" and _through_op(device)):
        return getattr(torch.ops.aot, op)(*args)
    if chosen == "triton":
        return backends.triton().launchers[op](*args)
    return _TORCH_IMPL[op](*args)


def _through_op(device: torch.device) -> bool:
    """Triton on CUDA goes through torch.ops.aot.* (autograd, fake kernels); on CPU under the
    interpreter, or without the op schemas, the launchers are called directly (no autograd)."""
    return device.type == "cuda" and backends.triton().register()


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


def cosine_cost(x: torch.Tensor, y: torch.Tensor, *, x_pos: Optional[torch.Tensor] = None,
                y_pos: Optional[torch.Tensor] = None, spatial: float = 0.0,
                backend: str = "auto") -> torch.Tensor:
    """Cosine cost C [B,M,N] = 1 - cos(x_j, y_i), in [0, 2] (SPEC §1).

    x: anchors [B,M,D]; y: sources [B,N,D]; same dtype and device. fp16/bf16 are accumulated in
    fp32; the result has the input dtype. A zero vector has cost 1 to everything. spatial > 0
    adds spatial * |x_pos_j - y_pos_i|_2 from positions x_pos [B,M,P], y_pos [B,N,P] (SPEC §8.4:
    grid positions, spatial 0.5), computed inside the kernel.
    """
    validate.pair(x, y, "x", "y", check_values=False)
    b, m, n = x.shape[0], x.shape[1], y.shape[1]
    spatial = validate.spatial_term(spatial, x_pos, y_pos, "x_pos", "y_pos", b, m, n, x.device)
    validate.values([(x, "x", "finite"), (y, "y", "finite"), (x_pos, "x_pos", "finite"),
                     (y_pos, "y_pos", "finite")])
    return _run("cosine_cost", backend, x.device, (x, y, x_pos, y_pos, spatial))


def sinkhorn(cost: torch.Tensor, anchor_weight: Optional[torch.Tensor] = None,
             source_weight: Optional[torch.Tensor] = None, *, eps: float = 0.1,
             max_iter: int = 100, tol: float = 0.0, stop: str = "marginal",
             return_plan: bool = False, backend: str = "auto",
             check_values: bool = True) -> SinkhornResult:
    """Entropic OT between anchors (rows) and sources (columns), log-domain Sinkhorn (SPEC §2).

    cost [B,M,N] (cost units, e.g. cosine_cost). anchor_weight [B,M], source_weight [B,N]:
    non-negative masses, uniform probabilities when None; zero = padding (that row/column of the
    plan is exactly 0); sources are rescaled to the anchors' total. eps: entropic regularisation
    in cost units. stop="marginal" (SPEC §2): f then g each iteration, a problem stops once its
    L1 row-marginal error < tol (`error`). stop="scaling" (SPEC §8.4, the authors' rule): g then
    f, a problem stops once its source scaling vector exp(g/eps) changes by < tol on average
    over its real sources (`error`: that change; in fp32 the test is only as exact as
    exp(g/eps) is large, so a stop may move by an iteration against float64). tol = 0: exactly
    max_iter iterations. The plan is T = exp((f + g - C)/eps), formed only if return_plan.
    Differentiable w.r.t. cost (implicitly, at the fixed point, on the compiled backend).
    check_values: NaN/inf and negative-weight checks (one host sync); False skips them, shapes
    and types are always checked (the C++ CPU kernels also check values themselves, which
    costs no sync on a CPU).
    """
    validate.cost(cost, check_values=False)
    b, m, n = cost.shape
    validate.weight(anchor_weight, "anchor_weight", b, m, cost.device, check_values=False)
    validate.weight(source_weight, "source_weight", b, n, cost.device, check_values=False)
    validate.solver(eps, max_iter, tol)
    validate.stop(stop)
    validate.values([(cost, "cost", "finite"), (anchor_weight, "anchor_weight", "weight"),
                     (source_weight, "source_weight", "weight")], check_values)
    args = (cost, anchor_weight, source_weight, float(eps), int(max_iter), float(tol), stop)
    f, g, iterations, error = _run("sinkhorn", backend, cost.device, args)
    return SinkhornResult(f, g, iterations, error, _plan(cost, f, g, eps) if return_plan else None)


def sinkhorn_aggregate(anchors: torch.Tensor, sources: torch.Tensor, *,
                       anchor_weight: Optional[torch.Tensor] = None,
                       source_weight: Optional[torch.Tensor] = None, eps: float = 0.1,
                       lam: float = 1.0, max_iter: int = 100, tol: float = 0.0,
                       tau: Optional[float] = None, keep: Optional[int] = None,
                       anchor_pos: Optional[torch.Tensor] = None,
                       source_pos: Optional[torch.Tensor] = None, spatial: float = 0.0,
                       stop: str = "marginal", nn_blend: float = 0.0,
                       keep_quantile: Optional[float] = None, shift_min: bool = False,
                       return_plan: bool = False, backend: str = "auto",
                       check_values: bool = True) -> AggregateResult:
    """Cosine cost + Sinkhorn + mass-normalised aggregation in one call.

    anchors [B,M,D], sources [B,N,D]; weights, eps, max_iter, tol as in `sinkhorn`.
    Intra mode (default, SPEC §3, Eq. 11): tokens_j = (x_j + lam sum_i T_ji y_i)/(1 + lam m_j).
    Inter mode (SPEC §5, Eq. 13-16) with a threshold `tau` in [0, 1] or a count `keep`: sources
    with confidence q_i = max_j T_ji / sum_j' T_j'i below tau, or the `keep` lowest (ties to the
    lower index), are kept as they are (`kept`); the others are merged with weights p_ij.
    Returns an AggregateResult; `plan` [B,M,N] (rows anchors) only with return_plan=True.
    SPEC §8 options (the authors' pipeline): spatial > 0 adds spatial * |anchor_pos_j -
    source_pos_i| to the cost (positions [B,M,P], [B,N,P]); shift_min subtracts the cost's
    minimum over real (anchor, source) pairs (plans unchanged; the scaling vector that
    stop="scaling" reads is not); stop as in `sinkhorn`; keep_quantile r in [0, 1] (inter mode,
    instead of tau or keep) keeps the sources whose q_i is below the linear quantile r of the
    real sources' q; nn_blend in [0, 1] (intra mode) returns (1 - nn_blend) tokens + nn_blend
    x_NN, x_NN_j the average of anchor j and the sources whose most cosine-similar anchor it is
    (ties to the lower index).
    Differentiable w.r.t. anchors and sources (tokens, mass, confidence, distance, f, g).
    check_values as in `sinkhorn`.
    """
    validate.pair(anchors, sources, "anchors", "sources", check_values=False)
    b, m, _ = anchors.shape
    n = sources.shape[1]
    validate.weight(anchor_weight, "anchor_weight", b, m, anchors.device, check_values=False)
    validate.weight(source_weight, "source_weight", b, n, anchors.device, check_values=False)
    validate.solver(eps, max_iter, tol)
    validate.aggregation(lam, tau, keep, n)
    spatial = validate.spatial_term(spatial, anchor_pos, source_pos, "anchor_pos", "source_pos",
                                    b, m, n, anchors.device)
    validate.stop(stop)
    keep_quantile = validate.quantile(keep_quantile, tau, keep)
    nn_blend = validate.blend(nn_blend, tau, keep if keep_quantile is None else keep_quantile)
    if not isinstance(shift_min, bool):
        raise TypeError(f"shift_min must be a bool, got {type(shift_min).__name__}")
    checks = [(anchors, "anchors", "finite"), (sources, "sources", "finite"),
              (anchor_weight, "anchor_weight", "weight"), (source_weight, "source_weight", "weight"),
              (anchor_pos, "anchor_pos", "finite"), (source_pos, "source_pos", "finite")]
    if keep:
        checks.append((source_weight, "source_weight", ("keep", keep)))
    validate.values(checks, check_values)
    args = (anchors, sources, anchor_weight, source_weight, float(eps), float(lam),
            int(max_iter), float(tol), None if tau is None else float(tau),
            None if keep is None else int(keep), anchor_pos, source_pos, spatial, stop, nn_blend,
            keep_quantile, shift_min)
    out = _run("sinkhorn_aggregate", backend, anchors.device, args)
    transport = None
    if return_plan:
        a, s = composite.marginals(anchor_weight, source_weight, b, m, n,
                                   composite.compute_dtype(anchors.dtype), anchors.device)
        _, cost = composite.aggregate_cost(anchors, sources, a, s, anchor_pos, source_pos,
                                           spatial, shift_min)
        transport = _plan(cost, out[6], out[7], eps)
    return AggregateResult(*out, transport)


class ClipResult(NamedTuple):
    """anchors [C,M,D]: each clip's anchors after absorbing its frames. sizes [C,M]: the total
    weight of the originals in each anchor (SPEC §9; `clip_aggregate`). kept [C,L,M] bool:
    dynamic tokens of each frame (frame 0 and frames past a clip's length: False).
    confidence [C,L,M]: q_i of each frame's tokens.
    f, g [C,L,M]: the potentials of step l (anchors, frame l's tokens); iterations [C,L] int64
    and error [C,L] as in SinkhornResult. Frame 0 and padding steps: 0."""
    anchors: torch.Tensor
    sizes: torch.Tensor
    kept: torch.Tensor
    confidence: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    iterations: torch.Tensor
    error: torch.Tensor


def _counts(value, name: str, shape, low: int, high: int, device, checks: list):
    """An int64 tensor of `shape` with entries in [low, high]. A Python sequence is checked on
    the host (free); a tensor's range check is appended to `checks` (validate.values)."""
    given = isinstance(value, torch.Tensor)
    if not given:
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be integer counts of shape {list(shape)}: {exc}") from None
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{name} must be integer counts (an integer tensor), got {value.dtype}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
    if not given:
        if value.numel() and bool(((value < low) | (value > high)).any()):
            raise ValueError(f"{name} must be in [{low}, {high}], got {value.tolist()}")
        return value.to(device=device, dtype=torch.int64)
    if value.device != device:
        raise ValueError(f"{name} is on device {value.device} but frames are on device {device}")
    checks.append((value, name, ("range", low, high)))
    return value.to(torch.int64)


def _clip_inputs(frames, lengths, sizes, anchor_weight, keep, tau, check_values):
    validate.features(frames, "frames", rank=4, what="[C, L, M, D]")
    c, length, m, d = frames.shape
    if min(c, length, m, d) == 0:
        raise ValueError(f"frames is empty: shape {list(frames.shape)}")
    dev = frames.device
    checks = [(frames, "frames", "finite"), (anchor_weight, "anchor_weight", "weight")]
    lengths = torch.full((c,), length, dtype=torch.int64, device=dev) if lengths is None else \
        _counts(lengths, "lengths", (c,), 1, length, dev, checks)
    if sizes is None:
        sdt = torch.float64 if frames.dtype == torch.float64 else torch.float32
        sizes = torch.ones(c, length, m, dtype=sdt, device=dev)
    else:
        validate.features(sizes, "sizes", rank=3, what=f"[C={c}, L={length}, M={m}]")
        if sizes.shape != (c, length, m):
            raise ValueError(f"sizes must have shape [{c}, {length}, {m}], got {list(sizes.shape)}")
        if sizes.device != dev:
            raise ValueError(f"sizes is on device {sizes.device} but frames are on device {dev}")
        checks.append((sizes, "sizes", "nonnegative"))  # weights' totals (SPEC §9)
    validate.weight(anchor_weight, "anchor_weight", c, m, dev, check_values=False)
    if tau is not None and keep is not None:
        raise ValueError("give tau (threshold mode) or keep (keep-count mode), not both")
    if keep is not None:
        keep = _counts(keep, "keep", (c, length), 0, m, dev, checks)
    validate.values(checks, check_values)
    return lengths, sizes, keep


def clip_aggregate(frames: torch.Tensor, lengths=None, sizes: Optional[torch.Tensor] = None, *,
                   anchor_weight: Optional[torch.Tensor] = None, eps: float = 0.1,
                   lam: float = 1.0, max_iter: int = 100, tol: float = 0.0,
                   tau: Optional[float] = None, keep=None, backend: str = "auto",
                   check_values: bool = True) -> ClipResult:
    """Inter-frame aggregation of whole clips (SPEC §5): all clips at once, frames in order.

    frames [C,L,M,D]: each clip's intra-frame tokens, frame 0 being its anchors; clip c uses its
    first lengths[c] frames (lengths: [C] ints, default all L). The rest is padding: it never
    reaches a result, but check_values=True checks it for NaN/inf too (False accepts anything).
    sizes [C,L,M]: the total weight of the originals in each token, >= 0 (default 1).
    anchor_weight [C,M]: anchor marginals (default uniform probabilities); each frame's M tokens
    share the same total uniformly. At step l the anchors absorb frame l: tokens with confidence
    below `tau`, or the keep[c, l] lowest (keep: [C,L] counts), stay dynamic; the rest are
    merged with weights p_ij (lam). Neither tau nor keep: every token is merged. Returns a
    ClipResult.

    Sizes (SPEC §9: a token is a weighted mean of originals, its size the weights' total).
    Eq. 16, a_j' = (a_j + lam sum_i p_ij s_i) / (1 + lam P_j) with P_j = sum_i p_ij over the
    merged tokens, weighs the anchor as one fully folded incoming token whatever its size: its
    history counts as one token of the merged tokens' average size Sbar_j = sum_i p_ij S_i / P_j,
    and its size becomes Sbar_j (1 + lam P_j) = Sbar_j + lam sum_i p_ij S_i (unchanged where
    P_j = 0). Exactly: with weights W over the originals summing to the sizes, a_j' has weights
    (Sbar_j / S_j) W_j + sum_i lam p_ij (Sbar_j / S_i) W_i, of total S_j'. Dynamic tokens keep
    theirs.

    One op, torch.ops.aot.clip_aggregate: the CPU kernel scans all clips in C++ (each step
    solved in parallel over the clips), the CUDA kernel runs each step as one batched set of
    Triton kernels; neither synchronises with the host, and the torch backend is the same scan
    in batched torch ops. Differentiable w.r.t. frames (anchors, sizes, confidence, f, g),
    implicitly at each step's fixed point: memory does not grow with max_iter.
    check_values as in `sinkhorn` (also the range of tensor lengths/keep; Python lists are
    checked on the host for free). Gradients w.r.t. sizes too; not w.r.t. anchor_weight on the
    compiled backends (a clear error in backward).
    """
    lengths, sizes, keep = _clip_inputs(frames, lengths, sizes, anchor_weight, keep, tau,
                                        check_values)
    validate.solver(eps, max_iter, tol)
    validate.aggregation(lam, tau, None, 1)
    args = (frames, lengths, sizes, anchor_weight, float(eps), float(lam), int(max_iter),
            float(tol), None if tau is None else float(tau), keep)
    return ClipResult(*_run("clip_aggregate", backend, frames.device, args))
