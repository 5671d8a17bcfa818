"""Float64 reference for the whole AOT video reduction (SPEC §4-5): one video, frame by frame,
clip by clip, in plain loops over the per-problem reference ops. No torch."""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from reference.ot_reference import clip_aggregate, sinkhorn_aggregate
from reference.selection_reference import select_anchors, uniform_clips


def even_split(total, parts):
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def default_plan(frames, tokens, retention, clip_len=None, num_anchors=None, threshold=False,
                 anchor_share=None):
    """[decided] defaults. With neither clip_len nor num_anchors: M = round(7/10 N) (half up),
    c = round(anchor_share K / M) (None: 1/2) clips (in [1, F]) of ceil(F / c) frames, then
    M = min(M, floor((1 + share) K / (2 c'))) clamped to [ceil(K / F), min(N, floor(K / c'))]
    for the c' clips cut. Otherwise (or where that is
    infeasible): clips of 8 frames (grown until feasible when clip_len is None) and
    M = floor(anchor_share K / c) clamped to [ceil(K / F), min(N, floor(K / c))], the share as
    an exact fraction (None: 4/5). Returns (M, clips)."""
    budget = round(retention * frames * tokens)
    if clip_len is None and num_anchors is None:
        share = Fraction(0.5 if anchor_share is None else anchor_share).limit_denominator(10 ** 6)
        target = max(1, int(np.floor(Fraction(7 * tokens, 10) + Fraction(1, 2))))
        c = min(frames, max(1, int(np.floor(share * budget / target + Fraction(1, 2)))))
        length = int(np.ceil(frames / c))
        clips = uniform_clips(frames, length)
        low, high = int(np.ceil(budget / frames)), min(tokens, budget // len(clips))
        cap = int(np.floor((1 + share) * budget / (2 * len(clips))))
        if low <= high:
            return min(max(min(target, cap), low), high), clips
    anchor_share = 0.8 if anchor_share is None else anchor_share
    length = min(8, frames) if clip_len is None else clip_len
    while True:
        clips = uniform_clips(frames, length)
        c = len(clips)
        m = num_anchors
        if m is None:
            low = int(np.ceil(budget / frames))
            high = min(tokens, budget // c)
            share = Fraction(anchor_share).limit_denominator(10 ** 6)
            m = None if low > high else min(max((share.numerator * budget)
                                                 // (share.denominator * c), low), high)
        ok = m is not None and m <= tokens and (threshold or c * m <= budget <= frames * m)
        if ok:
            return m, clips
        if clip_len is not None or length >= frames:
            raise ValueError("budget impossible")
        length += 1


def adaptive_quota(frame_tokens, clips, m, slots, share):
    """Dynamic tokens per frame that follow the content (the reducer's quota='adaptive').

    A later frame's novelty: mean over its tokens of 1 - (best cosine to a token of its clip's
    first frame), both frames taken every ceil(m / 32)-th token. Weight (1 - share)/cells + share * novelty / total novelty (uniform if all
    novelties are 0). The `slots` slots are handed out one at a time to the frame with the
    largest weight / (q + 1/2) among those holding fewer than m (Webster's rule), ties to the
    earliest clip step, then the earliest clip."""
    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    cells = [(t - s, clip, t) for clip, (s, e) in enumerate(clips) for t in range(s + 1, e)]
    novelty = {}
    for _, clip, t in cells:
        s = clips[clip][0]
        stride = -(-m // 32)  # every stride-th token of each frame (at most 32)
        near = (unit(frame_tokens[t][::stride]) @ unit(frame_tokens[s][::stride]).T).max(axis=1)
        novelty[t] = max(float(np.mean(1.0 - near)), 0.0)
    total = sum(novelty.values())
    quota = {t: 0 for _, _, t in cells}
    weight = {t: (1 - share) / len(cells) + share * (novelty[t] / total if total > 0
                                                      else 1.0 / len(cells))
              for _, _, t in cells}
    for _ in range(slots):
        open_cells = [c for c in sorted(cells) if quota[c[2]] < m]
        best = min(open_cells, key=lambda c: (quota[c[2]] + 0.5) / weight[c[2]])
        quota[best[2]] += 1
    return quota


def reduce_video(features, scores, local_scores, grid, windows, num_anchors, clips, retention=None,
                 tau=None, eps=0.02, lam_intra=1.0, lam_inter=0.0, max_iter=100, tol=0.0,
                 marginals="probability", quota_rule="adaptive", content_share=0.5,
                 track_weights=False):
    """AOT on one video [F,N,D] with M anchors per frame and the given clips.

    Quota mode (retention): K = round(r F N); each later frame of a clip keeps its share of the
    K - c M dynamic slots (even split over the later frames, remainder to the earliest clip steps).
    quota_rule="adaptive": the slots follow the content instead (`adaptive_quota`).
    Threshold mode: tau. Returns dict of tokens [K,D], frame_ids, positions (t*N + n), sizes
    (SPEC §9: the total weight of the originals in each token), dynamic flags; SPEC §5 output
    order. track_weights: also "weights" [K, F*N], each output token's weights over the original
    tokens (flat t*N + n), tracked through every fold as it weighs its inputs (intra: the anchor
    1, source i lam_intra T_ji; inter: `clip_aggregate`), so sizes == weights.sum(1) and
    sizes * tokens == weights @ features.reshape(F*N, D).
    """
    x = np.asarray(features, dtype=np.float64)
    frames, n, _ = x.shape
    m = num_anchors
    anchors, sources = select_anchors(scores, local_scores, grid, windows, m)

    def weights(count):
        return None if marginals == "probability" else np.ones(count)

    # Intra-frame: each frame's anchors absorb its pruned tokens (SPEC §3).
    frame_tokens, frame_sizes, frame_weights = [], [], []
    for t in range(frames):
        held = np.zeros((m, frames * n))  # weights over the originals (track_weights)
        for j in range(m):
            held[j, t * n + anchors[t][j]] = 1.0
        frame_weights.append(held)
        if m == n:
            frame_tokens.append(x[t, anchors[t]])
            frame_sizes.append(np.ones(m))
            continue
        r = sinkhorn_aggregate(x[t, anchors[t]], x[t, sources[t]], weights(m), None, eps,
                               lam_intra, max_iter, tol)
        frame_tokens.append(r.tokens)
        # SPEC §9: the anchor (weight 1) plus lam T_ji of each source it absorbed.
        frame_sizes.append(np.array([1.0 + lam_intra * r.plan[j].sum() for j in range(m)]))
        for j in range(m):
            for i, k in enumerate(sources[t]):
                held[j, t * n + k] += lam_intra * r.plan[j, i]

    quota = [0] * frames
    if tau is None:
        budget = round(retention * frames * n)
        # [decided] later frames ordered by step within the clip, then by clip: the remainder
        # goes to the earliest steps.
        later = []
        for step in range(1, max(e - s for s, e in clips)):
            for s, e in clips:
                if s + step < e:
                    later.append(s + step)
        if later and quota_rule == "adaptive":
            for t, q in adaptive_quota(frame_tokens, clips, m, budget - len(clips) * m,
                                       content_share).items():
                quota[t] = q
        elif later:
            for t, q in zip(later, even_split(budget - len(clips) * m, len(later))):
                quota[t] = q

    out = {"tokens": [], "frame_ids": [], "positions": [], "sizes": [], "dynamic": [],
           "weights": []}

    def emit(token, size, frame, index, is_dynamic, held):
        out["weights"].append(held)
        out["tokens"].append(token)
        out["sizes"].append(size)
        out["frame_ids"].append(frame)
        out["positions"].append(frame * n + int(index))
        out["dynamic"].append(is_dynamic)

    # Inter-frame: within a clip, the first frame's tokens absorb the later frames in order.
    for s, e in clips:
        r = clip_aggregate(np.stack(frame_tokens[s:e]), e - s, np.stack(frame_sizes[s:e]),
                           weights(m), eps, lam_inter, max_iter, tol, tau=tau,
                           keep=None if tau is not None else quota[s:e],
                           weights=np.stack(frame_weights[s:e]) if track_weights else None)
        for j in range(m):
            emit(r.anchors[j], r.sizes[j], s, anchors[s][j], False,
                 None if r.weights is None else r.weights[j])
        for t in range(s + 1, e):
            for i in range(m):
                if r.kept[t - s, i]:
                    emit(frame_tokens[t][i], frame_sizes[t][i], t, anchors[t][i], True,
                         frame_weights[t][i])
    result = {"tokens": np.array(out["tokens"]).reshape(-1, x.shape[2]),
              "frame_ids": np.array(out["frame_ids"], dtype=np.int64),
              "positions": np.array(out["positions"], dtype=np.int64),
              "sizes": np.array(out["sizes"]), "dynamic": np.array(out["dynamic"], dtype=bool)}
    if track_weights:
        result["weights"] = np.array(out["weights"]).reshape(-1, frames * n)
    return result
