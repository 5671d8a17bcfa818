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
- reader (SPEC §9.2, needs an encoder with blocks, eval/vit.py): the frames' [CLS] tokens read
  the reduced tokens through the encoder's remaining blocks; the cosine of what they read to
  the read of all tokens, for the whole video and per frame (`reader`, `Reader`, `reader_band`).

Every proxy is 1.0 for the identity reduction and lower for a worse one. A single number means
little on its own: `random_band` gives the spread of `random` over several seeds at the same
budget, and a difference inside that band reads as "no difference".
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
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


# --- the reader proxy (SPEC §9.2) -------------------------------------------------------------
# A real transformer reads the reduced tokens: the frames' [CLS] tokens after block L, with the
# video's token set (all F N tokens, or the reduced K), through blocks L+1..depth and the final
# norm. It is a ViT, not an LLM: say so next to every number.


def _reader_model(model) -> None:
    if not (callable(getattr(model, "run", None)) and callable(getattr(model, "norm", None))
            and isinstance(getattr(model, "depth", None), int)):
        raise TypeError(f"model must be an encoder with blocks (an eval.vit.ViT: run, norm, "
                        f"depth), got {type(model).__name__}")


def _hidden(hidden, model, start) -> torch.Tensor:
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor [F, 1 + N, D], got {type(hidden).__name__}")
    if hidden.dim() != 3 or hidden.shape[1] < 2 or 0 in hidden.shape:
        raise ValueError(f"hidden must be [F, 1 + N, D] ([CLS] first), got {tuple(hidden.shape)}")
    if not hidden.dtype.is_floating_point or not bool(torch.isfinite(hidden).all()):
        raise ValueError("hidden must be finite floating point")
    if hidden.shape[2] != model.dim:
        raise ValueError(f"hidden has D={hidden.shape[2]}, the model D={model.dim}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= model.depth:
        raise ValueError(f"start must be an int in [0, {model.depth}] (the block hidden is "
                         f"after), got {start!r}")
    return hidden


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row cosines in float64, (a.b) / sqrt((a.a)(b.b)), clamped to [-1, 1]: exactly 1.0 for
    bitwise-equal rows (sqrt of an exactly rounded square returns the value)."""
    a, b = a.double(), b.double()
    num = (a * b).sum(-1)
    den = ((a * a).sum(-1) * (b * b).sum(-1)).sqrt().clamp_min(1e-300)
    return (num / den).clamp(-1.0, 1.0)


@torch.no_grad()
def _read_video(model, cls: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """[F, D]: the F [CLS] rows after blocks start+1..depth and the norm, read in one sequence
    [cls_1..cls_F, tokens]."""
    seq = torch.cat([cls, tokens.to(cls.dtype)])[None]
    return model.norm(model.run(seq, start, last_rows=len(cls))[0][0])


PAD_SLACK = 0.8  # a batch of frames pads to its largest count; others hold >= 0.8 of it


@torch.no_grad()
def _read_frames(model, cls: torch.Tensor, groups: List[torch.Tensor], start: int) -> torch.Tensor:
    """[F, D]: frame t's [CLS] read with groups[t] [n_t, D] alone (its own sequence: padding
    masked out). Frames run in batches of similar counts (each at least PAD_SLACK of the
    batch's largest): few calls, little padding. Frames of equal counts need no mask, so a
    reduction that keeps everything is the very call of the unreduced read (bitwise equal)."""
    out = cls.new_empty(cls.shape)
    order = sorted(range(len(groups)), key=lambda t: -len(groups[t]))
    d = cls.shape[1]
    while order:
        width = len(groups[order[0]])
        batch = [t for t in order if len(groups[t]) >= PAD_SLACK * width]
        order = order[len(batch):]
        x = cls.new_zeros(len(batch), 1 + width, d)
        mask = torch.zeros(len(batch), 1 + width, dtype=torch.bool, device=cls.device)
        for i, t in enumerate(batch):
            x[i, 0] = cls[t]
            x[i, 1:1 + len(groups[t])] = groups[t].to(cls.dtype)
            mask[i, :1 + len(groups[t])] = True
        mask = None if bool(mask.all()) else mask
        out[batch] = model.norm(model.run(x, start, mask=mask, last_rows=1)[0][:, 0])
    return out


def reader_full(model, hidden: torch.Tensor, start: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference runs on all tokens: (video [F, D], frame [F, D]). video: each frame's final
    [CLS] when all F [CLS] tokens read all F N tokens in one sequence; frame: each [CLS] read
    with its own frame's N tokens only (for a model that produced `hidden` from the frames, the
    encoder's own final [CLS]). hidden [F, 1 + N, D]: the state after block `start`."""
    _reader_model(model)
    h = _hidden(hidden, model, start)
    video = _read_video(model, h[:, 0], h[:, 1:].reshape(-1, h.shape[2]), start)
    return video, _read_frames(model, h[:, 0], list(h[:, 1:]), start)


def reader(model, hidden: torch.Tensor, reduced: ReducedVideo, *, start: int,
           full: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
           per_frame: bool = True) -> Dict[str, float]:
    """The reader proxy (SPEC §9.2): what a real transformer reads from the reduced tokens.

    model: an encoder with blocks (eval.vit.ViT: the DINOv2 port, or any other ViT of that
    class); hidden [F, 1 + N, D]: its tokens after block `start` ([CLS] first); reduced: the
    ReducedVideo of hidden[:, 1:] (tokens [K, D] in the same space). full: reader_full's result
    when already computed (the expensive part, K = F N).

    Returns {"reader": mean over frames of cos(final [CLS] of frame t when the F [CLS] tokens
    read the K reduced tokens together, the same when they read all F N tokens),
    "reader_frame": mean over frames of cos(frame t's [CLS] read with the reduced tokens whose
    frame_ids is t, the same with its own N tokens)} (the latter only with per_frame). 1.0: the
    reader sees no difference (exactly 1.0 for the identity reduction). No sizes enter (LLaVA and
    Qwen use none); the reduced tokens go in the order of their positions (attention is a set
    function; a fixed order keeps the identity reduction bitwise equal to the full run).

    Tokens merged across frames count for the one frame their frame_ids names (AOT: an inter-
    frame anchor belongs to its clip's first frame), so in reader_frame the other frames of a
    clip see only their own (dynamic) tokens: it measures what each frame keeps on its own,
    the intra stage's view (AOTReducer(clip_len=1) is AOT without the inter stage). A frame left
    with no token reads only its [CLS]. It is a ViT reading, not an LLM."""
    _reader_model(model)
    h = _hidden(hidden, model, start)
    frames, n, d = h.shape[0], h.shape[1] - 1, h.shape[2]
    r = _reduced(reduced, h[:, 1:])
    pos = r.positions
    if pos.shape != (len(r),) or (len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= frames * n)):
        raise ValueError(f"reduced.positions must be [K] flat indices in [0, {frames * n})")
    if not isinstance(per_frame, bool):
        raise TypeError(f"per_frame must be a bool, got {type(per_frame).__name__}")
    if full is None:
        full = reader_full(model, h, start)
    if (not isinstance(full, tuple) or len(full) != 2 or
            any(not isinstance(f, torch.Tensor) or f.shape != (frames, d) for f in full)):
        raise ValueError(f"full must be reader_full's (video [F, D], frame [F, D]) with F={frames}, "
                         f"D={d}")
    order = torch.argsort(pos.cpu(), stable=True).to(r.tokens.device)
    tokens, fid = r.tokens[order].to(h.device), r.frame_ids[order].to(h.device)
    cls = h[:, 0]
    out = {"reader": _cosine(_read_video(model, cls, tokens, start), full[0]).mean().item()}
    if per_frame:
        groups = [tokens[fid == t] for t in range(frames)]
        out["reader_frame"] = _cosine(_read_frames(model, cls, groups, start), full[1]).mean().item()
    return out


