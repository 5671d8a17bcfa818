"""Float64 NumPy reference for variant "authors" (SPEC §8): the pipeline the authors released,
for one video, from un-pooled features to the tokens the language model reads.

Literal and slow, like the other references: one frame, one clip step, one Sinkhorn half-step at
a time, each line an equation of SPEC §8. No torch. The sections follow §8.3-8.7.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from reference.ot_reference import cosine_cost, sinkhorn, sinkhorn_aggregate
from reference.selection_reference import top, windows_of

SPATIAL_WEIGHT = 0.5  # §8.4: weight of the grid distance in the intra-frame cost
NN_BLEND = 0.1  # §8.5: share of the nearest-anchor average in an anchor's update
STOP_TOL = 1e-2  # §8.4: mean change of the source scaling vector that stops Sinkhorn
TIME_SIGMA2 = 4.5  # §8.7: 2 sigma^2 of the time term 1 - exp(-l^2 / 4.5)


# ---- §8.3 anchors -------------------------------------------------------------------------------

def anchor_count(v: int, windows: int = 9) -> int:
    """Anchors §8.3 actually picks for a requested count V: 9 k_w + V - floor(V/2)."""
    return windows * ((v // 2) // windows) + v - v // 2


def select_anchors(global_scores, local_scores, grid: Tuple[int, int], v: int,
                   windows: Tuple[int, int] = (3, 3)) -> List[int]:
    """One frame's anchors, ascending: the top k_w = floor(floor(V/2) / #windows) local scores of
    each window, then the top V - floor(V/2) global scores among the rest; ties to the lower index."""
    wins = windows_of(grid[0], grid[1], *windows)
    k_w = (v // 2) // len(wins)
    chosen = set()
    for members in wins:
        chosen.update(top(members, local_scores, k_w))
    rest = [i for i in range(grid[0] * grid[1]) if i not in chosen]
    chosen.update(top(rest, global_scores, v - v // 2))
    return sorted(chosen)


# ---- §8.4 Sinkhorn with the released update order and stopping rule ---------------------------

def positions(grid: Tuple[int, int]) -> np.ndarray:
    """p [h*w, 2] = (col, row) / (side - 1): raster positions scaled to [0, 1]^2."""
    h, w = grid
    return np.array([[c / (w - 1) if w > 1 else 0.0, r / (h - 1) if h > 1 else 0.0]
                     for r in range(h) for c in range(w)])


@dataclass
class Solved:
    plan: np.ndarray  # [M, N], rows anchors
    f: np.ndarray  # [M] anchor potentials (cost units)
    g: np.ndarray  # [N] source potentials
    iterations: int


def sinkhorn_scaling_stop(cost, eps: float, max_iter: int = 100, tol: float = STOP_TOL) -> Solved:
    """§8.4's Sinkhorn: uniform probability marginals, sources updated first, stop once the
    source scaling vector changes by less than tol on average (ot_reference, stop="scaling")."""
    r = sinkhorn(cost, eps=eps, max_iter=max_iter, tol=tol, stop="scaling")
    return Solved(r.plan, r.f, r.g, r.iterations)


# ---- §8.4-8.5 intra-frame step ------------------------------------------------------------------

def intra_frame(x, y, anchor_pos, source_pos, eps=0.1, max_iter=100, spatial=SPATIAL_WEIGHT,
                nn_blend=NN_BLEND):
    """Anchors x [M, D] absorb sources y [N, D]; positions [M, 2], [N, 2]. Returns the updated
    anchors [M, D] = (1 - nn_blend) x_OT + nn_blend x_NN and the Solved problem."""
    r = sinkhorn_aggregate(x, y, eps=eps, max_iter=max_iter, tol=STOP_TOL, anchor_pos=anchor_pos,
                           source_pos=source_pos, spatial=spatial, stop="scaling",
                           nn_blend=nn_blend)
    return r.tokens, Solved(r.plan, r.f, r.g, r.iterations)


# ---- §8.6 pooling -------------------------------------------------------------------------------

def _bilinear_taps(size_in: int, size_out: int):
    """Source taps (i0, i1, w0, w1) of each output index: bilinear, align_corners=False."""
    scale = size_in / size_out
    taps = []
    for o in range(size_out):
        src = max(scale * (o + 0.5) - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = i0 + 1 if i0 < size_in - 1 else i0
        w1 = src - i0
        taps.append((i0, i1, 1.0 - w1, w1))
    return taps


def pool(grid_values, mode: str) -> np.ndarray:
    """[h, w, ...] -> pooled [h', w', ...]: "bilinear" to ceil(h/2) x ceil(w/2)
    (align_corners=False, LLaVA-OneVision), or "average" 2x2 blocks to floor(h/2) x floor(w/2)
    (the last odd row and column dropped, LLaVA-Video)."""
    v = np.asarray(grid_values, dtype=np.float64)
    h, w = v.shape[:2]
    if mode == "average":
        ho, wo = h // 2, w // 2
        return np.array([[(v[2 * r, 2 * c] + v[2 * r, 2 * c + 1] + v[2 * r + 1, 2 * c]
                           + v[2 * r + 1, 2 * c + 1]) / 4.0 for c in range(wo)] for r in range(ho)])
    if mode != "bilinear":
        raise ValueError(f"pool must be 'bilinear' or 'average', got {mode!r}")
    rows, cols = _bilinear_taps(h, -(-h // 2)), _bilinear_taps(w, -(-w // 2))
    return np.array([[r0w * (c0w * v[r0, c0] + c1w * v[r0, c1]) + r1w * (c0w * v[r1, c0] + c1w * v[r1, c1])
                      for c0, c1, c0w, c1w in cols] for r0, r1, r0w, r1w in rows])


# ---- §8.7 inter-frame steps ---------------------------------------------------------------------

def time_factor(step: int) -> float:
    """1 - exp(-l^2 / 4.5): the time term that scales step l's shifted cost."""
    return 1.0 - math.exp(-(step * step) / TIME_SIGMA2)


