"""AOT planning (SPEC §4-6), from shapes alone: the anchors per frame, the clips and the dynamic
quotas that meet the budget, and the OT settings both stages share.

Nothing here reads tensor values, so a plan costs no host synchronisation; the stages after it
(intra.py, inter.py, layout.py) take a `Plan` per video.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence

import torch

from .clips import uniform_clips
from .selection import even_split
from .video import Clip, token_budget

DEFAULT_CLIP_LEN = 8
# Anchors' share of the budget when the clips are given (clip_len, DySeg), and where
# `auto_clips` is infeasible: ~80%, the paper's
# LLaVA-OneVision-7B setting (32 frames, 10%, 126 anchors, 8-frame clips: 504 of 627 tokens).
ANCHOR_SHARE = 0.8
# With clips and anchors left unset (measured on DINOv2 tokens by the reader proxy,
# benchmarks/FIDELITY.md, issue 22): each clip's first frame keeps ~70% of its tokens as
# anchors and the anchors take half the budget, which sets the clip count (32 x 196 at 10%:
# 2 clips of 16 frames, M = 137; at 25%: 6 clips of 6). The paper's split over 8-frame clips puts
# a clip's first frame far above its share of the video (125 of 196 tokens against 4-5 in each
# later frame), and a reader without sizes then over-weights those frames.
AUTO_ANCHOR_SHARE = 0.5
FRAME_ANCHOR_SHARE = Fraction(7, 10)
MARGINALS = ("probability", "unit")


@dataclass
class Plan:
    """One video's plan. anchors: M per frame; clips: [(start, end)] frame ranges; budget: K in
    quota mode (None in threshold mode); keep: even dynamic quotas per frame in quota mode
    (quota="adaptive" replaces them on the device; they still check that the budget fits)."""
    anchors: int
    clips: List[Clip]
    budget: Optional[int]
    keep: Optional[List[int]]


def default_anchors(budget: int, frames: int, clips: int, tokens: int,
                    share: float = ANCHOR_SHARE) -> Optional[int]:
    """Anchors per frame for a budget of K tokens over F frames in c clips (None: infeasible).

    M = floor(share K / c), clamped to [ceil(K / F), min(N, floor(K / c))]: the clips' anchors
    (c M) fit in K, and the later frames' M tokens each can hold the K - c M dynamic slots.
    The share is taken as an exact fraction (0.8 = 4/5), so no float rounding moves M.
    """
    share = Fraction(share).limit_denominator(10 ** 6)
    return _clamped(share.numerator * budget // (share.denominator * clips), budget, frames,
                    clips, tokens)


def _clamped(m: int, budget: int, frames: int, clips: int, tokens: int) -> Optional[int]:
    """m clamped to [ceil(K / F), min(N, floor(K / c))] (None when that range is empty)."""
    low, high = -(-budget // frames), min(tokens, budget // clips)
    return None if low > high else min(max(m, low), high)


def _round(x: Fraction) -> int:
    return int((x + Fraction(1, 2)) // 1)  # half up, exact


def auto_clips(budget: int, frames: int, tokens: int, share: float = AUTO_ANCHOR_SHARE):
    """(M, clip_len) when neither clips nor anchors are given (None: infeasible).

    The target M0 = round(FRAME_ANCHOR_SHARE N) (half up); c = round(share K / M0) in [1, F];
    clips of ceil(F / c) frames, which cuts c' = ceil(F / ceil(F / c)) <= c clips. Then
    M = min(M0, floor((1 + share) / 2 K / c')) clamped to [ceil(K / F), min(N, floor(K / c'))]:
    the cap keeps the anchors from taking the whole budget when K is small (32 x 196 at 1%: one
    clip, M = 47 of K = 63, not 63 and no dynamic token)."""
    target = max(1, _round(FRAME_ANCHOR_SHARE * tokens))
    share = Fraction(share).limit_denominator(10 ** 6)
    c = min(frames, max(1, _round(share * budget / target)))
    clip_len = -(-frames // c)
    c = -(-frames // clip_len)
    m = _clamped(min(target, (1 + share) * budget // (2 * c)), budget, frames, c, tokens)
    return None if m is None else (m, clip_len)


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


def _grown_plan(frames, tokens, retention, budget, num_anchors, clip_len, anchor_share,
                threshold, clips, auto_len):
    """(M, clips) by the share rule: the given clips, or uniform clips of clip_len frames, or
    (auto_len) clips from DEFAULT_CLIP_LEN frames grown until the budget is feasible; ValueError
    naming why when it is not."""
    clip_len = min(DEFAULT_CLIP_LEN, frames) if auto_len else clip_len
    while True:
        plan_clips = clips if clips is not None else uniform_clips(frames, clip_len)
        c = len(plan_clips)
        m = (num_anchors if num_anchors is not None
             else default_anchors(budget, frames, c, tokens, anchor_share))
        ok = m is not None and m <= tokens and (threshold or c * m <= budget <= frames * m)
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
            f"budget impossible: retention {retention} keeps K={budget} tokens of a "
            f"{frames}x{tokens} video, but {why}; quota mode needs clips x anchors <= K <= "
            f"frames x anchors (change num_anchors, clip_len or retention)")
    return m, plan_clips


def plan(frames: int, tokens: int, retention: float, *, num_anchors: Optional[int] = None,
         clip_len: Optional[int] = None, anchor_share: Optional[float] = None,
         threshold: bool = False, clips: Optional[List[Clip]] = None,
         grow_clips: bool = True) -> Plan:
    """The plan of an F x N video (frames x tokens) at `retention` (ValueError if the budget
    cannot be met).

    clips: given clips (e.g. DySeg's), else uniform clips of clip_len frames; with neither
    (and grow_clips) clips start at DEFAULT_CLIP_LEN frames and grow until the budget is
    feasible. num_anchors: M, else `default_anchors` with anchor_share (None: ANCHOR_SHARE
    with given clips, AUTO_ANCHOR_SHARE in `auto_clips`). threshold: tau decides
    what stays (no budget, no quotas); otherwise quota mode keeps exactly K tokens, which needs
    clips x anchors <= K <= frames x anchors. With neither clips, clip_len nor num_anchors (and
    grow_clips), `auto_clips` picks both, in either mode; where it cannot, `_grown_plan`
    with ANCHOR_SHARE."""
    budget = token_budget(frames, tokens, retention)
    auto_len = clips is None and clip_len is None and grow_clips
    picked = None
    if auto_len and num_anchors is None:
        picked = auto_clips(budget, frames, tokens,
                            AUTO_ANCHOR_SHARE if anchor_share is None else anchor_share)
    if picked is not None:
        m, plan_clips = picked[0], uniform_clips(frames, picked[1])
    else:
        m, plan_clips = _grown_plan(frames, tokens, retention, budget, num_anchors, clip_len,
                                    ANCHOR_SHARE if anchor_share is None else anchor_share,
                                    threshold, clips, auto_len)
    if threshold:
        return Plan(m, plan_clips, None, None)
    return Plan(m, plan_clips, budget, dynamic_quotas(budget, plan_clips, m, frames))


@dataclass(frozen=True)
class OTSettings:
    """What both OT stages share: eps, max_iter, tol as in `sinkhorn`; marginals "probability"
    (the paper's uniform probabilities) or "unit" (one unit of demand per anchor, SPEC §3);
    backend as in `sinkhorn_aggregate`."""
    eps: float
    max_iter: int
    tol: float
    marginals: str = "probability"
    backend: str = "auto"

    def anchor_weight(self, batch: int, m: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """[batch, m] anchor marginals, or None for the ops' default (uniform probabilities).
        Unit demand: a_j = 1; the default uniform sources are rescaled to total M (SPEC §2-3)."""
        if self.marginals == "unit":
            return torch.ones(batch, m, dtype=like.dtype, device=like.device)
        return None


class Clock:
    """Per-stage milliseconds when profiling (each tick waits for the device); otherwise
    neither clock nor synchronisation. ms: {stage key: milliseconds}."""

    def __init__(self, on: bool, device: torch.device):
        self.on, self.device = on, device
        self.ms: Dict[str, float] = {}
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
