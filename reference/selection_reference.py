"""Reference for SPEC §4 (anchor selection) and §7 (prefill cost model): plain loops, no torch."""
from __future__ import annotations

import numpy as np


def split_sizes(length: int, parts: int):
    """[decided] windows follow np.array_split: the first length % parts parts are one longer."""
    return [length // parts + (1 if k < length % parts else 0) for k in range(parts)]


def windows_of(h: int, w: int, wh: int, ww: int):
    """Token indices of each window, windows in raster order, tokens in raster order."""
    out = []
    r0 = 0
    for rows in split_sizes(h, wh):
        c0 = 0
        for cols in split_sizes(w, ww):
            out.append([r * w + c for r in range(r0, r0 + rows) for c in range(c0, c0 + cols)])
            c0 += cols
        r0 += rows
    return out


def window_quotas(sizes, k_local: int):
    """Local anchors per window: as even as possible, remainder to the first windows; a window
    with fewer tokens than its share passes the rest to the next one (cycling in raster order)."""
    n = len(sizes)
    quota = [k_local // n + (1 if k < k_local % n else 0) for k in range(n)]
    taken = [0] * n
    carry = 0
    k = 0
    while True:
        want = quota[k] + carry
        quota[k] = 0
        room = sizes[k] - taken[k]
        take = min(want, room)
        taken[k] += take
        carry = want - take
        k = (k + 1) % n
        if carry == 0 and all(q == 0 for q in quota):
            return taken


def top(indices, score, count):
    """`count` indices with the highest score, ties to the lower index."""
    return sorted(indices, key=lambda i: (-score[i], i))[:count]


def select_anchors(scores, local_scores, grid, windows, num_anchors):
    """Per frame: (anchors ascending [M], sources ascending [N-M])."""
    scores = np.asarray(scores, dtype=np.float64)
    local = scores if local_scores is None else np.asarray(local_scores, dtype=np.float64)
    h, w = grid
    wins = windows_of(h, w, *windows)
    k_local = num_anchors // 2
    quotas = window_quotas([len(x) for x in wins], k_local)
    anchors, sources = [], []
    for f in range(scores.shape[0]):
        chosen = set()
        for win, q in zip(wins, quotas):
            chosen.update(top(win, local[f], q))
        rest = [i for i in range(h * w) if i not in chosen]
        chosen.update(top(rest, scores[f], num_anchors - k_local))
        anchors.append(sorted(chosen))
        sources.append([i for i in range(h * w) if i not in chosen])
    return np.array(anchors, dtype=np.int64), np.array(sources, dtype=np.int64)


def prefill_flops(tokens_per_layer, hidden, ffn):
    """Eq. 17: sum over layers of 4 n d^2 + 2 n^2 d + 2 n d m."""
    total = 0
    for n in tokens_per_layer:
        total += 4 * n * hidden**2 + 2 * n * n * hidden + 2 * n * hidden * ffn
    return total


def decode_flops(tokens_per_layer, hidden, ffn, generated):
    """Eq. 18: sum over layers of R ((4 d^2 + 2 d m) + 2 (d n + d (R + 1) / 2))."""
    total = 0
    for n in tokens_per_layer:
        total += generated * ((4 * hidden**2 + 2 * hidden * ffn)
                              + 2 * (hidden * n + hidden * (generated + 1) / 2))
    return total


def uniform_clips(frames: int, clip_len: int):
    """[(start, end)) ranges of clip_len frames; the last one may be shorter."""
    return [(s, min(s + clip_len, frames)) for s in range(0, frames, clip_len)]


def dynamic_clips(frame_features, num_clips: int, threshold: float):
    """FastVID's DySeg: cut after the num_clips-1 smallest similarities s_t = <g_t, g_t+1> of the
    L2-normalised frame features and after every t with s_t < threshold (union)."""
    g = np.asarray(frame_features, dtype=np.float64)
    frames = g.shape[0]
    unit = [row / max(np.linalg.norm(row), 1e-12) for row in g]
    sims = [float(np.dot(unit[t], unit[t + 1])) for t in range(frames - 1)]
    smallest = sorted(range(frames - 1), key=lambda t: (sims[t], t))[:max(num_clips - 1, 0)]
    cuts = sorted(set(smallest) | {t for t in range(frames - 1) if sims[t] < threshold})
    bounds = [0] + [t + 1 for t in cuts] + [frames]
    return [(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
