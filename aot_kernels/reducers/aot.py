"""The AOT video reducer (SPEC §4-6): anchors per frame, intra-frame OT folding, then clip-wise
inter-frame folding with dynamic tokens, to an exact budget (quota mode) or a threshold.

AOTReducer holds the settings and runs the stages, each a unit of its own: planning.py (budget,
anchors per frame, clips, quotas: shapes only), intra.py (stages 1-2), inter.py (stage 3) and
layout.py (the output order, assembled on the device)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..ops import validate
from .clips import DYNAMIC_NUM_CLIPS, DYNAMIC_THRESHOLD, dynamic_clips
from .inter import QUOTAS, clip_weights, inter_frame
from .intra import intra_frame
from .layout import assemble
from .planning import MARGINALS, Clock, OTSettings, Plan, plan as plan_video
from .video import (Clip, IndexCache, ReducedVideo, Video, as_videos, finish, grid_of,
                    map_precision, retention as check_retention)

# The paper's OT settings (SPEC §6), which the presets keep; AOTReducer()'s defaults differ
# (chosen by measurement, benchmarks/FIDELITY.md).
PAPER_SETTINGS = dict(eps=0.1, max_iter=100, lam_intra=1.0, lam_inter=1.0, quota="uniform")
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
    "qwen3-vl-8b": Preset((14, 14), 16, {}),  # not in the paper: its grid, the default anchors
}


class AOTReducer:
    """Reduce a video's visual tokens with AOT (anchors + optimal transport), SPEC §4-6.

    Call with features [F,N,D] (or [B,F,N,D], or a list of [F_b,N,D]), scores [F,N] (global
    importance, e.g. mean attention received in the vision tower's last layer), optional
    local_scores [F,N] (a shallow layer), and grid=(h, w) (default square). Returns a
    ReducedVideo (batched ReducedVideo, or list) with tokens in SPEC §5 order: clip by clip, its
    anchors (raster order, at the clip's first frame), then its dynamic tokens by (frame,
    position).

    Defaults were chosen by SPEC §9's proxies on the built-in videos (benchmarks/FIDELITY.md):
    eps=0.02, lam_inter=0 (the clip's anchors are its first frame's tokens; the inter-frame OT
    picks which later tokens stay dynamic, and folds nothing in), quota="adaptive". The paper's
    settings (eps 0.1, lam 1, even quotas) are `AOTReducer.preset(model)` or explicit arguments.

    Budget. Quota mode (tau=None, default) returns exactly K = round(retention F N) tokens:
    c clips x M anchors plus K - c M dynamic tokens over the clips' later frames.
    Threshold mode (tau in [0, 1]) keeps every token whose best assignment probability is < tau.
    Defaults adapt to any F, N and retention. With clip_len and num_anchors unset (uniform
    segmentation), each clip's first frame keeps M = round(0.7 N) anchors and the anchors take
    about `anchor_share` of the budget (None: 0.5), which sets the clip length: c =
    round(anchor_share K / M), clips of ceil(F / c) frames (M then capped at (1 + share) / 2 of
    the budget and clamped to it; `planning.auto_clips`). 32 x 196 at 10%: 2 clips of 16
    frames, M = 137; at 25%: clips of 6 frames (five, and one of 2), M = 137. Chosen on DINOv2
    tokens by the reader proxy (benchmarks/FIDELITY.md); the paper's 8-frame clips with ~80% of
    the budget in anchors put each clip's first frame far above its share of the video. So
    anchor_share alone changes the clip count, not M; `clip_len=8` gives the previous default.
    With clip_len given (or DySeg's clips, or where that rule is infeasible): M =
    floor(anchor_share K / c) (None: 0.8; the paper's 126 anchors in 8-frame clips at 10%: 125)
    clamped to [ceil(K / F), min(N, floor(K / c))], the clips growing from 8 frames until the
    budget is feasible when clip_len is unset; with num_anchors given, likewise.
    segmentation="dynamic" cuts clips with FastVID's DySeg on the frames' mean tokens
    (num_clips, seg_threshold) instead of every clip_len frames. quota (None: "adaptive" in
    quota mode; threshold mode takes none): "uniform" spreads the
    K - c M dynamic slots evenly over the later frames; quota="adaptive" gives `content_share`
    of them by novelty (a frame far from its clip's first frame, e.g. after a scene cut, gets
    more; `adaptive_quotas`), K staying exact and nothing read on the host.

    OT: eps, max_iter, tol as in `sinkhorn` (both stages); lam_intra / lam_inter weigh the
    folded context (0 returns the input tokens unchanged). marginals="probability" (the paper's
    uniform probabilities) or "unit" (one unit of demand per anchor, SPEC §3). windows: the
    local-anchor window grid. backend: as in `sinkhorn_aggregate`. profile=True synchronises and
    records per-stage milliseconds in `stats`.

    Sizes (SPEC §9: the total weight of the originals in each token). Intra-frame, an anchor
    holds itself and lam_intra T_ji of each source: size 1 + lam_intra m_j (1 + lam/M with the
    default probability marginals, about 1 + lam with unit ones). Inter-frame, Eq. 16 weighs an
    anchor as one merged token of their average size, so a clip anchor's size is that average
    times 1 + lam_inter sum_i p_ij (`clip_aggregate`). Dynamic tokens keep their intra sizes.

    Synchronisation. In quota mode with uniform segmentation (and tol=0 on the "torch"
    backend, whose solver otherwise checks for convergence), a call never waits for the
    device except for the value checks: the plan (clips, anchors, quotas) depends only on
    shapes, selections use fixed counts (sorts, gathers), the adaptive quotas are device
    tensors, and the output is assembled by index arithmetic on the device from the per-step
    counts and index tensors built from the plan once per shape and device (a warmed-up
    reducer copies nothing from the host, so it can be captured in a CUDA graph). check_values=True (default)
    checks the features and scores for NaN/inf with one host sync per call; False reads no
    values. Shapes and types are always checked. Threshold mode syncs once more (to count each
    clip's dynamic tokens), segmentation="dynamic" whenever it cuts clips (the cuts depend on
    the features), profile=True at every stage.

    return_map=True (call): the result's `token_map` / `apply(values)` reduce any other
    per-token tensor [F,N,*] (DeepStack features, SPEC §11) with the same selections and merge
    weights: both stages' plans are kept (the intra fold's, and each clip step's replayed from
    the solved potentials when lam_inter > 0). fp16/bf16 inputs are then reduced in float32
    (the tokens come back in their dtype).
    """

    def __init__(self, retention: float = 0.10, *, num_anchors: Optional[int] = None,
                 clip_len: Optional[int] = None, segmentation: str = "uniform",
                 eps: float = 0.02, lam_intra: float = 1.0, lam_inter: float = 0.0,
                 max_iter: int = 100, tol: float = 0.0, tau: Optional[float] = None,
                 marginals: str = "probability", windows: Tuple[int, int] = (2, 2),
                 backend: str = "auto", num_clips: int = DYNAMIC_NUM_CLIPS,
                 seg_threshold: float = DYNAMIC_THRESHOLD, grid: Optional[Tuple[int, int]] = None,
                 anchor_share: Optional[float] = None, quota: Optional[str] = None,
                 content_share: float = 0.5,
                 profile: bool = False, check_values: bool = True):
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
        validate.aggregation(lam_intra, None, None, 1)
        validate.aggregation(lam_inter, tau, None, 1)
        validate.backend(backend)
        if quota is not None and quota not in QUOTAS:
            raise ValueError(f"quota must be one of {QUOTAS} (or None), got {quota!r}")
        if quota is not None and tau is not None:
            raise ValueError(f"quota={quota!r} spreads an exact budget: it needs tau=None "
                             f"(threshold mode keeps what tau says)")
        if quota is None:  # the measured default in quota mode (benchmarks/FIDELITY.md)
            quota = "adaptive" if tau is None else "uniform"
        share = validate._real(content_share, "content_share")
        if not 0.0 <= share < 1.0:
            raise ValueError(f"content_share must be in [0, 1), got {content_share!r}")
        self.quota, self.content_share = quota, share
        if num_anchors is not None and anchor_share is not None:
            raise ValueError("give num_anchors or anchor_share, not both")
        share = None if anchor_share is None else validate._real(anchor_share, "anchor_share")
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"anchor_share must be in (0, 1], got {anchor_share!r}")
        self.anchor_share = share
        self.num_clips = validate.integer(num_clips, "num_clips", 1)
        self.seg_threshold = validate._real(seg_threshold, "seg_threshold")
        self.windows = validate.pair_of_ints(windows, "windows")
        self.grid = None if grid is None else validate.pair_of_ints(grid, "grid")
        self.segmentation, self.marginals, self.backend = segmentation, marginals, backend
        self.eps, self.max_iter, self.tol = float(eps), int(max_iter), float(tol)
        self.lam_intra, self.lam_inter = float(lam_intra), float(lam_inter)
        self.tau = None if tau is None else float(tau)
        self.profile, self.check_values = bool(profile), bool(check_values)
        self._cache = IndexCache()  # stage-3 index tensors per plan shape and device

    @classmethod
    def preset(cls, model: str, retention: float = 0.10, **overrides) -> "AOTReducer":
        """The paper's setting (SPEC §6) for `model` at `retention`: its anchors per frame
        (clamped to the model's tokens per frame, with a warning), its grid, eps 0.1, 100
        iterations, lam_intra = lam_inter = 1, even dynamic quotas (not AOTReducer()'s
        measured defaults). Other keyword arguments override."""
        if model not in PRESETS:
            raise ValueError(f"unknown preset {model!r}; choose from {sorted(PRESETS)}")
        p = PRESETS[model]
        retention = check_retention(retention)
        config = dict(grid=p.grid, **PAPER_SETTINGS)
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
        if config.get("tau") is not None and "quota" not in overrides:
            config.pop("quota")  # threshold mode: tau decides what stays, no quota rule
        return cls(retention, **config)

    def __repr__(self) -> str:
        mode = f"tau={self.tau}" if self.tau is not None else f"quota={self.quota!r}"
        return (f"AOTReducer(retention={self.retention}, num_anchors={self.num_anchors}, "
                f"clip_len={self.clip_len}, segmentation={self.segmentation!r}, {mode}, "
                f"eps={self.eps}, lam_inter={self.lam_inter}, max_iter={self.max_iter}, "
                f"marginals={self.marginals!r})")

    # ---- budget ------------------------------------------------------------------------------
    def _dynamic_clips(self, video: Video) -> Optional[List[Clip]]:
        """DySeg clips on the frames' mean tokens, or None (uniform clips are planned)."""
        if self.segmentation != "dynamic":
            return None
        return dynamic_clips(video.features.mean(1), self.num_clips, self.seg_threshold,
                             check_values=False)

    def plan(self, frames: int, tokens: int, clips: Optional[List[Clip]] = None) -> Plan:
        """Anchors, clips and per-frame dynamic quotas for an F x N video (ValueError if the
        budget cannot be met); `planning.plan` with this reducer's settings."""
        return plan_video(frames, tokens, self.retention, num_anchors=self.num_anchors,
                          clip_len=self.clip_len, anchor_share=self.anchor_share,
                          threshold=self.tau is not None, clips=clips,
                          grow_clips=self.segmentation == "uniform")

    # ---- reduction ---------------------------------------------------------------------------
    def __call__(self, features, scores, local_scores=None, *, grid=None, return_map=False):
        videos, form = as_videos(features, scores, local_scores, self.check_values)
        if any(v.scores is None for v in videos):
            raise ValueError("AOTReducer needs scores [F, N] for every video")
        videos, dtype = map_precision(videos, return_map)
        if form == "batch" and self.tau is not None:
            raise ValueError("threshold mode (tau) keeps a data-dependent number of tokens per "
                             "video: pass a list of videos instead of a [B, F, N, D] batch")
        n = videos[0].features.shape[1]
        hw = grid_of(grid if grid is not None else self.grid, n)
        plans = [self.plan(v.frames, n, self._dynamic_clips(v)) for v in videos]
        return finish(self._reduce(videos, plans, hw, return_map), form, dtype)

    def _reduce(self, videos: List[Video], plans: List[Plan], hw, return_map: bool = False
                ) -> List[ReducedVideo]:
        n = videos[0].features.shape[1]
        clock = Clock(self.profile, videos[0].features.device)
        ot = OTSettings(self.eps, self.max_iter, self.tol, self.marginals, self.backend)
        parts = {}  # video -> (tokens, sizes, frame_ids, positions, dynamic)
        for m in sorted({p.anchors for p in plans}):  # one batched pass per anchor count
            members = [b for b, p in enumerate(plans) if p.anchors == m]
            group = [plans[b] for b in members]
            intra = intra_frame([videos[b] for b in members], m, hw, windows=self.windows, ot=ot,
                                lam=self.lam_intra, clock=clock, return_plan=return_map)
            inter = inter_frame(intra, group, ot=ot, lam=self.lam_inter, tau=self.tau,
                                quota=self.quota, content_share=self.content_share,
                                cache=self._cache)
            if return_map:
                c = inter.frames.shape[0]
                q = None if self.lam_inter == 0 else clip_weights(
                    inter, self.lam_inter, self.eps, ot.anchor_weight(c, m, inter.frames))
                parts.update(zip(members, assemble(inter, group, n, intra, self.lam_intra, q)))
            else:
                parts.update(zip(members, assemble(inter, group, n)))
            clock.tick("inter_ms")
        results = []
        for b, p in enumerate(plans):
            toks, sizes, frame_ids, positions, dynamic = parts[b][:5]
            frames = videos[b].frames
            stats = dict(clock.ms, tokens_in=frames * n, tokens_after_intra=frames * p.anchors,
                         tokens_out=len(toks), anchors_per_frame=p.anchors, clips=len(p.clips))
            results.append(ReducedVideo(toks, frame_ids, positions, sizes, dynamic, list(p.clips),
                                        hw, stats, parts[b][5] if return_map else None))
        return results
