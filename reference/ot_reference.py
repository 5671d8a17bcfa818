"""Float64 NumPy reference for SPEC §1-3 and the inter-frame step of §5.

Deliberately slow and literal: one problem at a time, one Sinkhorn half-step per line, the
equations of ../shared/SPEC.md written as they stand. No torch. Every backend is judged by it.
Batched helpers at the bottom loop over problems.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

NORM_FLOOR = 1e-12  # F.normalize convention (SPEC §1)


def cosine_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C[j, i] = 1 - <x_j/|x_j|, y_i/|y_i|> for anchors x [M, D] and sources y [N, D]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    cost = np.empty((m, n))
    for j in range(m):
        xj = x[j] / max(np.linalg.norm(x[j]), NORM_FLOOR)
        for i in range(n):
            yi = y[i] / max(np.linalg.norm(y[i]), NORM_FLOOR)
            cost[j, i] = 1.0 - float(np.dot(xj, yi))
    return cost


def marginals(anchor_weight, source_weight, m: int, n: int):
    """SPEC §2 marginals: uniform probabilities by default, sources rescaled to the anchors' total."""
    a = np.full(m, 1.0 / m) if anchor_weight is None else np.asarray(anchor_weight, np.float64)
    s = np.full(n, 1.0 / n) if source_weight is None else np.asarray(source_weight, np.float64)
    if np.any(~np.isfinite(a)) or np.any(a < 0) or a.sum() == 0:
        raise ValueError("anchor_weight must be finite, non-negative, not all zero")
    if np.any(~np.isfinite(s)) or np.any(s < 0) or s.sum() == 0:
        raise ValueError("source_weight must be finite, non-negative, not all zero")
    s = s * (a.sum() / s.sum())
    return a, s


def _log(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(w)  # log 0 = -inf: padding drops out of every LSE


def _lse(v: np.ndarray) -> float:
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return -np.inf
    top = finite.max()
    return float(top + np.log(np.sum(np.exp(finite - top))))


def plan_from_potentials(cost, f, g, eps):
    """T[j, i] = exp((f_j + g_i - C[j, i]) / eps); exactly 0 where f_j or g_i is -inf."""
    live = np.isfinite(f)[:, None] & np.isfinite(g)[None, :]
    with np.errstate(invalid="ignore"):
        return np.where(live, np.exp((f[:, None] + g[None, :] - cost) / eps), 0.0)


def row_error(plan, a) -> float:
    """L1 row-marginal violation sum_j |sum_i T_ji - a_j| (SPEC §2 stopping rule)."""
    return float(np.sum(np.abs(plan.sum(axis=1) - a)))


@dataclass
class SinkhornResult:
    f: np.ndarray
    g: np.ndarray
    iterations: int
    error: float
    plan: np.ndarray


STOPS = ("marginal", "scaling")


def scaling_change(g_new, g_old, eps) -> float:
    """mean_i |r_i - r_i_prev| over real sources, r = exp(g / eps): SPEC §8.4's stopping test."""
    live = np.isfinite(g_old)
    return float(np.mean(np.abs(np.exp(g_new[live] / eps) - np.exp(g_old[live] / eps))))


def sinkhorn(cost, anchor_weight=None, source_weight=None, eps=0.1, max_iter=100, tol=0.0,
             stop="marginal"):
    """Log-domain Sinkhorn for one problem. stop="marginal" is SPEC §2 exactly: start g = 0,
    f then g, stop once the L1 row error < tol (`error`). stop="scaling" is SPEC §8.4: g (the
    sources) then f, stop once scaling_change < tol (`error` is the last change)."""
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}")
    cost = np.asarray(cost, dtype=np.float64)
    m, n = cost.shape
    a, s = marginals(anchor_weight, source_weight, m, n)
    log_a, log_s = _log(a), _log(s)
    f = np.where(a > 0, 0.0, -np.inf)
    g = np.where(s > 0, 0.0, -np.inf)  # g = 0 on real sources; padding never contributes
    iterations, change = 0, np.inf

    def f_step():
        for j in range(m):
            f[j] = -np.inf if a[j] == 0 else eps * log_a[j] - eps * _lse((g - cost[j, :]) / eps)

    def g_step():
        for i in range(n):
            g[i] = -np.inf if s[i] == 0 else eps * log_s[i] - eps * _lse((f - cost[:, i]) / eps)

    for _ in range(max_iter):
        iterations += 1
        if stop == "marginal":
            f_step()
            g_step()
            if row_error(plan_from_potentials(cost, f, g, eps), a) < tol:
                break
        else:
            g_old = g.copy()
            g_step()
            f_step()
            change = scaling_change(g, g_old, eps)
            if change < tol:
                break
    plan = plan_from_potentials(cost, f, g, eps)
    return SinkhornResult(f, g, iterations, row_error(plan, a) if stop == "marginal" else change,
                          plan)


@dataclass
class AggregateResult:
    tokens: np.ndarray  # [M, D]
    mass: np.ndarray  # [M] weight each anchor received (T rows, or p of stable sources)
    confidence: np.ndarray  # [N] q_i = max_j p_ij
    kept: np.ndarray  # [N] bool, dynamic (kept as they are) sources; all False in intra mode
    distance: float
    iterations: int
    plan: np.ndarray
    f: np.ndarray
    g: np.ndarray


