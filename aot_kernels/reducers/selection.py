"""Anchor selection (SPEC §4): half local (top score inside each grid window), half global."""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..ops import validate
from .video import IndexCache

_WINDOWS = IndexCache()  # each window's token indices, per grid and device


class Anchors(NamedTuple):
    """anchors [F,M] and sources [F,N-M]: token indices (raster order of the h x w grid), each
    row ascending. int64."""
    anchors: torch.Tensor
    sources: torch.Tensor


def even_split(length: int, parts: int) -> List[int]:
    """`length` split into `parts` counts as evenly as possible, the first length % parts one
    longer ([decided] the np.array_split convention, for windows, quotas and budgets)."""
    return [length // parts + (1 if k < length % parts else 0) for k in range(parts)]


def window_members(grid: Tuple[int, int], windows: Tuple[int, int]) -> List[List[int]]:
    """Token indices of each window; windows and their tokens in raster order."""
    h, w = grid
    members, r0 = [], 0
    for rows in even_split(h, windows[0]):
        c0 = 0
        for cols in even_split(w, windows[1]):
            members.append([r * w + c for r in range(r0, r0 + rows) for c in range(c0, c0 + cols)])
            c0 += cols
        r0 += rows
    return members


def window_quotas(sizes: Sequence[int], k_local: int) -> List[int]:
    """Local anchors per window: k_local spread as evenly as possible, the remainder to the
    first windows; a window smaller than its share passes the rest on (cycling in raster order).
    Depends only on the grid, so it is computed once for all frames."""
    n = len(sizes)
    share = even_split(k_local, n)
    taken = [0] * n
    carry = 0
    for k in range(n):
        want = share[k] + carry
        taken[k] = min(want, sizes[k])
        carry = want - taken[k]
    k = 0
    while carry:  # k_local <= N, so the cycle ends
        extra = min(carry, sizes[k] - taken[k])
        taken[k] += extra
        carry -= extra
        k = (k + 1) % n
    return taken


WINDOW_RULES = ("spread", "released")


def _top_mask(key: torch.Tensor, count: int) -> torch.Tensor:
    """Mask [F,L] of the `count` largest keys per row, ties to the lower index (stable sort)."""
    mask = torch.zeros(key.shape, dtype=torch.bool, device=key.device)
    if count:
        order = torch.sort(-key, dim=1, stable=True).indices[:, :count]
        mask.scatter_(1, order, True)
    return mask


def select_anchors(scores: torch.Tensor, local_scores: Optional[torch.Tensor] = None, *,
                   grid: Tuple[int, int], windows: Tuple[int, int] = (2, 2),
                   num_anchors: int, check_values: bool = True,
                   window_rule: str = "spread") -> Anchors:
    """Pick M anchors per frame (SPEC §4).

    scores [F,N]: global importance (e.g. mean attention each token receives, last layer);
    local_scores [F,N]: the same from a shallow layer (default: scores). grid (h, w) with
    h*w = N, raster order; windows (wh, ww): non-overlapping windows (split like
    np.array_split). K_l = floor(M/2) local anchors are spread over the windows (top local
    score inside each), then M - K_l global anchors are the top scores among the rest. Ties go
    to the lower token index. Batched over frames: fixed-size sorts and scatters, so nothing
    waits for the device. check_values: NaN/inf in the scores (one host sync); False skips it.
    window_rule="released" is SPEC §8.3 instead: every window takes floor(K_l / #windows) (the
    remainder is dropped), so a frame gets #windows * floor(K_l / #windows) + M - K_l anchors.
    """
    if window_rule not in WINDOW_RULES:
        raise ValueError(f"window_rule must be one of {WINDOW_RULES}, got {window_rule!r}")
    validate.features(scores, "scores", rank=2, what="[F, N]")
    h, w = validate.pair_of_ints(grid, "grid")
    wh, ww = validate.pair_of_ints(windows, "windows")
    frames, n = scores.shape
    if h * w != n:
        raise ValueError(f"grid {h}x{w} has {h * w} tokens but scores have N={n}")
    if wh > h or ww > w:
        raise ValueError(f"windows {wh}x{ww} do not fit the {h}x{w} grid")
    if validate.integer(num_anchors, "num_anchors", 1) > n:
        raise ValueError(f"num_anchors must be in [1, N={n}], got {num_anchors}")
    if local_scores is not None:
        validate.features(local_scores, "local_scores", rank=2, what="[F, N]")
        if local_scores.shape != scores.shape:
            raise ValueError(f"local_scores must have the shape of scores {tuple(scores.shape)}, "
                             f"got {tuple(local_scores.shape)}")
        if local_scores.device != scores.device:
            raise ValueError("scores and local_scores are on different devices")
    validate.values([(scores, "scores", "finite"), (local_scores, "local_scores", "finite")],
                    check_values)
    if local_scores is None:
        local_scores = scores

    k_local = num_anchors // 2
    members = window_members((h, w), (wh, ww))
    if window_rule == "spread":
        quotas = window_quotas([len(m) for m in members], k_local)
    else:
        quotas = [min(k_local // len(members), len(m)) for m in members]
    count = sum(quotas) + num_anchors - k_local
    indices = _WINDOWS.get((h, w, wh, ww), scores, lambda device: [
        torch.as_tensor(idx, dtype=torch.long, device=device) for idx in members])
    chosen = torch.zeros(frames, n, dtype=torch.bool, device=scores.device)
    for index, quota in zip(indices, quotas):  # a few windows; every frame at once
        if quota:
            chosen.index_copy_(1, index, _top_mask(local_scores.index_select(1, index), quota))
    rest = torch.where(chosen, float("-inf"), scores.to(torch.float64))
    chosen |= _top_mask(rest, num_anchors - k_local)
    # Anchors first, each group in ascending index order (stable sort of the mask).
    order = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices
    return Anchors(order[:, :count], order[:, count:])