def quantile_linear(values, q: float) -> float:
    """numpy's default quantile (linear interpolation between order statistics), written out."""
    v = sorted(float(a) for a in values)
    pos = (len(v) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def inter_step(anchors, sources, step: int, keep_ratio: float, eps=0.1, max_iter=100):
    """Anchors [M, D] absorb frame `step`'s tokens [N, D]. Returns (new anchors [M, D], dynamic
    [N] bool, confidence q [N], Solved)."""
    x, y = np.asarray(anchors, np.float64), np.asarray(sources, np.float64)
    m, n = x.shape[0], y.shape[0]
    c = cosine_cost(x, y)
    cost = (c - c.min()) * time_factor(step)
    solved = sinkhorn_scaling_stop(cost, eps, max_iter)
    t = solved.plan
    p = t / t.sum(axis=0, keepdims=True)  # p_ij = T_ji / sum_j' T_j'i
    q = p.max(axis=0)
    cut = quantile_linear(q, keep_ratio)
    dynamic = np.array([q[i] < cut for i in range(n)])
    merged = np.zeros_like(x)
    load = np.zeros(m)
    for i in range(n):
        if not dynamic[i]:
            merged += np.outer(p[:, i], y[i])
            load += p[:, i]
    return (x + merged) / (1.0 + load)[:, None], dynamic, q, solved


# ---- the whole video ----------------------------------------------------------------------------

@dataclass
class AuthorsResult:
    tokens: np.ndarray  # [K, D] in output order
    frame_ids: np.ndarray  # [K] int64
    positions: np.ndarray  # [K] int64: t * (pooled tokens per frame) + pooled index
    kept_per_frame: List[List[int]]  # pooled indices kept per frame (mask >= 0.5), ascending
    pooled: np.ndarray  # [F, h', w', D]: every frame's pooled map after the intra-frame step
    # SPEC §9 in pooled tokens: weights [K, F*P] of each output token over the pooled tokens
    # (flat t*P + k) and sizes [K] their totals, so sizes * tokens == weights @ pooled maps.
    sizes: np.ndarray = None
    weights: np.ndarray = None


def reduce_video(features, global_scores, local_scores, grid=(27, 27), anchors=126,
                 keep_ratio=0.3, clip_len=4, pool_mode="bilinear", inter=True,
                 duplicate_anchors=True, eps=0.1, max_iter=100,
                 windows=(3, 3)) -> AuthorsResult:
    """SPEC §8 on one video: features [F, h*w, D] (after the projector, before pooling), global
    (layer 24) and local (layer 5) scores [F, h*w]. Output order per clip: with
    duplicate_anchors, the first frame's kept tokens, then the dynamic tokens of frames 1..L-1 in
    frame order, then the merged anchors (the first frame twice, as released); without, the
    dynamic tokens then the merged anchors. inter=False: every frame's kept tokens in order.
    [decided] A frame that keeps no token is skipped; if a clip's first frame keeps none, its
    later frames' kept tokens all stay (there is nothing to merge them into).

    Sizes count pooled tokens (SPEC §9): a pooled token counts 1 (the intra-frame fold happens
    inside it, on the un-pooled grid); Eq. 16 (lam = 1) makes a merged anchor, which weighs as
    one pooled token, the mean of itself and its shares p_ij of the merged tokens, so its
    weights become W_j / S_j + sum_i p_ij e_i, of total 1 + sum_i p_ij (unchanged where it
    received nothing)."""
    x = np.asarray(features, dtype=np.float64)
    frames, n, d = x.shape
    h, w = grid
    pos = positions(grid)
    pooled, kept = [], []
    for t in range(frames):
        chosen = select_anchors(global_scores[t], local_scores[t], grid, anchors, windows)
        others = [i for i in range(n) if i not in set(chosen)]
        updated, _ = intra_frame(x[t, chosen], x[t, others], pos[chosen], pos[others], eps,
                                 max_iter)
        frame_map = x[t].copy()
        frame_map[chosen] = updated  # anchors written back at their own positions
        mask = np.zeros(n)
        mask[chosen] = 1.0
        pooled_map = pool(frame_map.reshape(h, w, d), pool_mode)
        pooled_mask = pool(mask.reshape(h, w), pool_mode)
        pooled.append(pooled_map)
        kept.append([k for k in range(pooled_mask.size) if pooled_mask.reshape(-1)[k] >= 0.5])
    per_frame = pooled[0].shape[0] * pooled[0].shape[1]
    flat = [p.reshape(per_frame, d) for p in pooled]

    tokens, frame_ids, index, held = [], [], [], []

    def unit(t, k):
        e = np.zeros(frames * per_frame)
        e[t * per_frame + k] = 1.0
        return e

    def emit(values, t, idx, weights=None):
        for r, (v, k) in enumerate(zip(values, idx)):
            tokens.append(v)
            frame_ids.append(t)
            index.append(t * per_frame + k)
            held.append(unit(t, k) if weights is None else weights[r])

    if not inter:
        for t in range(frames):
            emit(flat[t][kept[t]], t, kept[t])
    else:
        for start in range(0, frames, clip_len):
            end = min(start + clip_len, frames)
            first = kept[start]
            current = flat[start][first]
            weights = np.array([unit(start, k) for k in first]).reshape(len(first),
                                                                        frames * per_frame)
            if duplicate_anchors:
                emit(current, start, first)
            for step in range(1, end - start):
                t = start + step
                if not kept[t]:  # nothing to absorb [decided]
                    continue
                if not first:  # no anchors to merge into: every token stays [decided]
                    emit(flat[t][kept[t]], t, kept[t])
                    continue
                current, dynamic, _, solved = inter_step(current, flat[t][kept[t]], step,
                                                         keep_ratio, eps, max_iter)
                p = solved.plan / solved.plan.sum(axis=0, keepdims=True)
                for j in range(len(first)):
                    load = sum(p[j, i] for i in range(len(kept[t])) if not dynamic[i])
                    if load > 0:
                        weights[j] = weights[j] / weights[j].sum() + sum(
                            p[j, i] * unit(t, k) for i, k in enumerate(kept[t]) if not dynamic[i])
                emit(flat[t][kept[t]][dynamic], t, [k for k, dyn in zip(kept[t], dynamic) if dyn])
            emit(current, start, first, weights)
    weights = np.array(held).reshape(len(held), frames * per_frame)
    return AuthorsResult(np.array(tokens).reshape(-1, d), np.array(frame_ids, dtype=np.int64),
                         np.array(index, dtype=np.int64), kept, np.array(pooled),
                         weights.sum(axis=1), weights)
