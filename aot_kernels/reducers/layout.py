"""The AOT output layout (SPEC §5): where each output token comes from, and the per-video
outputs assembled from stage 3 by index arithmetic on the device.

Output order, video by video and clip by clip: the clip's M anchors (raster order, at its
first frame), then its dynamic tokens by (frame, position). Only threshold mode reads counts
on the host (each video's token count is data there).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from .inter import InterResult
from .intra import IntraResult
from .planning import Plan
from .token_map import Mix, Take, TokenMap, fold_weights


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


def assemble(inter: InterResult, plans: Sequence[Plan], n: int,
             intra: Optional[IntraResult] = None, lam_intra: float = 1.0,
             clip_q: Optional[torch.Tensor] = None) -> List[Tuple]:
    """Per video of `plans` (N = n tokens per frame): (tokens [K,D], sizes [K], frame_ids [K],
    positions [K] = frame * n + token index, dynamic [K] bool), in SPEC §5 order. With intra
    (an IntraResult with its plan), lam_intra and clip_q (`clip_weights`, or None for lam_inter
    0), each tuple gains the video's TokenMap (`token_maps`)."""
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
    parts = list(zip(*(torch.split(t, where.tokens) for t in outputs)))
    if intra is None:
        return parts
    maps = token_maps(intra, inter, plans, n, lam_intra, clip_q, where)
    return [part + (tm,) for part, tm in zip(parts, maps)]


def token_maps(intra: IntraResult, inter: InterResult, plans: Sequence[Plan], n: int,
               lam_intra: float, clip_q: Optional[torch.Tensor], where: Layout
               ) -> List[TokenMap]:
    """Each video's reduction as a TokenMap over its [F,N] tokens: the intra-frame fold (Mix,
    rows frame t slot j = Eq. 11's weights over the frame's anchor and sources), the clip
    anchors (Mix with clip_q over the clip's frames' rows; lam_inter 0: none, the first frame's
    rows are the anchors), then the output order (Take of `where.source`)."""
    g, m = intra.anchors.shape
    c, length = inter.clips.local.shape
    dev = intra.anchors.device
    if intra.plan is not None:
        index = torch.cat([intra.anchors, intra.sources], 1)
        weight = fold_weights(intra.plan, lam_intra)
    else:  # M = N: nothing folded
        index = intra.anchors
        weight = torch.eye(m, dtype=intra.sizes.dtype, device=dev).unsqueeze(0)
    local = inter.clips.local
    slots = torch.arange(m, device=dev)
    maps, frame0, clip0, out0 = [], 0, 0, 0
    for p, count in zip(plans, where.tokens):
        frames, clips = p.clips[-1][1], len(p.clips)
        base1 = frames * n  # rows of the intra-frame tokens: base1 + t*M + j
        base2 = base1 + frames * m  # rows of the clip anchors: base2 + c*M + j
        starts = (torch.arange(frames, device=dev) * n).unsqueeze(1)
        steps = [Mix(starts + index[frame0:frame0 + frames],
                     weight if weight.shape[0] == 1 else weight[frame0:frame0 + frames])]
        own = local[clip0:clip0 + clips]  # [C_b, L] frames within the video
        rows = base1 + (own.unsqueeze(2) * m + slots).reshape(clips, length * m)
        if clip_q is not None:
            steps.append(Mix(rows, clip_q[clip0:clip0 + clips]))
        src = where.source[out0:out0 + count]
        anchor = src < c * m
        cl = torch.where(anchor, src // m, (src - c * m) // m)  # clip, or clip*L + step
        clip = torch.where(anchor, cl, cl // length) - clip0
        step = torch.where(anchor, 0, cl % length)
        frame_row = base1 + own[clip, step] * m + src % m
        take = frame_row if clip_q is None else torch.where(anchor, base2 + clip * m + src % m,
                                                            frame_row)
        steps.append(Take(take))
        maps.append(TokenMap(frames, n, steps))
        frame0, clip0, out0 = frame0 + frames, clip0 + clips, out0 + count
    return maps
