"""Variant "authors": the AOT pipeline the authors released (SPEC §8), which produced the paper's
numbers. Same three ops as AOTReducer (SPEC §1-5), applied where and how their code applies them:
on the vision tower's un-pooled grid after the projector, a spatial cost term and a nearest-
anchor blend in the intra-frame step, the model's own pooling with a data-dependent number of
tokens per frame, then time-scaled inter-frame steps with a quantile rule.

Use it to reproduce the paper; use AOTReducer for an exact budget, static shapes and batching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..ops import validate
from ..ops import composite
from ..ops.api import sinkhorn_aggregate
from ..ops.composite import merged_sizes
from .selection import select_anchors
from .token_map import Mix, Take, TokenMap, fold_weights
from .video import ReducedVideo, Video, as_videos, finish, grid_of, map_precision, size_dtype

POOLS = ("bilinear", "average")
SPATIAL_WEIGHT = 0.5  # §8.4
NN_BLEND = 0.1  # §8.5
STOP_TOL = 1e-2  # §8.4
TIME_SIGMA2 = 4.5  # §8.7: 1 - exp(-l^2 / 4.5)


def time_factor(step: int) -> float:
    """1 - exp(-l^2 / 4.5): §8.7's time term, which scales step l's shifted cost (an eps of
    0.1 / time_factor(l) on the unscaled one)."""
    return 1.0 - math.exp(-(step * step) / TIME_SIGMA2)


@dataclass(frozen=True)
class Setting:
    """§8.8: anchors V on the un-pooled grid, keep_ratio, clip_len ("auto": F / 8, §8.7's 4
    frames for 32 and 8 for 64), pooling, inter on/off."""
    anchors: int
    keep_ratio: float
    clip_len: object
    pool: str
    inter: bool


MODELS = ("llava-onevision-7b", "llava-video-7b")
BENCHMARKS = ("mvbench", "egoschema", "videomme", "longvideobench")


def setting(model: str, benchmark: str) -> Setting:
    """The settings of the authors' released scripts (SPEC §8.8)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if model == "llava-video-7b":  # inter-frame OT switched off in their runs; 2x2 average pool
        return Setting(180, 0.3, "auto", "average", False)
    if benchmark in ("mvbench", "egoschema"):
        return Setting(126, 0.3, "auto", "bilinear", True)
    return Setting(108, 0.1, "auto", "bilinear", True)


def grid_positions(grid: Tuple[int, int], device, dtype) -> torch.Tensor:
    """[h*w, 2] = (col, row) / (side - 1): raster positions scaled to [0, 1]^2 (§8.4)."""
    h, w = grid
    rows = torch.arange(h, device=device, dtype=dtype) / max(h - 1, 1)
    cols = torch.arange(w, device=device, dtype=dtype) / max(w - 1, 1)
    return torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1).reshape(h * w, 2)


