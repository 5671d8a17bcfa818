"""The AOT video reducer (SPEC §4-6): anchors per frame, intra-frame OT folding, then clip-wise
inter-frame folding with dynamic tokens, to an exact budget (quota mode) or a threshold."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import validate
from .api import clip_aggregate, sinkhorn_aggregate
from .clips import DYNAMIC_NUM_CLIPS, DYNAMIC_THRESHOLD, dynamic_clips, uniform_clips
from .selection import even_split, select_anchors
from .video import (Clip, ReducedVideo, Video, as_videos, finish, grid_of, received_sizes,
                    retention as check_retention, size_dtype, token_budget)

DEFAULT_CLIP_LEN = 8
# Anchors take ~80% of the budget, dynamic tokens the rest: the paper's LLaVA-OneVision-7B
# setting (32 frames, 10%, 126 anchors, 8-frame clips) puts 4 x 126 = 504 of 627 tokens in anchors.
ANCHOR_SHARE = (4, 5)
MARGINALS = ("probability", "unit")
SEGMENTATIONS = ("uniform", "dynamic")


@dataclass(frozen=True)
class Preset:
    """Paper settings (SPEC §6) for one model: its token grid and anchors per frame by retention."""
    grid: Tuple[int, int]
    frames: int
    anchors: Dict[float, int]


PRESETS = {
    "llava-onevision-7b": Preset((14, 14), 32, {0.10: 126, 0.15: 144, 0.20: 196, 0.25: 205}),
    "llava-video-7b": Preset((13, 13), 64, {0.10: 108, 0.15: 144, 0.20: 176, 0.25: 198}),
    # No anchor table in the paper: anchors follow the default rule (AOTReducer docstring).
    "qwen2.5-vl-7b": Preset((16, 16), 16, {}),
}


def default_anchors(budget: int, frames: int, clips: int, tokens: int) -> Optional[int]:
    """Anchors per frame for a budget of K tokens over F frames in c clips (None: infeasible).

    M = floor(0.8 K / c), clamped to [ceil(K / F), min(N, floor(K / c))]: the clips' anchors
    (c M) fit in K, and the later frames' M tokens each can hold the K - c M dynamic slots.
    """
    low = -(-budget // frames)
    high = min(tokens, budget // clips)
    if low > high:
        return None
    return min(max(ANCHOR_SHARE[0] * budget // (ANCHOR_SHARE[1] * clips), low), high)


def later_frames(clips: Sequence[Clip]) -> List[int]:
    """Every clip's later frames, ordered by step within the clip, then by clip."""
    longest = max(e - s for s, e in clips)
    return [s + step for step in range(1, longest) for s, e in clips if s + step < e]


def dynamic_quotas(budget: int, clips: Sequence[Clip], anchors: int, frames: int) -> List[int]:
    """Dynamic tokens kept per frame in quota mode (0 for each clip's first frame): the
    K - c M slots spread as evenly as possible over the later frames, the remainder to the
    earliest clip steps [decided], so that all clips' step l share one quota (one batched call)
    except at one step."""
    later = later_frames(clips)
    quota = [0] * frames
    if later:
        for t, q in zip(later, even_split(budget - len(clips) * anchors, len(later))):
            quota[t] = q
    return quota


