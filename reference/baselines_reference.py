"""Literal loop versions of the baseline reducers' decisions (one frame or window at a time, float64,
no torch). Each returns {kept token: [tokens averaged into it, itself included]}, indices local to
the frame (or flat in the window for DyCoke)."""
from __future__ import annotations

import numpy as np


def _unit(v):
    return v / max(np.linalg.norm(v), 1e-12)


def _cos(u, v):
    return float(np.dot(_unit(u), _unit(v)))


def _best(query, keys, x):
    """Most similar key (first on ties)."""
    sims = [_cos(x[query], x[k]) for k in keys]
    return keys[int(np.argmax(sims))]


def top_by_score(score, count):
    return sorted(sorted(range(len(score)), key=lambda i: (-score[i], i))[:count])


def tome_frame(x, k):
    """Bipartite soft matching rounds (Bolya et al.) until k tokens remain."""
    x = np.asarray(x, np.float64)
    n = len(x)
    feat = {i: x[i].copy() for i in range(n)}
    size = {i: 1.0 for i in range(n)}
    members = {i: [i] for i in range(n)}
    alive = list(range(n))
    while len(alive) > max(k, 1):
        a_side, b_side = alive[0::2], alive[1::2]
        r = min(len(alive) - k, len(a_side))
        edges = []
        for pos, a in enumerate(a_side):
            sims = [_cos(feat[a], feat[b]) for b in b_side]
            j = int(np.argmax(sims))
            edges.append((-sims[j], pos, a, b_side[j]))
        chosen = sorted(edges)[:r]
        incoming = {}
        for _, _, a, b in chosen:
            incoming.setdefault(b, []).append(a)
        for b, sources in incoming.items():  # simultaneous, size-weighted
            total = size[b] + sum(size[a] for a in sources)
            feat[b] = (feat[b] * size[b] + sum(feat[a] * size[a] for a in sources)) / total
            size[b] = total
            for a in sources:
                members[b] += members.pop(a)
        gone = {a for _, _, a, _ in chosen}
        alive = [i for i in alive if i not in gone]
    return {} if k == 0 else {i: sorted(members[i]) for i in alive}


def visionzip_frame(x, score, k, dominant_share=54 / 64):
    """Dominant tokens by score; contextual targets at a uniform stride over the rest; every
    other remaining token averaged into its most similar target."""
    n = len(x)
    dominant = max(1, round(k * dominant_share)) if k else 0
    dom = top_by_score(score, dominant)
    rest = [i for i in range(n) if i not in dom]
    contextual = k - dominant
    targets = rest[::max(1, len(rest) // contextual)][:contextual] if contextual and rest else []
    groups = {i: [i] for i in dom}
    groups.update({t: [t] for t in targets})
    for i in rest:
        if i not in targets and targets:
            groups[_best(i, targets, x)].append(i)
    return {i: sorted(v) for i, v in groups.items()}


def dycoke_window(x, score_first, budget):
    """x [L,N,D]: one window. budget >= N: the first frame plus the least similar later tokens
    (same position, first frame) are kept, the others averaged into the first frame's token at
    their position. budget < N: the first frame's top-score tokens; others go to the same
    position if kept, else to the nearest kept token. Flat indices l*N + n."""
    length, n, _ = x.shape
    flat = x.reshape(length * n, -1)
    if budget >= n:
        later = [(l_ * n + i) for l_ in range(1, length) for i in range(n)]
        sims = {t: _cos(flat[t], flat[t % n]) for t in later}
        dynamic = sorted(later, key=lambda t: (sims[t], t))[:budget - n]
        groups = {i: [i] for i in range(n)}
        groups.update({t: [t] for t in dynamic})
        for t in later:
            if t not in dynamic:
                groups[t % n].append(t)
    else:
        kept = top_by_score(score_first, budget)
        groups = {i: [i] for i in kept}
        for t in range(length * n):
            if t in groups or not kept:
                continue
            home = t % n
            groups[home if home in groups else _best(t, kept, flat)].append(t)
    return {i: sorted(v) for i, v in groups.items()}
