"""AOT stage 3 (SPEC §5): clip by clip, the first frame's anchors absorb the later frames'
tokens along the OT plan, and the tokens no anchor claims with confidence stay as dynamic
tokens (quota mode: each (clip, step) keeps its quota; threshold mode: those below tau). One
`clip_aggregate` call serves every clip of the videos that share an anchor count M; the clip
index tensors depend on the plans only and are built once per shape and device.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from ..ops import composite
from ..ops.api import ClipResult, clip_aggregate
from .intra import IntraResult
from .planning import OTSettings, Plan
from .video import IndexCache

QUOTAS = ("uniform", "adaptive")
NOVELTY_TOKENS = 32  # tokens per frame that measure a frame's novelty (quota="adaptive")


class ClipInputs(NamedTuple):
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


def clip_inputs(plans: Sequence[Plan], device) -> ClipInputs:
    """The stage-3 inputs of `plans` (the videos sharing M, in order): see ClipInputs."""
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
    return ClipInputs(_long(rows, device), _long(local, device), _long(lengths, device),
                      keep, in_place)


def adaptive_quotas(frames: torch.Tensor, lengths: torch.Tensor, plans: Sequence[Plan],
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


class InterResult(NamedTuple):
    """Stage 3 of the videos sharing M. out: clip_aggregate's result (anchors [C,M,D], sizes
    [C,M], kept [C,L,M] ...); frames [C,L,M,D], sizes [C,L,M], index [C,L,M]: every (clip,
    step)'s intra-frame tokens, their sizes and token indices (step 0: the clip's anchors);
    clips: the ClipInputs; keep [C,L] int64: the dynamic quotas (None in threshold mode)."""
    out: ClipResult
    frames: torch.Tensor
    sizes: torch.Tensor
    index: torch.Tensor
    clips: ClipInputs
    keep: Optional[torch.Tensor]


def inter_frame(intra: IntraResult, plans: List[Plan], *, ot: OTSettings, lam: float,
                tau: Optional[float], quota: str, content_share: float,
                cache: Optional[IndexCache] = None) -> InterResult:
    """Stage 3 of every clip of `plans`' videos at once, from `intra_frame`'s outputs (their
    frames stacked in the same order). lam weighs the folded tokens (0: the clip's anchors are
    its first frame's tokens; the OT only picks the dynamic tokens); tau: threshold mode;
    quota "uniform" (the plans' even quotas) or "adaptive" (`adaptive_quotas` with
    content_share); cache: keeps the clip index tensors per plan shape and device."""
    tokens, sizes, index = intra.tokens, intra.sizes, intra.anchors
    m, d = tokens.shape[1:]
    shape = (m, tuple((tuple(p.clips), None if p.keep is None else tuple(p.keep))
                      for p in plans))
    build = lambda dev: clip_inputs(plans, dev)  # noqa: E731
    clips = build(tokens.device) if cache is None else cache.get(("clips", shape), tokens, build)
    c, length = clips.rows.shape
    rows = clips.rows.flatten()
    take = (lambda t: t) if clips.in_place else (lambda t: t.index_select(0, rows))  # noqa: E731
    frames = take(tokens).view(c, length, m, d)
    frame_sizes = take(sizes).view(c, length, m)
    frame_index = take(index).view(c, length, m)
    keep = clips.keep
    if keep is not None and quota == "adaptive":
        keep = adaptive_quotas(frames, clips.lengths, plans, content_share)
    out = clip_aggregate(frames, clips.lengths, frame_sizes,
                         anchor_weight=ot.anchor_weight(c, m, frames), eps=ot.eps, lam=lam,
                         max_iter=ot.max_iter, tol=ot.tol, tau=tau, keep=keep,
                         backend=ot.backend, check_values=False)
    return InterResult(out, frames, frame_sizes, frame_index, clips, keep)


def clip_weights(inter: InterResult, lam: float, eps: float, anchor_weight) -> torch.Tensor:
    """Each clip's final anchors as weighted means of its frames' intra-frame tokens: Q
    [C,M,L*M], anchor j = sum_p Q[c, j, p] frames[c].flatten(0, 1)[p], rows summing to 1.

    Replays the solved scan (composite.clip_aggregate with the op's potentials and dynamic
    tokens, which records each step's merge weights W_l): Eq. 16's a' = (a + lam W_l s) /
    (1 + lam W_l 1) divides every earlier block by the step's norm and adds lam W_l / norm as
    frame l's block. lam = 0: the first frame's tokens, as they are."""
    frames, out = inter.frames, inter.out
    c, length, m, _ = frames.shape
    cd = composite.compute_dtype(frames.dtype)
    eye = torch.eye(m, dtype=cd, device=frames.device).expand(c, m, m)
    blocks = [eye] + [eye.new_zeros(c, m, m) for _ in range(1, length)]
    if length == 1:  # no later frame: nothing to replay
        return torch.cat(blocks, 2)
    f, g = out.f.to(cd), out.g.to(cd)
    steps: List[torch.Tensor] = []
    composite.clip_aggregate(frames, inter.clips.lengths, inter.sizes, anchor_weight, eps, lam,
                             1, 0.0, replay=(lambda l, cost: (f[:, l], g[:, l]), out.kept),
                             trace=steps)
    for l, weight in enumerate(steps, 1):
        weight = weight.to(cd)
        norm = (1.0 + lam * weight.sum(2, keepdim=True))
        blocks = [b / norm for b in blocks[:l]] + [lam * weight / norm] + blocks[l + 1:]
    return torch.cat(blocks, 2)
