"""How much of a video a reduction kept, measured without an LLM (SPEC §9).

The language models that consume these tokens (LLaVA, Qwen) read them as a plain set: no size
bias. So every proxy here is size-free by default (`readout(..., proportional=True)` adds ToMe's
log-size bias, as an option only). Features are one video's tokens [F, N, D]; `reduced` is that
video's ReducedVideo (tokens [K, D], frame_ids [K]).

- readout: held-out queries (not tokens of the video) attend over the full and over the reduced
  set; the cosine between the two outputs, at several temperatures from sharp to broad.
- reconstruction: each original token rebuilt from the reduced set by soft nearest neighbour;
  the cosine between the original and its reconstruction.
- temporal: the same with a penalty per frame between an original token and the reduced tokens
  that rebuild it (content must stay near its time: M-RoPE gives the LLM each token's frame).
- needle: the best cosine of each token of a small distinctive object to any reduced token.

Every proxy is 1.0 for the identity reduction and lower for a worse one. A single number means
little on its own: `random_band` gives the spread of `random` over several seeds at the same
budget, and a difference inside that band reads as "no difference".
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..reducers.video import ReducedVideo

# Inverse-temperature multipliers of 1/sqrt(D), sharp to broad. On the built-in demo video
# (|x| ~ 10 at D = 1152) a held-out query's attention has a perplexity of ~7 of the 6,272
# tokens at 8, ~40 at 4, ~1,200 at 2 and ~4,800 at 1. Broader than that (0.5: ~5,900) it
# only measures the mean of the token cloud, which SPEC §9 says is not fidelity.
TEMPERATURES = (8.0, 4.0, 2.0, 1.0)
RECON_TAU = 0.02  # soft nearest neighbour: softmax(cos / tau); cosines 0.02 apart weigh e:1
FRAME_PENALTY = 0.01  # cosine units per frame of distance in `temporal` (8 frames: 0.08)
QUERY_NOISE = 0.5  # share of a held-out query's norm that is a random direction


def _features(features) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor [F, N, D], got {type(features).__name__}")
    if features.dim() != 3 or 0 in features.shape:
        raise ValueError(f"features must be one video's tokens [F, N, D], got shape "
                         f"{tuple(features.shape)}")
    if not features.dtype.is_floating_point:
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features hold NaN or inf")
    return features


def _reduced(reduced, features: torch.Tensor) -> ReducedVideo:
    if not isinstance(reduced, ReducedVideo):
        raise TypeError(f"reduced must be a ReducedVideo, got {type(reduced).__name__}")
    if reduced.tokens.dim() != 2:
        raise ValueError("reduced must be one video's ReducedVideo (tokens [K, D]), not a batch")
    if len(reduced) == 0:
        raise ValueError("reduced holds no tokens")
    if reduced.tokens.shape[1] != features.shape[2]:
        raise ValueError(f"reduced tokens have D={reduced.tokens.shape[1]}, features "
                         f"D={features.shape[2]}")
    fid = reduced.frame_ids
    if fid.shape != (len(reduced),) or (len(fid) and (int(fid.min()) < 0 or
                                                      int(fid.max()) >= features.shape[0])):
        raise ValueError(f"reduced.frame_ids must be [K] frames in [0, {features.shape[0]})")
    if not bool(torch.isfinite(reduced.tokens).all()):
        raise ValueError("reduced tokens hold NaN or inf")
    return reduced


def _dtype(features: torch.Tensor) -> torch.dtype:
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def _positive(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _temperatures(temps) -> Tuple[float, ...]:
    if isinstance(temps, (str, bytes)) or not isinstance(temps, Iterable):
        raise TypeError(f"temperatures must be a sequence of numbers, got {type(temps).__name__}")
    temps = tuple(_positive(t, "every temperature") for t in temps)
    if not temps:
        raise ValueError("temperatures must not be empty")
    return temps


SPAN_RANK = 64  # compress to the tokens' span when it has at most this many dimensions
SPAN_TOL = 1e-4  # largest relative residual of a token outside the span that still counts as in


def _span_basis(*mats: torch.Tensor) -> Optional[torch.Tensor]:
    """An orthonormal basis Q [D, r] of the rows of mats[0] when they span r <= SPAN_RANK
    dimensions and every row of every mat lies in it (relative residual <= SPAN_TOL), else None.

    Every proxy reads only inner products with the video's tokens and the reduced tokens (which
    are weighted means of them), so computing in the span's coordinates (x Q) is exact; for
    low-rank features (the built-in videos: 31 descriptor entries projected to D) it makes the
    [F N, K] products D / r times cheaper. Randomised range finder, seeded."""
    x = mats[0]
    d = x.shape[1]
    if d <= 2 * SPAN_RANK:
        return None
    g = torch.Generator().manual_seed(0)
    omega = torch.randn(x.shape[0], SPAN_RANK + 8, generator=g, dtype=x.dtype).to(x.device)
    u, sv, _ = torch.linalg.svd(x.T @ omega, full_matrices=False)
    keep = sv > sv[0] * 1e-5 if sv[0] > 0 else sv > 0
    rank = int(keep.sum())
    if rank > SPAN_RANK or rank == 0:
        return None
    q = u[:, :rank]
    for m in mats:
        res = (m - (m @ q) @ q.T).norm(dim=1) / m.norm(dim=1).clamp_min(1e-30)
        if bool((res > SPAN_TOL).any()):
            return None
    return q


def held_out_queries(features: torch.Tensor, num_queries: int = 256, seed: int = 0) -> torch.Tensor:
    """[Q, D] seeded queries that are not tokens of the video but read like its tokens.

    Each query mixes three random tokens from three random frames with Dirichlet(1, 1, 1)
    weights (an interpolation: content between what was seen, as a text query is), then adds
    a random Gaussian direction carrying QUERY_NOISE of its norm and rescales it to the mean
    token norm. The mix keeps the queries in the span the tokens occupy (a purely random
    direction in D = 1152 is nearly orthogonal to every token, which would make attention flat
    and the proxy blind); the noise keeps them off the tokens themselves.
    """
    x = _features(features)
    num_queries = _count(num_queries, "num_queries")
    frames, n, d = x.shape
    cd = _dtype(x)
    flat = x.reshape(-1, d).to(cd)
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randint(0, frames, (num_queries, 3), generator=g) * n + \
        torch.randint(0, n, (num_queries, 3), generator=g)
    w = -torch.log(torch.rand(num_queries, 3, generator=g, dtype=torch.float64))  # Dirichlet(1)
    w = (w / w.sum(1, keepdim=True)).to(cd).to(x.device)
    q = (w.unsqueeze(2) * flat[pick.to(x.device)]).sum(1)
    noise = F.normalize(torch.randn(num_queries, d, generator=g, dtype=torch.float64).to(cd),
                        dim=1).to(x.device)
    q = F.normalize(q, dim=1, eps=1e-12) * (1 - QUERY_NOISE) + noise * QUERY_NOISE
    return F.normalize(q, dim=1, eps=1e-12) * flat.norm(dim=1).mean()


def readout(features: torch.Tensor, reduced: ReducedVideo, *,
            temperatures: Sequence[float] = TEMPERATURES, num_queries: int = 256, seed: int = 0,
            proportional: bool = False) -> Dict[str, float]:
    """Held-out-query readout: what attention reads over the reduced set vs over all tokens.

    For each multiplier m in `temperatures` (scale s = m / sqrt(D); large m is sharp attention,
    small m broad) and the queries of `held_out_queries`: full = softmax(Q X^T s) X over the
    F N tokens, part = softmax(Q R^T s) R over the K reduced ones (+ log sizes inside the
    softmax when proportional=True, ToMe's proportional attention). Returns
    {"readout@m": mean cosine(full, part) over queries, ..., "readout": mean over m}; 1.0
    means every query reads exactly what it read before. Size-free, it is unchanged when every
    token of the video appears twice (a static video), and by the order of the reduced tokens.
    """
    x = _features(features)
    r = _reduced(reduced, x)
    temps = _temperatures(temperatures)
    if not isinstance(proportional, bool):
        raise TypeError(f"proportional must be a bool, got {type(proportional).__name__}")
    cd = _dtype(x)
    flat = x.reshape(-1, x.shape[2]).to(cd)
    tokens = r.tokens.to(cd)
    q = held_out_queries(x, num_queries, seed)
    basis = _span_basis(flat, tokens)
    if basis is not None:  # exact: only inner products with the span's vectors are read
        flat, tokens, q = flat @ basis, tokens @ basis, q @ basis
    bias = 0.0
    if proportional:
        if bool((r.sizes <= 0).any()):
            raise ValueError("proportional=True needs positive sizes")
        bias = torch.log(r.sizes.to(cd))
    out, base = {}, 1.0 / math.sqrt(x.shape[2])
    full_logits, part_logits = q @ flat.T, q @ tokens.T
    for m in temps:
        full = torch.softmax(full_logits * (m * base), dim=1) @ flat
        part = torch.softmax(part_logits * (m * base) + bias, dim=1) @ tokens
        out[f"readout@{m:g}"] = F.cosine_similarity(full, part, dim=1, eps=1e-12).mean().item()
    out["readout"] = sum(out.values()) / len(temps)
    return out


def _similarities(features: torch.Tensor, reduced: ReducedVideo,
                  rows: Optional[torch.Tensor] = None):
    """(x [T, D], t [T] frames, r [K, D], cos [T, K]) for the original tokens (or flat `rows`)."""
    frames, n, d = features.shape
    cd = _dtype(features)
    x = features.reshape(-1, d).to(cd)
    t = torch.arange(frames, device=x.device).repeat_interleave(n)
    if rows is not None:
        x, t = x[rows], t[rows]
    r = reduced.tokens.to(device=x.device, dtype=cd)
    basis = _span_basis(features.reshape(-1, d).to(cd), r)
    if basis is not None:
        x, r = x @ basis, r @ basis
    return x, t, r, F.normalize(x, dim=1, eps=1e-12) @ F.normalize(r, dim=1, eps=1e-12).T


def _rebuild(sim, reduced: ReducedVideo, tau: float, frame_penalty: float) -> torch.Tensor:
    """Per original token: cos(x, sum_k w_k r_k) - penalty * sum_k w_k |t_x - t_k|, with
    w = softmax((cos(x, r_k) - penalty |t_x - t_k|) / tau) (tau = 0: the single best k). One
    implementation behind reconstruction, temporal and needle; `sim` from _similarities."""
    x, t, r, sims = sim
    gap = (t.unsqueeze(1) - reduced.frame_ids.to(x.device).unsqueeze(0)).abs().to(x.dtype)
    logits = sims - frame_penalty * gap if frame_penalty else sims
    if tau == 0:
        best = logits.argmax(1, keepdim=True)
        return (sims.gather(1, best) - frame_penalty * gap.gather(1, best)).squeeze(1)
    w = torch.softmax(logits / tau, dim=1)
    score = F.cosine_similarity(x, w @ r, dim=1, eps=1e-12)
    return score - frame_penalty * (w * gap).sum(1) if frame_penalty else score


def reconstruction(features: torch.Tensor, reduced: ReducedVideo, *,
                   tau: float = RECON_TAU) -> float:
    """Mean over the F N original tokens of cos(x, sum_k w_k r_k), w = softmax(cos(x, r_k) / tau)
    over the reduced tokens (soft nearest neighbour; tau = 0 takes the nearest). 1.0 when every
    original token is in the reduced set and tau = 0 (just under 1 for tau > 0, since close
    neighbours share the weight)."""
    x = _features(features)
    r = _reduced(reduced, x)
    return _rebuild(_similarities(x, r), r, _positive(tau, "tau", allow_zero=True), 0.0).mean().item()


def temporal(features: torch.Tensor, reduced: ReducedVideo, *, tau: float = RECON_TAU,
             frame_penalty: float = FRAME_PENALTY) -> float:
    """`reconstruction` with a penalty of `frame_penalty` (cosine units) per frame between an
    original token's frame and the frame_ids of the reduced tokens that rebuild it, both in
    the soft weights and in the score. A token carried by a token labelled 5 frames away, at
    0.01 per frame, loses 0.05. 1.0 for the identity reduction at tau = 0."""
    x = _features(features)
    r = _reduced(reduced, x)
    return _rebuild(_similarities(x, r), r, _positive(tau, "tau", allow_zero=True),
                    _positive(frame_penalty, "frame_penalty", allow_zero=True)).mean().item()


def needle(features: torch.Tensor, reduced: ReducedVideo, indices) -> float:
    """Detail retention: mean over the needle's tokens (flat indices t N + n into the video) of
    their best cosine to any reduced token. 1.0 when the needle's tokens survive unchanged;
    averaging them into their surroundings or dropping them lowers it."""
    x = _features(features)
    r = _reduced(reduced, x)
    idx = torch.as_tensor(indices) if not isinstance(indices, torch.Tensor) else indices
    if idx.dim() != 1 or len(idx) == 0 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError("indices must be a non-empty 1-D sequence of flat token indices (ints)")
    total = x.shape[0] * x.shape[1]
    if int(idx.min()) < 0 or int(idx.max()) >= total:
        raise ValueError(f"indices must be in [0, {total}) (flat t * N + n)")
    return _rebuild(_similarities(x, r, idx.long().to(x.device)), r, 0.0, 0.0).mean().item()


def proxies(features: torch.Tensor, reduced: ReducedVideo, *, needle_indices=None,
            **readout_options) -> Dict[str, float]:
    """Every proxy at its defaults in one dict: readout@m per temperature, readout (their
    mean), reconstruction, temporal, and needle when `needle_indices` are given."""
    out = readout(features, reduced, **readout_options)
    sim = _similarities(features, reduced)  # inputs checked by readout; shared by both
    out["reconstruction"] = _rebuild(sim, reduced, RECON_TAU, 0.0).mean().item()
    out["temporal"] = _rebuild(sim, reduced, RECON_TAU, FRAME_PENALTY).mean().item()
    if needle_indices is not None:
        out["needle"] = needle(features, reduced, needle_indices)
    return out


def random_runs(features: torch.Tensor, retention: float, seeds: Sequence[int] = range(5), *,
                grid=None, needle_indices=None, **readout_options) -> List[Dict[str, float]]:
    """`proxies` of the `random` reducer (no merge) at `retention`, one dict per seed."""
    from .. import reducers

    x = _features(features)
    out = []
    for s in seeds:
        kept = reducers.build("random", retention=retention, seed=s, merge=None)(x, grid=grid)
        out.append(proxies(x, kept, needle_indices=needle_indices, **readout_options))
    return out


def band(runs: Sequence[Dict[str, float]]) -> Dict[str, Tuple[float, float]]:
    """{proxy: (min, max)} over runs (at least 2)."""
    if len(runs) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds for a band, got {len(runs)}")
    return {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}


def random_band(features: torch.Tensor, retention: float, seeds: Sequence[int] = range(5), *,
                grid=None, needle_indices=None, **readout_options) -> Dict[str, Tuple[float, float]]:
    """(low, high) of every proxy over the `random` reducer with each seed (no merge) at
    `retention`: how much the proxies move by chance alone at this budget. A reducer whose value
    falls inside the band is not distinguishable from keeping tokens at random."""
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds for a band, got {len(seeds)}")
    return band(random_runs(features, retention, seeds, grid=grid, needle_indices=needle_indices,
                            **readout_options))
