"""Splitting a video's frames into clips (the inter-frame stage works clip by clip, SPEC §5)."""
from __future__ import annotations

import math
import numbers
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ..ops import validate

Clip = Tuple[int, int]  # frames [start, end)

# FastVID's DySeg defaults (Shen et al., 2025): 8 clips at least, and a cut wherever consecutive
# frames' global features have cosine similarity below 0.9.
DYNAMIC_NUM_CLIPS = 8
DYNAMIC_THRESHOLD = 0.9


def uniform_clips(frames: int, clip_len: int) -> List[Clip]:
    """Consecutive clips of clip_len frames; the last one may be shorter."""
    frames, clip_len = validate.integer(frames, "frames", 1), validate.integer(clip_len, "clip_len", 1)
    return [(s, min(s + clip_len, frames)) for s in range(0, frames, clip_len)]


def dynamic_clips(frame_features: torch.Tensor, num_clips: int = DYNAMIC_NUM_CLIPS,
                  threshold: float = DYNAMIC_THRESHOLD, check_values: bool = True
                  ) -> List[Clip]:
    """FastVID's dynamic segmentation (DySeg).

    frame_features [F,D]: one global feature per frame (e.g. the mean of its tokens), L2
    normalised here. With s_t = <g_t, g_t+1>, cuts go after the num_clips-1 smallest s_t (ties
    to the earlier frame) and after every t with s_t < threshold; a video with fewer than
    num_clips frames is cut after every frame. Returns [start, end) frame ranges in order.
    The cuts depend on values: this waits for the device (check_values: also for NaN/inf).
    """
    validate.features(frame_features, "frame_features", rank=2, what="[F, D]")
    num_clips = validate.integer(num_clips, "num_clips", 1)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    frames = frame_features.shape[0]
    if frames == 0:
        raise ValueError("frame_features has no frames")
    validate.values([(frame_features, "frame_features", "finite")], check_values)
    unit = F.normalize(frame_features.to(torch.float64), dim=1, eps=1e-12)
    sims = (unit[:-1] * unit[1:]).sum(1)  # [F-1]
    smallest = torch.sort(sims, stable=True).indices[:num_clips - 1]
    cut = torch.zeros(frames - 1, dtype=torch.bool, device=sims.device)
    cut[smallest] = True
    cut |= sims < threshold
    bounds = [0] + (torch.nonzero(cut).flatten() + 1).tolist() + [frames]
    return list(zip(bounds[:-1], bounds[1:]))
