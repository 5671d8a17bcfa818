"""The AOT output layout (SPEC §5): where each output token comes from, and the per-video
outputs assembled from stage 3 by index arithmetic on the device.

Output order, video by video and clip by clip: the clip's M anchors (raster order, at its
first frame), then its dynamic tokens by (frame, position). Only threshold mode reads counts
on the host (each video's token count is data there).
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch

from .inter import InterResult
from .planning import Plan


class Layout(NamedTuple):
    """Where each output token comes from, given the dynamic tokens per (clip, step) as a
    device tensor (so the counts may be data: content-adaptive quotas, threshold mode).

    Output tokens, every video's in SPEC §5 order, are rows of the table [C*M clip anchors;
    C*L*M frame tokens]: source [K_1 + K_2 + ...]. frame_ids (within the video) and dynamic
    alike; tokens: K_b per video (host ints)."""
    source: torch.Tensor
    frame_ids: torch.Tensor
    dynamic: torch.Tensor
    tokens: List[int]


def layout(counts: torch.Tensor, kept: torch.Tensor, local: torch.Tensor,
            tokens: List[int]) -> Layout:
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
    return Layout(source, local.view(-1).index_select(0, seg), ~anchor, tokens)


def assemble(inter: InterResult, plans: Sequence[Plan], n: int) -> List[Tuple[torch.Tensor, ...]]:
    """Per video of `plans` (N = n tokens per frame): (tokens [K,D], sizes [K], frame_ids [K],
    positions [K] = frame * n + token index, dynamic [K] bool), in SPEC §5 order."""
    out, frames, frame_sizes, frame_index = inter.out, inter.frames, inter.sizes, inter.index
    c, length, m = frame_sizes.shape
    if inter.keep is not None:  # quota mode: every video keeps its K_b tokens
        counts, budgets = inter.keep, [p.budget for p in plans]
    else:  # threshold mode: the counts are data, read with the reduction's one host sync
        counts = out.kept.sum(2)
        per_clip = (counts[:, 1:].sum(1) + m).tolist()
        budgets, first = [], 0
        for p in plans:
            budgets.append(sum(per_clip[first:first + len(p.clips)]))
            first += len(p.clips)
    where = layout(counts, out.kept, inter.clips.local, budgets)

    def gather(clip_values, frame_values):  # [C,M,...] and [C,L,M,...] -> [sum K,...]
        rest = frame_values.shape[3:]
        table = torch.cat([clip_values.reshape(c * m, *rest),
                           frame_values.reshape(c * length * m, *rest)])
        return table.index_select(0, where.source)

    toks = gather(out.anchors, frames)
    toks_sizes = gather(out.sizes, frame_sizes)
    positions = where.frame_ids * n + gather(frame_index[:, 0], frame_index)
    outputs = (toks, toks_sizes, where.frame_ids, positions, where.dynamic)
    return list(zip(*(torch.split(t, where.tokens) for t in outputs)))