def pool_maps(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """[G,h,w,C] -> pooled [G,h',w',C] as the models pool: bilinear to ceil(h/2) x ceil(w/2),
    align_corners=False (LLaVA-OneVision), or 2x2 average to floor(h/2) x floor(w/2)
    (LLaVA-Video)."""
    x = maps.permute(0, 3, 1, 2)
    if mode == "bilinear":
        out = F.interpolate(x, size=(-(-x.shape[2] // 2), -(-x.shape[3] // 2)), mode="bilinear",
                            align_corners=False)
    else:
        out = F.avg_pool2d(x, 2)
    return out.permute(0, 2, 3, 1)


def _compact(mask: torch.Tensor):
    """Rows of a [G,L] bool mask packed to the front: (index [G,K] of the True entries in
    ascending order, then padding; real [G,K] bool; counts [G] on the host), K = max count."""
    counts = mask.sum(1)
    k = max(int(counts.max()), 1) if mask.numel() else 1  # the one host read of the pooling stage
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :k]
    real = torch.arange(k, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, real, counts.tolist()


class AuthorsAOTReducer:
    """The authors' released AOT (SPEC §8), called like every reducer.

    reducer(features [F,h*w,D], scores [F,h*w], local_scores [F,h*w], grid=(h, w)) on the
    vision tower's un-pooled grid, with features taken after the projector and before the
    model's pooling; scores: the global score (layer 24: attention each patch receives, summed
    over queries, heads averaged), local_scores: the same at layer 5 (default: scores). Also a
    [B,F,N,D] batch or a list of videos; both give a list (the token counts differ).

    Per frame: `anchors` (V) anchors by §8.3's window rule (126 -> 126, 176 -> 169, 196 -> 188,
    205 -> 202), one intra-frame OT with the spatial cost term (spatial), §8.4's stopping rule
    (tol) and the nearest-anchor blend (nn_blend), the map and the anchor mask pooled as the
    model pools (pool="bilinear": LLaVA-OneVision, 27x27 -> 14x14; "average": LLaVA-Video,
    27x27 -> 13x13), and the pooled tokens whose pooled mask is >= 0.5 kept. With inter=True,
    clips of clip_len frames: the first frame's kept tokens absorb each later frame's in turn
    (cost shifted by its minimum, eps / (1 - exp(-l^2/4.5)) at step l, tokens with confidence
    below the keep_ratio quantile stay dynamic); clip_len="auto" takes F / 8 frames per clip
    (4 for 32 frames, 8 for 64, as released). Output per clip, as released: the first frame's
    kept tokens, the dynamic tokens of the later frames in frame order, then the merged anchors
    (duplicate_anchors=False leaves out the first block).

    ReducedVideo: positions t * P + n and frame_ids refer to the pooled grid (P tokens per
    frame, 196 for LLaVA-OneVision); sizes are the total weight of the pooled tokens in each
    token (SPEC §9, counted in pooled tokens: the intra-frame fold happens inside a pooled token,
    on the un-pooled grid, and is not counted). A kept token counts 1; Eq. 16 weighs a merged
    anchor as one pooled token, so after a step that merged shares p_ij into it its size is
    1 + sum_i p_ij (its earlier history shrunk to one token's worth); cells dropped by the
    >= 0.5 rule count nowhere; with duplicate_anchors a clip's first frame counts twice, once as
    it was and once in the merged anchors; dynamic marks the dynamic tokens; clips and grid
    (the pooled grid) as AOTReducer.
    Each stage is one batched call over every frame of every video, each clip step one over
    every clip; the token counts are data, so the call reads them from the device (one host
    read after pooling, one per clip step and one for the output layout).
    return_map=True (call): `token_map` / `apply(values)` reduce any other tensor on the
    un-pooled grid [F,h*w,*] the same way: the intra-frame fold and blend (their plans and
    nearest anchors), the model's pooling (its fixed bilinear or average weights), the same
    kept cells and each clip step's merge weights (fp16/bf16 then reduced in float32).
    """

    def __init__(self, anchors: int = 126, *, keep_ratio: float = 0.3, clip_len=4,
                 pool: str = "bilinear", grid: Tuple[int, int] = (27, 27), inter: bool = True,
                 duplicate_anchors: bool = True, eps: float = 0.1, max_iter: int = 100,
                 tol: float = STOP_TOL, spatial: float = SPATIAL_WEIGHT,
                 nn_blend: float = NN_BLEND, windows: Tuple[int, int] = (3, 3),
                 backend: str = "auto", check_values: bool = True):
        self.anchors = validate.integer(anchors, "anchors", 1)
        self.keep_ratio = validate._real(keep_ratio, "keep_ratio")
        if not 0.0 <= self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
        # "auto": F / 8 frames per clip (SPEC §8.7: 4 for 32 frames, 8 for 64), at least 1.
        self.clip_len = clip_len if clip_len == "auto" else validate.integer(clip_len, "clip_len", 1)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.grid = validate.pair_of_ints(grid, "grid")
        self.windows = validate.pair_of_ints(windows, "windows")
        validate.solver(eps, max_iter, tol)
        self.spatial = validate._real(spatial, "spatial")
        if self.spatial < 0:
            raise ValueError(f"spatial must be >= 0, got {spatial}")
        self.nn_blend = validate.blend(nn_blend, None, None)
        validate.backend(backend)
        for flag, name in ((inter, "inter"), (duplicate_anchors, "duplicate_anchors"),
                           (check_values, "check_values")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.pool, self.inter, self.duplicate_anchors = pool, inter, duplicate_anchors
        self.eps, self.max_iter, self.tol = float(eps), int(max_iter), float(tol)
        self.backend, self.check_values = backend, check_values

    @classmethod
    def preset(cls, model: str, benchmark: str, **overrides) -> "AuthorsAOTReducer":
        """The authors' setting for `model` on `benchmark` (SPEC §8.8); keywords override."""
        s = setting(model, benchmark)
        config = dict(anchors=s.anchors, keep_ratio=s.keep_ratio, clip_len=s.clip_len,
                      pool=s.pool, inter=s.inter)
        config.update(overrides)
        return cls(**config)

    def __repr__(self) -> str:
        return (f"AuthorsAOTReducer(anchors={self.anchors}, keep_ratio={self.keep_ratio}, "
                f"clip_len={self.clip_len}, pool={self.pool!r}, inter={self.inter})")

    def __call__(self, features, scores, local_scores=None, *, grid=None, return_map=False):
        videos, form = as_videos(features, scores, local_scores, self.check_values)
        if any(v.scores is None for v in videos):
            raise ValueError("AuthorsAOTReducer needs scores [F, N] for every video")
        videos, dtype = map_precision(videos, return_map)
        n = videos[0].features.shape[1]
        hw = grid_of(grid if grid is not None else self.grid, n)
        if hw[0] < 2 or hw[1] < 2:
            raise ValueError(f"grid {hw} is too small to pool 2x2")
        results = self._reduce(videos, hw, return_map)
        return finish(results, "single" if form == "single" else "list", dtype)

    # ---- stages ------------------------------------------------------------------------------
    def _intra(self, feats: torch.Tensor, scores, local, hw, return_map: bool = False):
        """Stages 1-2 for all frames G at once: the maps [G,N,D] with the anchors updated in
        place, the anchor mask [G,N], and (return_map) the pooled cells' weights over each
        frame's tokens [G,P,N] (else None)."""
        picked = select_anchors(scores, local, grid=hw, windows=self.windows,
                                num_anchors=self.anchors, check_values=False,
                                window_rule="released")
        g, n, d = feats.shape
        cd = torch.float64 if feats.dtype == torch.float64 else torch.float32
        pos = grid_positions(hw, feats.device, cd)
        take = lambda t, idx: t.gather(1, idx.unsqueeze(2).expand(-1, -1, t.shape[2]))  # noqa: E731
        maps = feats.clone()
        own = torch.zeros(g, picked.anchors.shape[1], n, dtype=cd, device=feats.device)
        own.scatter_(2, picked.anchors.unsqueeze(2), 1.0)  # each anchor row: itself
        rows = own
        if picked.sources.shape[1]:
            x, y = take(feats, picked.anchors), take(feats, picked.sources)
            spatial = {} if not self.spatial else dict(  # spatial 0: no positions (SPEC §8.4)
                anchor_pos=pos[picked.anchors], source_pos=pos[picked.sources],
                spatial=self.spatial)
            out = sinkhorn_aggregate(
                x, y, **spatial, stop="scaling", eps=self.eps, max_iter=self.max_iter,
                tol=self.tol, nn_blend=self.nn_blend, backend=self.backend, check_values=False,
                return_plan=return_map)
            maps.scatter_(1, picked.anchors.unsqueeze(2).expand(-1, -1, d), out.tokens)
            if return_map:  # (1 - b) Eq. 11's fold + b x_NN, both weighted means (§8.5)
                semantic = composite.cosine_cost(x.to(cd), y.to(cd))
                near = composite.nearest_anchor(semantic, torch.ones_like(semantic[:, :, 0]))
                member = torch.zeros_like(semantic).scatter_(1, near.unsqueeze(1), 1.0)
                blend = ((1 - self.nn_blend) * fold_weights(out.plan.to(cd), 1.0)
                         + self.nn_blend * fold_weights(member, 1.0))
                index = torch.cat([picked.anchors, picked.sources], 1)
                rows = torch.zeros_like(own).scatter_(2, index.unsqueeze(1).expand_as(blend),
                                                      blend)
        mask = torch.zeros(g, n, dtype=cd, device=feats.device).scatter_(1, picked.anchors, 1.0)
        if not return_map:
            return maps, mask, None
        # The pooling is linear: the pooled cells' weights over the raw maps (P x N), and each
        # anchor's raw value replaced by its row: W = P + P[:, anchors] (rows - own).
        pool = pool_maps(torch.eye(n, dtype=cd, device=feats.device).view(1, *hw, n),
                         self.pool).reshape(-1, n)
        at_anchors = pool[:, picked.anchors].permute(1, 0, 2)  # [G,P,M]
        return maps, mask, pool.unsqueeze(0) + torch.bmm(at_anchors, rows - own)

    def _reduce(self, videos: List[Video], hw, return_map: bool = False) -> List[ReducedVideo]:
        feats = torch.cat([v.features for v in videos])
        scores = torch.cat([v.scores for v in videos])
        local = torch.cat([v.scores if v.local_scores is None else v.local_scores for v in videos])
        maps, mask, pooled_weights = self._intra(feats, scores, local, hw, return_map)
        g, n, d = maps.shape
        pooled = pool_maps(maps.view(g, hw[0], hw[1], d), self.pool)
        grid_out = tuple(pooled.shape[1:3])
        per_frame = grid_out[0] * grid_out[1]
        pooled = pooled.reshape(g, per_frame, d)
        pooled_mask = pool_maps(mask.view(g, hw[0], hw[1], 1), self.pool).reshape(g, per_frame)
        index, real, counts = _compact(pooled_mask >= 0.5)
        tokens = pooled.gather(1, index.unsqueeze(2).expand(-1, -1, d))  # [G,K,D] kept, packed
        starts = [0]
        for v in videos:
            starts.append(starts[-1] + v.frames)
        if not self.inter:
            rows = [[(t, k) for t in range(s, e) for k in range(counts[t])]
                    for s, e in zip(starts[:-1], starts[1:])]
            spans = [[(0, e - s)] for s, e in zip(starts[:-1], starts[1:])]
            flags = [[False] * len(r) for r in rows]
            return self._assemble(tokens, index, None, None, rows, flags, starts, spans,
                                  per_frame, grid_out, pooled_weights=pooled_weights, n=n)
        return self._inter(tokens, index, real, counts, starts, per_frame, grid_out,
                           pooled_weights, n)

    def _inter(self, tokens, index, real, counts, starts, per_frame, grid_out,
               pooled_weights=None, n=None):
        """Stage 3: every clip of every video, one batched call per clip step. pooled_weights
        (return_map): also each clip's anchors as weights over its frames' kept slots."""
        clips = []
        for b in range(len(starts) - 1):
            frames = starts[b + 1] - starts[b]
            length = max(frames // 8, 1) if self.clip_len == "auto" else self.clip_len
            clips += [(b, starts[b] + s, min(starts[b] + s + length, starts[b + 1]))
                      for s in range(0, frames, length)]
        sdt = size_dtype(tokens.dtype)
        wdt = torch.float64 if tokens.dtype == torch.float64 else torch.float32
        first = torch.tensor([s for _, s, _ in clips], device=tokens.device)
        anchors = tokens.index_select(0, first)  # [C,K,D]
        anchor_real = real.index_select(0, first)
        anchor_sizes = anchor_real.to(sdt)
        dynamic = {}  # (clip, step) -> dynamic flags of the frame's kept slots, on the host
        longest = max(e - s for _, s, e in clips)
        k_max = tokens.shape[1]
        if pooled_weights is not None:  # clip c's anchors over its frames' slots [C,K,L*K]
            eye = torch.eye(k_max, dtype=wdt, device=tokens.device).expand(len(clips), -1, -1)
            blocks = [eye] + [eye.new_zeros(eye.shape) for _ in range(1, longest)]
        for step in range(1, longest):
            # Clips that run this step: a later frame exists, and both sides have tokens.
            live = [c for c, (_, s, e) in enumerate(clips)
                    if s + step < e and counts[s] and counts[s + step]]
            if not live:
                continue
            at = torch.tensor(live, device=tokens.device)
            frames = torch.tensor([clips[c][1] + step for c in live], device=tokens.device)
            ax = anchor_real.index_select(0, at).to(wdt)
            out = sinkhorn_aggregate(
                anchors.index_select(0, at), tokens.index_select(0, frames),
                anchor_weight=ax / ax.sum(1, keepdim=True),  # probabilities over real anchors
                source_weight=real.index_select(0, frames).to(wdt),
                eps=self.eps / time_factor(step), max_iter=self.max_iter, tol=self.tol,
                stop="scaling", keep_quantile=self.keep_ratio, shift_min=True,
                backend=self.backend, check_values=False, return_plan=pooled_weights is not None)
            anchors = anchors.index_copy(0, at, out.tokens)
            if pooled_weights is not None:  # Eq. 16 with lam 1 on the merge weights p_ij
                w = composite.merge_weights(out.plan.to(wdt), real.index_select(0, frames).to(wdt),
                                            out.kept)
                weight = eye.new_zeros(eye.shape).index_copy(0, at, w)
                norm = 1.0 + weight.sum(2, keepdim=True)
                blocks = [b / norm for b in blocks[:step]] + [weight / norm] + blocks[step + 1:]
            # SPEC §9 with Eq. 16 (lam 1): merged pooled tokens count 1 each, so an anchor that
            # received P_j becomes 1 + P_j (merged_sizes with average size 1).
            mass = out.mass.to(sdt)
            anchor_sizes = anchor_sizes.index_copy(
                0, at, merged_sizes(anchor_sizes.index_select(0, at), mass, mass, 1.0))
            for c, kept in zip(live, out.kept.tolist()):  # one host read per clip step
                dynamic[(c, step)] = kept
        # Output rows: (frame, slot) for tokens as they are, (None, (clip, slot)) for anchors.
        rows, flags, spans = [[] for _ in starts[:-1]], [[] for _ in starts[:-1]], \
            [[] for _ in starts[:-1]]
        for c, (b, s, e) in enumerate(clips):
            spans[b].append((s - starts[b], e - starts[b]))
            if self.duplicate_anchors:
                rows[b] += [(s, k) for k in range(counts[s])]
                flags[b] += [False] * counts[s]
            for step in range(1, e - s):
                t = s + step
                # Not run: nothing in frame t, or no anchors to merge into (every token stays).
                kept = dynamic.get((c, step), [True] * counts[t])
                picked = [(t, k) for k in range(counts[t]) if kept[k]]
                rows[b] += picked
                flags[b] += [True] * len(picked)
            rows[b] += [(None, (c, k)) for k in range(counts[s])]
            flags[b] += [False] * counts[s]
        clip_q = None if pooled_weights is None else (torch.cat(blocks, 2), clips)
        return self._assemble(tokens, index, anchors, anchor_sizes, rows, flags, starts, spans,
                              per_frame, grid_out, first=[s for _, s, _ in clips],
                              pooled_weights=pooled_weights, n=n, clip_q=clip_q)

    @staticmethod
    def _assemble(tokens, index, anchors, anchor_sizes, rows, flags, starts, spans, per_frame,
                  grid_out, first=None, pooled_weights=None, n=None, clip_q=None
                  ) -> List[ReducedVideo]:
        """One gather per output field over [kept tokens; merged anchors]: row (t, k) is frame t's
        k-th kept token, (None, (c, k)) clip c's k-th merged anchor (at its first frame).
        pooled_weights [G,P,N] (and clip_q: (weights [C,K,L*K], clips)): each video's TokenMap,
        rows base1 + t*P + cell for its pooled cells, base2 + c*K + k for its clips' anchors."""
        g, k_max, d = tokens.shape
        dev = tokens.device
        table = tokens.reshape(g * k_max, d)
        sizes = torch.ones(g * k_max, dtype=size_dtype(tokens.dtype), device=dev)
        if anchors is not None:
            table = torch.cat([table, anchors.reshape(-1, d)])
            sizes = torch.cat([sizes, anchor_sizes.reshape(-1)])
        index_host = index.tolist()
        results = []
        for b, video_rows in enumerate(rows):
            flat, frame_ids, positions = [], [], []
            for t, k in video_rows:
                if t is None:  # a merged anchor: clip c's slot k, at the clip's first frame
                    c, slot = k
                    flat.append(g * k_max + c * k_max + slot)
                    t, k = first[c], slot
                else:
                    flat.append(t * k_max + k)
                frame_ids.append(t - starts[b])
                positions.append((t - starts[b]) * per_frame + index_host[t][k])
            at = torch.tensor(flat, dtype=torch.long, device=dev)
            token_map = None
            if pooled_weights is not None:
                token_map = AuthorsAOTReducer._token_map(video_rows, starts[b], starts[b + 1],
                                                         pooled_weights, index_host, per_frame,
                                                         n, clip_q, first, k_max, dev)
            results.append(ReducedVideo(
                table.index_select(0, at),
                torch.tensor(frame_ids, dtype=torch.long, device=dev),
                torch.tensor(positions, dtype=torch.long, device=dev),
                sizes.index_select(0, at), torch.tensor(flags[b], dtype=torch.bool, device=dev),
                spans[b], grid_out,
                dict(tokens_out=len(flat), pooled_tokens_per_frame=per_frame), token_map))
        return results

    @staticmethod
    def _token_map(video_rows, start, end, pooled_weights, index_host, per_frame, n, clip_q,
                   first, k_max, dev) -> TokenMap:
        """One video's map (frames start..end of the stack): its pooled cells (Mix), its clips'
        anchors over their frames' kept cells (Mix, with inter), then the output rows (Take)."""
        frames = end - start
        base1 = frames * n
        base2 = base1 + frames * per_frame
        cell = lambda t, k: base1 + (t - start) * per_frame + index_host[t][k]  # noqa: E731
        starts = (torch.arange(frames, device=dev) * n).unsqueeze(1)
        steps = [Mix(starts + torch.arange(n, device=dev), pooled_weights[start:end])]
        own = []
        if clip_q is not None:
            weights, clips = clip_q
            own = [c for c, (_, s, _) in enumerate(clips) if start <= s < end]
            length = weights.shape[2] // k_max
            slots = [[cell(min(clips[c][1] + step, clips[c][2] - 1), k)
                      for step in range(length) for k in range(k_max)] for c in own]
            steps.append(Mix(torch.tensor(slots, dtype=torch.long, device=dev),
                             weights[own[0]:own[-1] + 1]))
        take = [base2 + (k[0] - own[0]) * k_max + k[1] if t is None else cell(t, k)
                for t, k in video_rows]
        steps.append(Take(torch.tensor(take, dtype=torch.long, device=dev)))
        return TokenMap(frames, n, steps)