def _rows(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """feats [F,N,D] rows index [F,k] -> [F,k,D]; one row copy each (gather with an expanded
    index is ~10x slower on CPU)."""
    frames, n, d = feats.shape
    flat = index + n * torch.arange(frames, device=index.device).unsqueeze(1)
    return feats.reshape(frames * n, d).index_select(0, flat.flatten()).view(frames, -1, d)


@dataclass
class _Plan:
    anchors: int
    clips: List[Clip]
    budget: Optional[int]  # K in quota mode
    keep: Optional[List[int]]  # dynamic tokens per frame in quota mode


class AOTReducer:
    """Reduce a video's visual tokens with AOT (anchors + optimal transport), SPEC §4-6.

    Call with features [F,N,D] (or [B,F,N,D], or a list of [F_b,N,D]), scores [F,N] (global
    importance, e.g. mean attention received in the vision tower's last layer), optional
    local_scores [F,N] (a shallow layer), and grid=(h, w) (default square). Returns a
    ReducedVideo (batched ReducedVideo, or list) with tokens in SPEC §5 order: clip by clip, its
    anchors (raster order, at the clip's first frame), then its dynamic tokens by (frame,
    position).

    Budget. Quota mode (tau=None, default) returns exactly K = round(retention F N) tokens:
    c clips x M anchors plus K - c M dynamic tokens, spread evenly over the clips' later frames.
    Threshold mode (tau in [0, 1]) keeps every token whose best assignment probability is < tau.
    Defaults adapt to any F, N and retention: clip_len=None starts at 8 frames (the paper's
    setting) and grows until the budget is feasible; num_anchors=None takes
    M = floor(0.8 K / c) clamped to [ceil(K / F), min(N, floor(K / c))] (~80% of the budget in
    anchors; 125 for LLaVA-OneVision's 32 x 196 at 10%, where the paper uses 126).
    segmentation="dynamic" cuts clips with FastVID's DySeg on the frames' mean tokens
    (num_clips, seg_threshold) instead of every clip_len frames.

    OT: eps, max_iter, tol as in `sinkhorn` (both stages); lam_intra / lam_inter weigh the
    folded context (0 returns the input tokens unchanged). marginals="probability" (the paper's
    uniform probabilities) or "unit" (one unit of demand per anchor, SPEC §3). windows: the
    local-anchor window grid. backend: as in `sinkhorn_aggregate`. profile=True synchronises and
    records per-stage milliseconds in `stats`.
    """

    def __init__(self, retention: float = 0.10, *, num_anchors: Optional[int] = None,
                 clip_len: Optional[int] = None, segmentation: str = "uniform",
                 eps: float = 0.1, lam_intra: float = 1.0, lam_inter: float = 1.0,
                 max_iter: int = 100, tol: float = 0.0, tau: Optional[float] = None,
                 marginals: str = "probability", windows: Tuple[int, int] = (2, 2),
                 backend: str = "auto", num_clips: int = DYNAMIC_NUM_CLIPS,
                 seg_threshold: float = DYNAMIC_THRESHOLD, grid: Optional[Tuple[int, int]] = None,
                 profile: bool = False):
        self.retention = check_retention(retention)
        self.num_anchors = None if num_anchors is None else validate.integer(num_anchors, "num_anchors", 1)
        self.clip_len = None if clip_len is None else validate.integer(clip_len, "clip_len", 1)
        if segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
        if segmentation == "dynamic" and clip_len is not None:
            raise ValueError("clip_len applies to segmentation='uniform' only")
        if marginals not in MARGINALS:
            raise ValueError(f"marginals must be one of {MARGINALS}, got {marginals!r}")
        validate.solver(eps, max_iter, tol)
        validate.aggregation(lam_intra, None, None, None, 1)
        validate.aggregation(lam_inter, tau, None, None, 1)
        validate.backend(backend)
        self.num_clips = validate.integer(num_clips, "num_clips", 1)
        self.seg_threshold = validate._real(seg_threshold, "seg_threshold")
        self.windows = validate.pair_of_ints(windows, "windows")
        self.grid = None if grid is None else validate.pair_of_ints(grid, "grid")
        self.segmentation, self.marginals, self.backend = segmentation, marginals, backend
        self.eps, self.max_iter, self.tol = float(eps), int(max_iter), float(tol)
        self.lam_intra, self.lam_inter = float(lam_intra), float(lam_inter)
        self.tau = None if tau is None else float(tau)
        self.profile = bool(profile)

    @classmethod
    def preset(cls, model: str, retention: float = 0.10, **overrides) -> "AOTReducer":
        """The paper's setting (SPEC §6) for `model` at `retention`: its anchors per frame
        (clamped to the model's tokens per frame, with a warning), its grid, eps 0.1, 100
        iterations, lam 1. Other keyword arguments override."""
        if model not in PRESETS:
            raise ValueError(f"unknown preset {model!r}; choose from {sorted(PRESETS)}")
        p = PRESETS[model]
        retention = check_retention(retention)
        config = dict(grid=p.grid)
        if p.anchors:
            match = [r for r in p.anchors if abs(r - retention) < 1e-9]
            if not match:
                raise ValueError(f"preset {model!r} has anchor counts for retention "
                                 f"{sorted(p.anchors)}, not {retention}; use "
                                 f"AOTReducer(retention={retention}) for other budgets")
            anchors = p.anchors[match[0]]
            tokens = p.grid[0] * p.grid[1]
            if anchors > tokens:
                warnings.warn(f"preset {model!r} at retention {retention}: the paper's {anchors} "
                              f"anchors exceed the {tokens} tokens per frame; using {tokens}",
                              UserWarning, stacklevel=2)
                anchors = tokens
            config["num_anchors"] = anchors
        config.update(overrides)
        return cls(retention, **config)

    def __repr__(self) -> str:
        mode = f"tau={self.tau}" if self.tau is not None else "quota"
        return (f"AOTReducer(retention={self.retention}, num_anchors={self.num_anchors}, "
                f"clip_len={self.clip_len}, segmentation={self.segmentation!r}, {mode}, "
                f"eps={self.eps}, max_iter={self.max_iter}, marginals={self.marginals!r})")

    # ---- budget ------------------------------------------------------------------------------
    def _dynamic_clips(self, video: Video) -> Optional[List[Clip]]:
        """DySeg clips on the frames' mean tokens, or None (uniform clips are planned)."""
        if self.segmentation != "dynamic":
            return None
        return dynamic_clips(video.features.mean(1), self.num_clips, self.seg_threshold)

    def plan(self, frames: int, tokens: int, clips: Optional[List[Clip]] = None) -> _Plan:
        """Anchors, clips and per-frame dynamic quotas for an F x N video (ValueError if the
        budget cannot be met)."""
        budget = token_budget(frames, tokens, self.retention)
        auto_len = clips is None and self.clip_len is None and self.segmentation == "uniform"
        clip_len = min(DEFAULT_CLIP_LEN, frames) if auto_len else self.clip_len
        while True:
            plan_clips = clips if clips is not None else uniform_clips(frames, clip_len)
            c = len(plan_clips)
            m = self.num_anchors if self.num_anchors is not None else default_anchors(budget, frames, c, tokens)
            ok = m is not None and m <= tokens and (self.tau is not None or c * m <= budget <= frames * m)
            if ok or not auto_len or clip_len >= frames:
                break
            clip_len += 1
        if m is not None and m > tokens:
            raise ValueError(f"num_anchors={m} exceeds the N={tokens} tokens per frame")
        if not ok:
            if m is None:
                why = f"no anchor count fits {c} clips (K < clips, or ceil(K/F) > floor(K/clips))"
            elif c * m > budget:
                why = f"{c} clips x {m} anchors = {c * m} tokens exceed it"
            else:
                why = f"{frames} frames x {m} anchors = {frames * m} tokens cannot hold it"
            raise ValueError(
                f"budget impossible: retention {self.retention} keeps K={budget} tokens of a "
                f"{frames}x{tokens} video, but {why}; quota mode needs clips x anchors <= K <= "
                f"frames x anchors (change num_anchors, clip_len or retention)")
        if self.tau is not None:
            return _Plan(m, plan_clips, None, None)
        return _Plan(m, plan_clips, budget, dynamic_quotas(budget, plan_clips, m, frames))

    # ---- reduction ---------------------------------------------------------------------------
    def __call__(self, features, scores, local_scores=None, *, grid=None):
        videos, form = as_videos(features, scores, local_scores)
        if any(v.scores is None for v in videos):
            raise ValueError("AOTReducer needs scores [F, N] for every video")
        if form == "batch" and self.tau is not None:
            raise ValueError("threshold mode (tau) keeps a data-dependent number of tokens per "
                             "video: pass a list of videos instead of a [B, F, N, D] batch")
        n = videos[0].features.shape[1]
        hw = grid_of(grid if grid is not None else self.grid, n)
        plans = [self.plan(v.frames, n, self._dynamic_clips(v)) for v in videos]
        return finish(self._reduce(videos, plans, hw), form)

    def _weights(self, batch: int, m: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        # Unit demand: a_j = 1; the default uniform sources are rescaled to total M (SPEC §2-3).
        if self.marginals == "unit":
            return torch.ones(batch, m, dtype=like.dtype, device=like.device)
        return None

    def _tick(self, stats: Dict[str, float], key: str, start: float, device) -> float:
        if self.profile:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            stats[key] = stats.get(key, 0.0) + 1e3 * (now - start)
            return now
        return start

    def _reduce(self, videos: List[Video], plans: List[_Plan], hw) -> List[ReducedVideo]:
        feats0 = videos[0].features
        device, n, d = feats0.device, feats0.shape[1], feats0.shape[2]
        sdt = size_dtype(feats0.dtype)
        stats: Dict[str, float] = {}
        t0 = time.perf_counter()
        if self.profile and device.type == "cuda":
            torch.cuda.synchronize(device)

        # Stage 1+2: anchors and intra-frame folding, one batched call per anchor count.
        frame_tokens: List[torch.Tensor] = [None] * len(videos)  # [F,M,D] per video
        frame_sizes: List[torch.Tensor] = [None] * len(videos)  # [F,M]
        anchor_idx: List[torch.Tensor] = [None] * len(videos)  # [F,M]
        for m in sorted({p.anchors for p in plans}):
            members = [b for b, p in enumerate(plans) if p.anchors == m]
            scores = torch.cat([videos[b].scores for b in members])
            local = None
            if any(videos[b].local_scores is not None for b in members):
                local = torch.cat([videos[b].local_scores if videos[b].local_scores is not None
                                   else videos[b].scores for b in members])
            picked = select_anchors(scores, local, grid=hw, windows=self.windows, num_anchors=m)
            t0 = self._tick(stats, "select_ms", t0, device)
            feats = torch.cat([videos[b].features for b in members])
            anchors = _rows(feats, picked.anchors)
            if m < n:
                sources = _rows(feats, picked.sources)
                out = sinkhorn_aggregate(anchors, sources, anchor_weight=self._weights(len(feats), m, feats),
                                         eps=self.eps, lam=self.lam_intra, max_iter=self.max_iter,
                                         tol=self.tol, backend=self.backend)
                count = torch.full((len(feats),), float(n - m), dtype=sdt, device=device)
                total = torch.full_like(count, float(m) if self.marginals == "unit" else 1.0)
                tokens, sizes = out.tokens, received_sizes(out.mass.to(sdt), count, total)
            else:
                tokens, sizes = anchors, torch.ones(len(feats), m, dtype=sdt, device=device)
            t0 = self._tick(stats, "intra_ms", t0, device)
            start = 0
            for b in members:
                f = videos[b].frames
                frame_tokens[b], frame_sizes[b] = tokens[start:start + f], sizes[start:start + f]
                anchor_idx[b] = picked.anchors[start:start + f]
                start += f

        # Stage 3: inter-frame folding of every clip of every video at once (per anchor count).
        pieces: Dict[int, list] = {b: [] for b in range(len(videos))}
        for m in sorted({p.anchors for p in plans}):
            items = [(b, s, e) for b, p in enumerate(plans) if p.anchors == m for s, e in p.clips]
            longest = max(e - s for _, s, e in items)
            frames = feats0.new_zeros(len(items), longest, m, d)
            sizes = torch.zeros(len(items), longest, m, dtype=sdt, device=device)
            index = torch.zeros(len(items), longest, m, dtype=torch.long, device=device)
            keep = None if self.tau is not None else [[0] * longest for _ in items]
            for k, (b, s, e) in enumerate(items):
                frames[k, :e - s] = frame_tokens[b][s:e]
                sizes[k, :e - s] = frame_sizes[b][s:e]
                index[k, :e - s] = anchor_idx[b][s:e]
                if keep is not None:
                    keep[k][:e - s] = plans[b].keep[s:e]
            out = clip_aggregate(frames, [e - s for _, s, e in items], sizes,
                                 anchor_weight=self._weights(len(items), m, frames), eps=self.eps,
                                 lam=self.lam_inter, max_iter=self.max_iter, tol=self.tol,
                                 tau=self.tau, keep=keep, backend=self.backend)
            for k, (b, s, _) in enumerate(items):
                # Anchors sit at the clip's first frame; dynamic tokens by (frame, position).
                steps, slots = torch.nonzero(out.kept[k], as_tuple=True)
                frame = s + steps
                pieces[b].append((s, torch.cat([out.anchors[k], frames[k, steps, slots]]),
                                  torch.cat([out.sizes[k], sizes[k, steps, slots]]),
                                  torch.cat([torch.full_like(index[k, 0], s), frame]),
                                  torch.cat([index[k, 0], index[k, steps, slots]]),
                                  torch.cat([torch.zeros(m, dtype=torch.bool, device=device),
                                             torch.ones(len(steps), dtype=torch.bool, device=device)])))
        self._tick(stats, "inter_ms", t0, device)

        results = []
        for b, p in enumerate(plans):
            ordered = sorted(pieces[b], key=lambda piece: piece[0])  # clip order
            toks, sizes_, fids, idx, dyn = (torch.cat([q[i] for q in ordered]) for i in range(1, 6))
            frames_b = videos[b].frames
            video_stats = dict(stats, tokens_in=frames_b * n, tokens_after_intra=frames_b * p.anchors,
                               tokens_out=len(toks), anchors_per_frame=p.anchors, clips=len(p.clips))
            results.append(ReducedVideo(toks, fids, fids * n + idx, sizes_, dyn, list(p.clips), hw,
                                        video_stats))
        return results