def spatial_cost(anchor_pos, source_pos, weight: float) -> np.ndarray:
    """weight * |p_j - p_i|_2 [M, N] for positions [M, P] and [N, P] (SPEC §8.4)."""
    pa, ps = np.asarray(anchor_pos, np.float64), np.asarray(source_pos, np.float64)
    out = np.empty((pa.shape[0], ps.shape[0]))
    for j in range(pa.shape[0]):
        for i in range(ps.shape[0]):
            out[j, i] = weight * float(np.sqrt(np.sum((pa[j] - ps[i]) ** 2)))
    return out


def sinkhorn_aggregate(anchors, sources, anchor_weight=None, source_weight=None, eps=0.1,
                       lam=1.0, max_iter=100, tol=0.0, tau=None, keep=None, anchor_pos=None,
                       source_pos=None, spatial=0.0, stop="marginal", nn_blend=0.0,
                       keep_quantile=None, shift_min=False) -> AggregateResult:
    """Cost + Sinkhorn + aggregation for one (anchors [M,D], sources [N,D]) problem.

    Intra mode (SPEC §3, Eq. 11) when tau and keep are None:
        x~_j = (x_j + lam sum_i T_ji y_i) / (1 + lam m_j),  m_j = sum_i T_ji.
    Inter mode (SPEC §5, Eq. 13-16) with a threshold tau or a keep count:
        p_ij = T_ji / sum_j' T_j'i, q_i = max_j p_ij; dynamic sources (q_i < tau, or the `keep`
        lowest q, ties to the lower index) are kept; the stable ones are merged with weights p.
    SPEC §8 options: the cost gains spatial * |p_j - p_i| (positions [M,P], [N,P]); shift_min
    subtracts the cost's minimum over real (anchor, source) pairs; `stop` as in `sinkhorn`;
    keep_quantile r (inter mode, §8.7) keeps the real sources with q_i < the linear quantile r of
    the real sources' q; nn_blend (intra mode) returns (1 - nn_blend) x~_j + nn_blend x_NN_j
    with x_NN_j = (x_j + sum_{nn(i)=j} y_i) / (1 + #{i: nn(i)=j}), nn(i) = the real anchor of
    highest cosine to the real source i (ties to the lower index).
    """
    x = np.asarray(anchors, dtype=np.float64)
    y = np.asarray(sources, dtype=np.float64)
    m, n = x.shape[0], y.shape[0]
    if sum(v is not None for v in (tau, keep, keep_quantile)) > 1:
        raise ValueError("give one of tau, keep and keep_quantile")
    semantic = cosine_cost(x, y)
    cost = semantic if spatial == 0 else semantic + spatial_cost(anchor_pos, source_pos, spatial)
    a, s = marginals(anchor_weight, source_weight, m, n)
    valid = s > 0
    if shift_min:
        cost = cost - min(cost[j, i] for j in range(m) for i in range(n) if a[j] > 0 and valid[i])
    sk = sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol, stop)
    plan = sk.plan

    column = plan.sum(axis=0)
    p = np.zeros((m, n))
    confidence = np.zeros(n)
    for i in range(n):
        if valid[i] and column[i] > 0:
            p[:, i] = plan[:, i] / column[i]
            confidence[i] = p[:, i].max()

    kept = np.zeros(n, dtype=bool)
    if tau is not None:
        for i in range(n):
            kept[i] = valid[i] and confidence[i] < tau
    elif keep is not None:
        candidates = sorted((confidence[i], i) for i in range(n) if valid[i])
        if keep > len(candidates):
            raise ValueError("keep exceeds the number of non-padded sources")
        for _, i in candidates[:keep]:
            kept[i] = True
    elif keep_quantile is not None:
        live = sorted(confidence[i] for i in range(n) if valid[i])
        pos = (len(live) - 1) * keep_quantile  # numpy's default: linear between order statistics
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(live) - 1)
        cut = live[lo] + (live[hi] - live[lo]) * (pos - lo)
        for i in range(n):
            kept[i] = valid[i] and confidence[i] < cut

    inter = tau is not None or keep is not None or keep_quantile is not None
    if inter and nn_blend:
        raise ValueError("nn_blend applies to intra mode")
    weight = np.zeros((m, n))
    for j in range(m):
        for i in range(n):
            if inter:
                weight[j, i] = p[j, i] if (valid[i] and not kept[i]) else 0.0
            else:
                weight[j, i] = plan[j, i]
    mass = weight.sum(axis=1)
    tokens = np.empty_like(x)
    for j in range(m):
        tokens[j] = (x[j] + lam * (weight[j] @ y)) / (1.0 + lam * mass[j])
    if nn_blend:
        live_anchors = [j for j in range(m) if a[j] > 0]
        nearest = [min(live_anchors, key=lambda j: (semantic[j, i], j)) for i in range(n)]
        for j in range(m):
            members = [i for i in range(n) if valid[i] and nearest[i] == j]
            x_nn = (x[j] + sum((y[i] for i in members), np.zeros(x.shape[1]))) / (1.0 + len(members))
            tokens[j] = (1.0 - nn_blend) * tokens[j] + nn_blend * x_nn
    distance = float(np.sum(plan * cost))
    return AggregateResult(tokens, mass, confidence, kept, distance, sk.iterations, plan, sk.f, sk.g)


