"""AOT stages 1-2 (SPEC §4, §3): each frame's anchors (half local, half global), then every
pruned token folded into its frame's anchors along the entropic OT plan: one batched
`sinkhorn_aggregate` over the frames of every video that shares an anchor count M."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch

from ..ops.api import sinkhorn_aggregate
from .planning import Clock, OTSettings
from .selection import select_anchors
from .video import Video, folded_sizes, size_dtype


class IntraResult(NamedTuple):
    """The videos' frames stacked (G frames in all, video after video). tokens [G,M,D]: the
    folded anchors; sizes [G,M]: the originals' weight each holds (1 + lam m_j, SPEC §9);
    anchors [G,M] int64: the anchors' token indices within their frame (raster order).
    With return_plan: sources [G,N-M] int64 (the other tokens, ascending) and plan [G,M,N-M]
    (the fold's transport plan, None where M = N); else both None."""
    tokens: torch.Tensor
    sizes: torch.Tensor
    anchors: torch.Tensor
    sources: Optional[torch.Tensor] = None
    plan: Optional[torch.Tensor] = None


def rows(feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """feats [F,N,D] rows index [F,k] -> [F,k,D]; one row copy each (gather with an expanded
    index is ~10x slower on CPU)."""
    frames, n, d = feats.shape
    flat = index + n * torch.arange(frames, device=index.device).unsqueeze(1)
    return feats.reshape(frames * n, d).index_select(0, flat.flatten()).view(frames, -1, d)


def _cat(tensors: List[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def intra_frame(videos: List[Video], m: int, grid: Tuple[int, int], *, windows: Tuple[int, int],
                ot: OTSettings, lam: float, clock: Optional[Clock] = None,
                return_plan: bool = False) -> IntraResult:
    """Stages 1-2 of `videos` (N tokens per frame on `grid`), M = m anchors per frame, local
    anchors from `windows`, the fold weighted by lam (0: the anchors unchanged). Ticks
    "select_ms" and "intra_ms" on `clock`. Inputs are not value-checked (the reducer did).
    return_plan: also the sources and the fold's plan (a reduction's operator)."""
    feats = _cat([v.features for v in videos])
    clock = clock or Clock(False, feats.device)
    scores = _cat([v.scores for v in videos])
    local = None
    if any(v.local_scores is not None for v in videos):
        local = _cat([v.scores if v.local_scores is None else v.local_scores for v in videos])
    # The reducer checked its inputs; its own intermediate tensors need no value checks.
    picked = select_anchors(scores, local, grid=grid, windows=windows, num_anchors=m,
                            check_values=False)
    clock.tick("select_ms")
    frames, n = feats.shape[:2]
    sdt = size_dtype(feats.dtype)
    anchors = rows(feats, picked.anchors)
    transport = None
    if m < n:
        out = sinkhorn_aggregate(anchors, rows(feats, picked.sources),
                                 anchor_weight=ot.anchor_weight(frames, m, feats), eps=ot.eps,
                                 lam=lam, max_iter=ot.max_iter, tol=ot.tol, backend=ot.backend,
                                 check_values=False, return_plan=return_plan)
        # SPEC §9: each anchor holds itself and lam T_ji of each source, not whole sources.
        tokens, sizes, transport = out.tokens, folded_sizes(out.mass.to(sdt), lam), out.plan
    else:
        tokens, sizes = anchors, torch.ones(frames, m, dtype=sdt, device=feats.device)
    clock.tick("intra_ms")
    if not return_plan:
        return IntraResult(tokens, sizes, picked.anchors)
    return IntraResult(tokens, sizes, picked.anchors, picked.sources, transport)