@dataclass
class Reader:
    """The reader proxy's inputs for one video: model (an encoder with blocks), start (block L),
    hidden [F, 1 + N, D] after block L ([CLS] first), scores [F, N] (block L's [CLS] attention:
    what the reducers get), local_scores [F, N] or None, and `full`, reader_full's runs on all
    tokens (computed on first use by `make_full`, or by reader_full)."""
    model: object
    start: int
    hidden: torch.Tensor
    scores: torch.Tensor
    local_scores: Optional[torch.Tensor] = None
    make_full: Optional[object] = None  # () -> (video [F, D], frame [F, D]), e.g. disk-cached
    _full: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    @property
    def patches(self) -> torch.Tensor:
        """[F, N, D]: the block-L patch tokens the reducers reduce."""
        return self.hidden[:, 1:]

    @property
    def full(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._full is None:
            self._full = (self.make_full() if self.make_full is not None
                          else reader_full(self.model, self.hidden, self.start))
        return self._full

    def __call__(self, reduced: ReducedVideo, per_frame: bool = True) -> Dict[str, float]:
        """`reader(...)` of a reduction of `patches`."""
        return reader(self.model, self.hidden, reduced, start=self.start, full=self.full,
                      per_frame=per_frame)


def reader_random_runs(inputs: Reader, retention: float, seeds: Sequence[int] = range(5), *,
                       grid=None) -> List[Dict[str, float]]:
    """`reader` of the `random` reducer (no merge) at `retention` on inputs.patches, per seed."""
    from .. import reducers

    out = []
    for s in seeds:
        kept = reducers.build("random", retention=retention, seed=s, merge=None)(inputs.patches,
                                                                                  grid=grid)
        out.append(inputs(kept))
    return out


def reader_band(inputs: Reader, retention: float, seeds: Sequence[int] = range(5), *,
                grid=None) -> Dict[str, Tuple[float, float]]:
    """(low, high) of reader and reader_frame over `random` with each seed at `retention`."""
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"seeds must hold at least 2 seeds for a band, got {len(seeds)}")
    return band(reader_random_runs(inputs, retention, seeds, grid=grid))
