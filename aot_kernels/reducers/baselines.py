"""The token reducers people use today, at an exact budget, behind AOTReducer's interface.

Each keeps K = round(retention F N) tokens per video, spread evenly over frames (DyCoke: over its
4-frame windows), and hands its dropped tokens to the swappable merge step of base.py.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch

from ..ops import validate
from .selection import even_split
from .video import Video
from .base import Group, TokenReducer, nearest, top_indices


def _frame_group(t: int, n: int, kept: torch.Tensor, dropped: torch.Tensor, target: torch.Tensor,
                 receivers: torch.Tensor = None) -> Group:
    """Per-frame indices (0..N-1) -> a Group with flat indices."""
    if receivers is None:
        receivers = torch.ones(len(kept), dtype=torch.bool, device=kept.device)
    if not bool(receivers.any()):  # nothing may absorb them (no budget, K < F; or VisionZip
        dropped = target = kept[:0]  # with no contextual slot): dropped outright
    return Group((t, t + 1), t * n + kept, t * n + dropped, t * n + target, receivers)


def _rest(n: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool, device=kept.device)
    mask[kept] = False
    return torch.nonzero(mask).flatten()


def _to_nearest(x: torch.Tensor, kept: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Target of each dropped token: its most similar kept token."""
    if len(dropped) == 0 or len(kept) == 0:
        return dropped.new_empty(0) if len(kept) == 0 else kept[:0]
    return kept[nearest(x[dropped], x[kept])]


class TopK(TokenReducer):
    """Score top-k per frame, no merge (the attention-ranked pruning of FastV / SparseVLM-style
    methods, applied to the vision encoder's scores). merge="average" or "ot" folds the dropped
    tokens into the kept ones (nearest kept token by cosine for "average")."""
    name = "topk"
    needs_scores = True

    def groups(self, video: Video, grid, frame_budget: List[int]) -> List[Group]:
        x, n = video.features, video.features.shape[1]
        out = []
        for t, k in enumerate(frame_budget):
            kept = top_indices(video.scores[t], k)
            dropped = _rest(n, kept)
            out.append(_frame_group(t, n, kept, dropped, _to_nearest(x[t], kept, dropped)))
        return out


class RandomTokens(TokenReducer):
    """k tokens per frame uniformly at random (seeded: `seed`), no merge by default."""
    name = "random"

    def __init__(self, retention: float = 0.10, *, seed: int = 0, **kw):
        super().__init__(retention, **kw)
        self.seed = validate.integer(seed, "seed", 0)

    def groups(self, video: Video, grid, frame_budget: List[int]) -> List[Group]:
        x, n = video.features, video.features.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        out = []
        for t, k in enumerate(frame_budget):
            kept = torch.sort(torch.randperm(n, generator=gen)[:k]).values.to(x.device)
            dropped = _rest(n, kept)
            out.append(_frame_group(t, n, kept, dropped, _to_nearest(x[t], kept, dropped)))
        return out


def pool_cells(grid: Tuple[int, int], cells: int) -> List[List[int]]:
    """Split an h x w grid into `cells` contiguous rectangles: gh row bands (gh ~ sqrt(k h / w),
    grown until every band's share fits in w columns), each band cut into its share of column
    blocks; bands and blocks split like np.array_split. Cells in raster order."""
    h, w = grid
    gh = min(h, cells, max(1, round(math.sqrt(cells * h / w))))
    while max(even_split(cells, gh)) > w:
        gh += 1
    out, r0 = [], 0
    for rows, per_band in zip(even_split(h, gh), even_split(cells, gh)):
        c0 = 0
        for cols in even_split(w, per_band):
            out.append([r * w + c for r in range(r0, r0 + rows) for c in range(c0, c0 + cols)])
            c0 += cols
        r0 += rows
    return out


