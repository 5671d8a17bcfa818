"""The AOT video reducer (SPEC §4-6): anchors per frame, intra-frame OT folding, then clip-wise
inter-frame folding with dynamic tokens, to an exact budget (quota mode) or a threshold."""
from __future__ import annotations

import time
import warnings
from fractions import Fraction
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from . import validate
from .api import clip_aggregate, sinkhorn_aggregate
from .clips import DYNAMIC_NUM_CLIPS, DYNAMIC_THRESHOLD, dynamic_clips, uniform_clips
from .selection import even_split, select_anchors
from .video import (Clip, IndexCache, ReducedVideo, Video, as_videos, finish, folded_sizes,
                    grid_of, retention as check_retention, size_dtype, token_budget)

DEFAULT_CLIP_LEN = 8
# Anchors take ~80% of the budget, dynamic tokens the rest: the paper's LLaVA-OneVision-7B
# setting (32 frames, 10%, 126 anchors, 8-frame clips) puts 4 x 126 = 504 of 627 tokens in anchors.
ANCHOR_SHARE = 0.8
MARGINALS = ("probability", "unit")
QUOTAS = ("uniform", "adaptive")
NOVELTY_TOKENS = 32  # tokens per frame that measure a frame's novelty (quota="adaptive")
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
}


def default_anchors(budget: int, frames: int, clips: int, tokens: int,
                    share: float = ANCHOR_SHARE) -> Optional[int]:
    """Anchors per frame for a budget of K tokens over F frames in c clips (None: infeasible).

    M = floor(share K / c), clamped to [ceil(K / F), min(N, floor(K / c))]: the clips' anchors
    (c M) fit in K, and the later frames' M tokens each can hold the K - c M dynamic slots.
    The share is taken as an exact fraction (0.8 = 4/5), so no float rounding moves M.
    """
    low = -(-budget // frames)
    high = min(tokens, budget // clips)
    if low > high:
        return None
    share = Fraction(share).limit_denominator(10 ** 6)
    return min(max(share.numerator * budget // (share.denominator * clips), low), high)


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


def _cat(tensors: List[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


@dataclass
class _Plan:
    anchors: int
    clips: List[Clip]
    budget: Optional[int]  # K in quota mode
    keep: Optional[List[int]]  # even dynamic quotas per frame in quota mode (quota="adaptive"
    # replaces them on the device; they still check that the budget fits)


class _Clips(NamedTuple):
    """Stage-3 inputs of the videos sharing an anchor count M (frames stacked video after
    video), from their plans only. C clips (every video's, in order), L the longest.
    rows [C,L] int64: each (clip, step)'s frame (steps past a clip's end repeat its first
    frame: padding, never read). local [C,L] int64: the same frames counted within their video.
    lengths [C] int64. keep [C,L] int64 (quota mode) or None. in_place: rows is 0, 1, ...,
    C*L-1 (equal clips covering every frame), so the frames are a view, not a gather."""
    rows: torch.Tensor
    local: torch.Tensor
    lengths: torch.Tensor
    keep: Optional[torch.Tensor]
    in_place: bool


def _long(values, device) -> torch.Tensor:
    # as_tensor, not tensor: it also builds fake CUDA tensors on a CPU-only torch.
    return torch.as_tensor(values, dtype=torch.long, device=device)


def _clip_inputs(plans: Sequence[_Plan], device) -> _Clips:
    starts, local, lengths, counts = [], [], [], []
    offset = 0
    for p in plans:
        for s, e in p.clips:
            starts.append(offset + s)
            local.append(s)
            lengths.append(e - s)
            if p.keep is not None:
                counts.append(p.keep[s:e])
        offset += p.clips[-1][1]
    longest = max(lengths)
    steps = lambda start, count: [start + (step if step < count else 0)  # noqa: E731
                                  for step in range(longest)]
    rows = [steps(start, count) for start, count in zip(starts, lengths)]
    in_place = [r for row in rows for r in row] == list(range(len(rows) * longest))
    local = [steps(start, count) for start, count in zip(local, lengths)]
    keep = None
    if plans[0].keep is not None:
        keep = _long([q + [0] * (longest - len(q)) for q in counts], device)
    return _Clips(_long(rows, device), _long(local, device), _long(lengths, device), keep,
                  in_place)


class _Layout(NamedTuple):
    """Where each output token comes from, given the dynamic tokens per (clip, step) as a
    device tensor (so the counts may be data: content-adaptive quotas, threshold mode).

    Output tokens, every video's in SPEC §5 order, are rows of the table [C*M clip anchors;
    C*L*M frame tokens]: source [K_1 + K_2 + ...]. frame_ids (within the video) and dynamic
    alike; tokens: K_b per video (host ints)."""
    source: torch.Tensor
    frame_ids: torch.Tensor
    dynamic: torch.Tensor
    tokens: List[int]


def _layout(counts: torch.Tensor, kept: torch.Tensor, local: torch.Tensor,
            tokens: List[int]) -> _Layout:
    """counts [C,L] int64: dynamic tokens of each (clip, step) (step 0 ignored: its slot is the
    clip's M anchors); kept [C,L,M] bool: which ones (counts[c, l] of them True); local [C,L]:
    frames within their video; tokens: K_b per video. Index arithmetic only (no host read):
    output segments are, clip by clip, its anchors then its steps' kept tokens in slot order,
    and each output position finds its segment by a search over the segments' ends."""
    c, length, m = kept.shape
    first = torch.arange(length, device=kept.device) == 0
    seg_len = torch.where(first, m, counts).view(-1)  # [C*L]
    ends = torch.cumsum(seg_len, 0)
    out = torch.arange(sum(tokens), device=kept.device)
    seg = torch.searchsorted(ends, out, right=True)
    offset = out - (ends.index_select(0, seg) - seg_len.index_select(0, seg))
    anchor = first.repeat(c).index_select(0, seg)
    # Kept slots first in each (clip, step) row, in slot order (= position order).
    order = torch.sort((~kept).view(c * length, m).to(torch.int8), dim=1, stable=True).indices
    slot = order.view(-1).index_select(0, seg * m + offset)
    source = torch.where(anchor, (seg // length) * m + offset, c * m + seg * m + slot)
    return _Layout(source, local.view(-1).index_select(0, seg), ~anchor, tokens)


def adaptive_quotas(frames: torch.Tensor, lengths: torch.Tensor, plans: Sequence[_Plan],
                    share: float) -> torch.Tensor:
    """Dynamic tokens per (clip, step) that follow the content, without reading it on the host.

    frames [C,L,M,D]: every clip's intra-frame tokens (step 0 its anchors); lengths [C]; the
    plans of the videos whose clips these are (each video's K - c M dynamic slots, a host int,
    stays exact). A later frame's novelty is the mean cosine distance of its tokens to their
    nearest token of its clip's first frame, both taken every ceil(M / NOVELTY_TOKENS)-th
    token (a scene cut inside a clip makes every frame after it novel). Its weight is
    (1 - share) / cells + share * novelty / total novelty over the video's later frames; slots go by the Webster (Sainte-Lague) rule: slot s of a frame has
    priority (s + 1/2) / weight, and each video keeps its smallest priorities, at most M per
    frame; ties go to the earliest clip steps, so share 0 reproduces `dynamic_quotas`.
    Returns [C,L] int64 (0 at step 0 and on padding)."""
    c, length, m, _ = frames.shape
    # Every stride-th token on both sides (at most NOVELTY_TOKENS): the similarity then costs
    # ~1/16 of one inter-frame cost GEMM instead of as much again (a mean, not an exact match).
    stride = -(-m // NOVELTY_TOKENS)
    cd = torch.float64 if frames.dtype == torch.float64 else torch.float32
    unit = torch.nn.functional.normalize(frames[:, :, ::stride].to(cd), dim=-1, eps=1e-12)
    near = (unit[:, 1:] @ unit[:, :1].transpose(-1, -2)).amax(-1)  # [C,L-1,ceil(M/stride)]
    steps = torch.arange(length, device=frames.device)
    valid = (steps.unsqueeze(0) < lengths.unsqueeze(1)) & (steps > 0)  # [C,L]
    novelty = torch.cat([near.new_zeros(c, 1), (1 - near).mean(-1).clamp_min(0)], 1) * valid
    priority = (torch.arange(m, device=frames.device, dtype=cd) + 0.5).view(1, 1, m)
    counts = torch.zeros(c * length, dtype=torch.long, device=frames.device)
    first = 0
    for p in plans:
        clips = slice(first, first + len(p.clips))
        first += len(p.clips)
        cells = sum(e - s - 1 for s, e in p.clips)
        slots = p.budget - len(p.clips) * p.anchors
        if cells == 0 or slots == 0:
            continue
        nov, ok = novelty[clips], valid[clips]
        total = nov.sum()
        content = torch.where(total > 0, nov / total.clamp_min(1e-30), 1.0 / cells)
        weight = (1 - share) / cells + share * content
        key = torch.where(ok.unsqueeze(-1), priority / weight.unsqueeze(-1).clamp_min(1e-30),
                          torch.inf)
        # Slot-major, then step, then clip: equal priorities go to the earliest clip steps, as
        # in dynamic_quotas (share 0 gives exactly the uniform quotas).
        key = key.permute(2, 1, 0).reshape(-1)
        pick = torch.sort(key, stable=True).indices[:slots] % (length * len(p.clips))
        cell = (pick % len(p.clips) + clips.start) * length + pick // len(p.clips)
        counts.index_add_(0, cell, torch.ones_like(cell))
    return counts.view(c, length)


class _Clock:
    """Per-stage milliseconds when profiling (each tick waits for the device); otherwise
    neither clock nor synchronisation."""

    def __init__(self, on: bool, device: torch.device):
        self.on, self.device, self.ms = on, device, {}
        self.last = self._now() if on else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def tick(self, key: str) -> None:
        if self.on:
            now = self._now()
            self.ms[key] = self.ms.get(key, 0.0) + 1e3 * (now - self.last)
            self.last = now


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
    Defaults adapt to any F, N and retention: clip_len=None starts at 8 frames (the paper's
    setting) and grows until the budget is feasible; num_anchors=None takes
    M = floor(anchor_share K / c) clamped to [ceil(K / F), min(N, floor(K / c))] (None: 0.8,
    ~80% of the budget in anchors; 125 for LLaVA-OneVision's 32 x 196 at 10%, where the paper
    uses 126).
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
        share = ANCHOR_SHARE if anchor_share is None else validate._real(anchor_share,
                                                                            "anchor_share")
        if not 0.0 < share <= 1.0:
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

    def plan(self, frames: int, tokens: int, clips: Optional[List[Clip]] = None) -> _Plan:
        """Anchors, clips and per-frame dynamic quotas for an F x N video (ValueError if the
        budget cannot be met)."""
        budget = token_budget(frames, tokens, self.retention)
        auto_len = clips is None and self.clip_len is None and self.segmentation == "uniform"
        clip_len = min(DEFAULT_CLIP_LEN, frames) if auto_len else self.clip_len
        while True:
            plan_clips = clips if clips is not None else uniform_clips(frames, clip_len)
            c = len(plan_clips)
            m = (self.num_anchors if self.num_anchors is not None
                 else default_anchors(budget, frames, c, tokens, self.anchor_share))
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
        videos, form = as_videos(features, scores, local_scores, self.check_values)
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

    def _reduce(self, videos: List[Video], plans: List[_Plan], hw) -> List[ReducedVideo]:
        n = videos[0].features.shape[1]
        clock = _Clock(self.profile, videos[0].features.device)
        parts = {}  # video -> (tokens, sizes, frame_ids, positions, dynamic)
        for m in sorted({p.anchors for p in plans}):  # one batched pass per anchor count
            members = [b for b, p in enumerate(plans) if p.anchors == m]
            tokens, sizes, index = self._intra([videos[b] for b in members], m, hw, clock)
            parts.update(zip(members, self._inter(tokens, sizes, index,
                                                  [plans[b] for b in members], n, clock)))
        results = []
        for b, p in enumerate(plans):
            toks, sizes, frame_ids, positions, dynamic = parts[b]
            frames = videos[b].frames
            stats = dict(clock.ms, tokens_in=frames * n, tokens_after_intra=frames * p.anchors,
                         tokens_out=len(toks), anchors_per_frame=p.anchors, clips=len(p.clips))
            results.append(ReducedVideo(toks, frame_ids, positions, sizes, dynamic, list(p.clips),
                                        hw, stats))
        return results

    def _intra(self, videos: List[Video], m: int, hw, clock: _Clock):
        """Stages 1-2 (anchors, intra-frame folding) of videos sharing M, their frames stacked
        (G in all): tokens [G,M,D], sizes [G,M], the anchors' token indices [G,M] int64."""
        feats = _cat([v.features for v in videos])
        scores = _cat([v.scores for v in videos])
        local = None
        if any(v.local_scores is not None for v in videos):
            local = _cat([v.scores if v.local_scores is None else v.local_scores for v in videos])
        # The reducer checked its inputs; its own intermediate tensors need no value checks.
        picked = select_anchors(scores, local, grid=hw, windows=self.windows, num_anchors=m,
                                check_values=False)
        clock.tick("select_ms")
        frames, n = feats.shape[:2]
        sdt = size_dtype(feats.dtype)
        anchors = _rows(feats, picked.anchors)
        if m < n:
            out = sinkhorn_aggregate(anchors, _rows(feats, picked.sources),
                                     anchor_weight=self._weights(frames, m, feats), eps=self.eps,
                                     lam=self.lam_intra, max_iter=self.max_iter, tol=self.tol,
                                     backend=self.backend, check_values=False)
            # SPEC §9: each anchor holds itself and lam T_ji of each source, not whole sources.
            tokens, sizes = out.tokens, folded_sizes(out.mass.to(sdt), self.lam_intra)
        else:
            tokens, sizes = anchors, torch.ones(frames, m, dtype=sdt, device=feats.device)
        clock.tick("intra_ms")
        return tokens, sizes, picked.anchors

    def _inter(self, tokens, sizes, index, plans: List[_Plan], n: int, clock: _Clock):
        """Stage 3 (inter-frame folding) of every clip of the videos sharing M at once, from
        _intra's outputs, and the output assembly (`_layout`: index arithmetic on the device;
        only threshold mode reads its counts on the host, for the tokens per video). Returns per video
        (tokens [K,D], sizes [K], frame_ids [K], positions [K], dynamic [K])."""
        m, d = tokens.shape[1:]
        shape = (m, tuple((tuple(p.clips), None if p.keep is None else tuple(p.keep))
                          for p in plans))
        clips = self._cache.get(("clips", shape), tokens, lambda dev: _clip_inputs(plans, dev))
        c, length = clips.rows.shape
        rows = clips.rows.flatten()
        take = (lambda t: t) if clips.in_place else (lambda t: t.index_select(0, rows))  # noqa: E731
        frames = take(tokens).view(c, length, m, d)
        frame_sizes = take(sizes).view(c, length, m)
        frame_index = take(index).view(c, length, m)
        keep = clips.keep
        if keep is not None and self.quota == "adaptive":
            keep = adaptive_quotas(frames, clips.lengths, plans, self.content_share)
        out = clip_aggregate(frames, clips.lengths, frame_sizes,
                             anchor_weight=self._weights(c, m, frames), eps=self.eps,
                             lam=self.lam_inter, max_iter=self.max_iter, tol=self.tol,
                             tau=self.tau, keep=keep, backend=self.backend,
                             check_values=False)
        if keep is not None:  # quota mode: every video keeps its K_b tokens
            counts, budgets = keep, [p.budget for p in plans]
        else:  # threshold mode: the counts are data, read with the reduction's one host sync
            counts = out.kept.sum(2)
            per_clip = (counts[:, 1:].sum(1) + m).tolist()
            budgets, first = [], 0
            for p in plans:
                budgets.append(sum(per_clip[first:first + len(p.clips)]))
                first += len(p.clips)
        layout = _layout(counts, out.kept, clips.local, budgets)

        def assemble(clip_values, frame_values):  # [C,M,...] and [C,L,M,...] -> [sum K,...]
            rest = frame_values.shape[3:]
            table = torch.cat([clip_values.reshape(c * m, *rest),
                               frame_values.reshape(c * length * m, *rest)])
            return table.index_select(0, layout.source)

        toks = assemble(out.anchors, frames)
        toks_sizes = assemble(out.sizes, frame_sizes)
        positions = layout.frame_ids * n + assemble(frame_index[:, 0], frame_index)
        frame_ids, dynamic = layout.frame_ids, layout.dynamic
        clock.tick("inter_ms")
        outputs = (toks, toks_sizes, frame_ids, positions, dynamic)
        return list(zip(*(torch.split(t, layout.tokens) for t in outputs)))