# ---- batched helpers: a loop over problems, weights [B, *] or None ----------------------------

def _row(w, b):
    return None if w is None else np.asarray(w)[b]


def batched_cosine_cost(x, y):
    return np.stack([cosine_cost(x[b], y[b]) for b in range(len(x))])


def batched_sinkhorn(cost, anchor_weight=None, source_weight=None, **kw):
    return [sinkhorn(cost[b], _row(anchor_weight, b), _row(source_weight, b), **kw)
            for b in range(len(cost))]


def batched_sinkhorn_aggregate(anchors, sources, anchor_weight=None, source_weight=None,
                               anchor_pos=None, source_pos=None, **kw):
    return [sinkhorn_aggregate(anchors[b], sources[b], _row(anchor_weight, b),
                               _row(source_weight, b), anchor_pos=_row(anchor_pos, b),
                               source_pos=_row(source_pos, b), **kw) for b in range(len(anchors))]


@dataclass
class ClipResult:
    anchors: np.ndarray  # [M, D] the clip's anchors after absorbing its frames
    sizes: np.ndarray  # [M] total weight of the originals in each anchor (SPEC §9)
    kept: np.ndarray  # [L, M] bool, dynamic tokens per frame (row 0 and padding rows False)
    confidence: np.ndarray  # [L, M]
    f: np.ndarray  # [L, M] potentials of step l (row 0 and padding rows 0)
    g: np.ndarray  # [L, M]
    weights: Optional[np.ndarray] = None  # [M, K] the anchors' weights over K originals


def clip_aggregate(frames, length=None, sizes=None, anchor_weight=None, eps=0.1, lam=1.0,
                   max_iter=100, tol=0.0, tau=None, keep=None, weights=None) -> ClipResult:
    """Inter-frame aggregation of one clip (SPEC §5): frames [L, M, D], frame 0 the anchors, only
    the first `length` frames used. At step l the anchors absorb frame l (inter mode with `tau`,
    or keep[l] dynamic tokens; neither: every token merged) by Eq. 16.

    Sizes (SPEC §9): Eq. 16 weighs the anchor as one fully folded incoming token, so its history
    counts as one token of the merged tokens' average size. With P_j = sum_i p_ij and
    Sbar_j = sum_i p_ij sizes[l, i] / P_j over the merged tokens i, anchor j's size becomes
    Sbar_j (1 + lam P_j); where nothing merged into j (P_j = 0, or lam = 0) it stays.

    weights [L, M, K] (optional): each token's weights over K original tokens (rows summing to
    its size: token = weights @ originals / size). Tracked through Eq. 16 as the fold weighs
    them, W_j' = (Sbar_j / S_j) W_j + sum_i lam p_ij (Sbar_j / S_i) W_i, and returned as
    `weights` [M, K], so that sizes == weights.sum(1) and sizes * anchors == weights @ originals
    can be checked (SPEC §9)."""
    x = np.asarray(frames, dtype=np.float64)
    steps, m = x.shape[0], x.shape[1]
    length = steps if length is None else int(length)
    size = np.ones((steps, m)) if sizes is None else np.asarray(sizes, dtype=np.float64)
    anchors, anchor_sizes = x[0].copy(), size[0].copy()
    track = None if weights is None else np.asarray(weights, dtype=np.float64)
    held = None if track is None else track[0].copy()
    kept, confidence = np.zeros((steps, m), dtype=bool), np.zeros((steps, m))
    f, g = np.zeros((steps, m)), np.zeros((steps, m))
    for step in range(1, length):
        count = None if tau is not None else (0 if keep is None else int(keep[step]))
        r = sinkhorn_aggregate(anchors, x[step], anchor_weight, None, eps, lam, max_iter, tol,
                               tau=tau, keep=count)
        for j in range(m):
            merged, carried = 0.0, 0.0  # P_j and sum_i p_ij S_i over the merged tokens
            share = np.zeros(m)
            for i in range(m):
                column = r.plan[:, i].sum()
                if not r.kept[i] and column > 0:
                    share[i] = r.plan[j, i] / column
                    merged += share[i]
                    carried += share[i] * size[step, i]
            if merged > 0 and lam > 0:  # lam = 0 folds nothing in: the anchor stays as it is
                average = carried / merged
                if held is not None:
                    held[j] = average / anchor_sizes[j] * held[j] + sum(
                        lam * share[i] * average / size[step, i] * track[step, i]
                        for i in range(m) if share[i] > 0)
                anchor_sizes[j] = average * (1.0 + lam * merged)
        anchors = r.tokens
        kept[step], confidence[step], f[step], g[step] = r.kept, r.confidence, r.f, r.g
    return ClipResult(anchors, anchor_sizes, kept, confidence, f, g, held)