class Pool(TokenReducer):
    """Spatial average pooling to k tokens per frame (LLaVA-Video's 2x2 pooling generalised to
    any budget): the grid is cut into k near-square cells (`pool_cells`); each cell becomes the
    average of its tokens, placed at its middle token. merge="ot" instead folds each frame's
    tokens into the cells' middle tokens by OT; merge=None keeps the middle tokens only."""
    name = "pool"
    default_merge = "average"

    def groups(self, video: Video, grid, frame_budget: List[int]) -> List[Group]:
        n, dev = video.features.shape[1], video.features.device
        out = []
        for t, k in enumerate(frame_budget):
            cells = pool_cells(grid, k)
            kept = torch.tensor([cell[len(cell) // 2] for cell in cells], device=dev)
            dropped = [i for cell in cells for i in cell if i != cell[len(cell) // 2]]
            target = [cell[len(cell) // 2] for cell in cells for i in cell if i != cell[len(cell) // 2]]
            order = torch.argsort(kept)
            out.append(_frame_group(t, n, kept[order], torch.tensor(dropped, dtype=torch.long, device=dev),
                                    torch.tensor(target, dtype=torch.long, device=dev)))
        return out


class VisionZip(TokenReducer):
    """VisionZip (Yang et al., CVPR 2025, "VisionZip: Longer is Better but Not Necessary in
    Vision Language Models"), per frame. Dominant tokens: the top scores (the paper's [CLS]
    attention; here the given scores). Contextual tokens: of the rest, `k - dominant` targets
    taken at a uniform stride, and every other remaining token is averaged into its most similar
    target (the paper uses the last layer's keys; we use the features). The split follows the
    paper's 54 dominant + 10 contextual of 64. merge="ot" folds the remaining tokens into the
    targets by OT instead; merge=None keeps dominant + targets only."""
    name = "visionzip"
    needs_scores = True
    default_merge = "average"
    DOMINANT_SHARE = 54 / 64

    def groups(self, video: Video, grid, frame_budget: List[int]) -> List[Group]:
        x, n = video.features, video.features.shape[1]
        out = []
        for t, k in enumerate(frame_budget):
            dominant = max(1, round(k * self.DOMINANT_SHARE)) if k else 0
            dom = top_indices(video.scores[t], dominant)
            rest = _rest(n, dom)
            contextual = k - dominant
            if contextual and len(rest):
                stride = max(1, len(rest) // contextual)
                targets = rest[::stride][:contextual]
            else:
                targets = rest[:0]
            others = _rest(n, torch.cat([dom, targets]))
            kept = torch.sort(torch.cat([dom, targets])).values
            receivers = torch.isin(kept, targets)
            out.append(_frame_group(t, n, kept, others, _to_nearest(x[t], targets, others), receivers))
        return out


class ToMe(TokenReducer):
    """Token Merging (Bolya et al., ICLR 2023, "Token Merging: Your ViT But Faster"), per frame:
    rounds of bipartite soft matching (alternate tokens into sets A and B, each A token's most
    cosine-similar B token, the r best edges merged with size-weighted averages) until the frame
    has its k tokens. Adapted: applied to the output features rather than inside the ViT's
    layers, and r per round is as large as allowed (min(n - k, |A|)), so as few rounds as
    possible. Survivors are placed at their own positions; merge="average" (default) reproduces
    ToMe's size-weighted averages exactly, "ot" folds every merged-away token into the survivors
    by OT instead."""
    name = "tome"
    default_merge = "average"

    def groups(self, video: Video, grid, frame_budget: List[int]) -> List[Group]:
        x, n = video.features, video.features.shape[1]
        out = []
        for t, k in enumerate(frame_budget):
            feat = x[t].to(torch.float64 if x.dtype == torch.float64 else torch.float32)
            size = torch.ones(n, dtype=feat.dtype, device=x.device)
            alive = torch.arange(n, device=x.device)
            dest = torch.arange(n, device=x.device)  # where each token was merged to
            while len(alive) > max(k, 1):
                a, b = alive[0::2], alive[1::2]
                r = min(len(alive) - k, len(a))
                unit = torch.nn.functional.normalize(feat, dim=-1, eps=1e-12)
                sim = unit[a] @ unit[b].T
                match = sim.argmax(1)  # ties to the lower index
                best = sim.gather(1, match[:, None]).squeeze(1)
                go = torch.sort(-best, stable=True).indices[:r]
                src, dst = a[go], b[match[go]]
                # Size-weighted average: sum the weighted features, then divide by the new sizes.
                weighted = (feat * size[:, None]).index_add(0, dst, feat[src] * size[src, None])
                size = size.index_add(0, dst, size[src])
                feat = weighted / size[:, None]
                dest[src] = dst
                alive = alive[~torch.isin(alive, src)]
            survivors = alive if k else alive[:0]
            out.append(_frame_group(t, n, survivors, _rest(n, survivors),
                                    _final(dest)[_rest(n, survivors)]))
        return out


class DyCoke(TokenReducer):
    """DyCoke's temporal token merging (Tao et al., CVPR 2025, "DyCoke: Dynamic Compression of
    Tokens for Fast Video Large Language Models"). Frames are taken in windows of 4; each token of
    a later frame is compared with the token at the same position of the window's first frame
    (cosine), and the most similar ones are merged into it (averaged), keeping the window's budget
    of tokens: the whole first frame plus the least similar later tokens. Adapted: the paper
    prunes by a similarity threshold; we keep an exact budget, and where the window's budget is
    below one frame, the first frame keeps its top-score tokens (in the spirit of DyCoke's
    attention-based second stage) and the other tokens go to their nearest kept token. Its
    KV-cache pruning during decoding is outside a token reducer's reach."""
    name = "dycoke"
    needs_scores = True
    default_merge = "average"

    def __init__(self, retention: float = 0.10, *, window: int = 4, **kw):
        super().__init__(retention, **kw)
        self.window = validate.integer(window, "window", 1)

    def groups(self, video: Video, grid, frame_budget: List[int]) -> List[Group]:
        x = video.features
        frames, n, d = x.shape
        flat = x.reshape(frames * n, d)
        out = []
        for s in range(0, frames, self.window):
            e = min(s + self.window, frames)
            budget = sum(frame_budget[s:e])
            later = torch.arange((s + 1) * n, e * n, device=x.device)
            if budget >= n:
                unit = torch.nn.functional.normalize(x[s:e].float(), dim=-1, eps=1e-12)
                sim = (unit[1:] * unit[:1]).sum(-1).flatten()  # [(e-s-1) * n], (frame, position)
                dynamic = later[torch.sort(sim, stable=True).indices[:budget - n]]
                kept = torch.sort(torch.cat([torch.arange(s * n, (s + 1) * n, device=x.device),
                                             dynamic])).values
                dropped = later[~torch.isin(later, dynamic)]
                target = s * n + dropped % n
            else:
                kept = s * n + top_indices(video.scores[s], budget)
                window = torch.arange(s * n, e * n, device=x.device)
                dropped = window[~torch.isin(window, kept)]
                same = s * n + dropped % n
                target = torch.where(torch.isin(same, kept), same, _to_nearest(flat, kept, dropped))
                if budget == 0:
                    dropped = target = kept
            out.append(Group((s, e), kept, dropped, target,
                             torch.ones(len(kept), dtype=torch.bool, device=x.device)))
        return out


def _final(dest: torch.Tensor) -> torch.Tensor:
    """Follow merge chains to the surviving token."""
    while True:
        nxt = dest[dest]
        if torch.equal(nxt, dest):
            return dest
        dest = nxt
