"""What the baseline reducers share: a budget per frame, groups of kept/dropped tokens, and the
swappable merge step that folds dropped tokens into kept ones ("average" or "ot")."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..ops import validate
from ..ops.api import sinkhorn_aggregate
from .selection import even_split
from .token_map import Mix, Scatter, Take, TokenMap, fold_weights
from .video import (Clip, ReducedVideo, Video, as_videos, finish, folded_sizes, grid_of,
                     map_precision, retention as check_retention, size_dtype, token_budget)

MERGES = (None, "average", "ot")


@dataclass
class Group:
    """The decision a reducer made for a span of frames. Indices are flat (t*N + n) into the
    video. kept [k] ascending; dropped [d]; target [d]: the kept token each dropped token is
    averaged into (merge="average"); receivers [k] bool: kept tokens that may absorb dropped
    ones (merge="ot" folds every dropped token into the receivers by OT)."""
    frames: Clip
    kept: torch.Tensor
    dropped: torch.Tensor
    target: torch.Tensor
    receivers: torch.Tensor


def nearest(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar key for each query (ties to the lower index)."""
    dt = torch.float64 if queries.dtype == torch.float64 else torch.float32
    unit = lambda v: F.normalize(v.to(dt), dim=-1, eps=1e-12)  # noqa: E731
    return (unit(queries) @ unit(keys).T).argmax(1)


def top_indices(key: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` largest entries of a 1-D key, ties to the lower index, ascending."""
    return torch.sort(torch.sort(-key, stable=True).indices[:count]).values


class TokenReducer(ABC):
    """Base of the baselines: subclasses implement `groups(video, grid, frame_budget)`.

    retention: kept fraction, K = round(retention F N) per video, spread over frames as evenly as
    possible (remainder to the first frames). merge: None (drop), "average" or "ot":
    - "average": each dropped token is averaged into its target (`Group.target`) with weight 1:
      a kept token becomes the plain mean of its members, size = their count.
    - "ot": each group's dropped tokens are folded into its receivers along an OT plan, each
      dropped token's whole unit mass: one `aot::sinkhorn_aggregate` per group (batched, zero
      weights pad the ragged groups), cosine cost, eps / max_iter, source weights 1 and receiver
      weights N_drop / M_recv each, so every column of the plan is exact, T_ji = p_ij (dropped
      token i's share going to receiver j, sum_j p_ij = 1), and each receiver takes the same
      total. Receiver j becomes (k_j + lam sum_i p_ij y_i) / (1 + lam sum_i p_ij), size
      1 + lam sum_i p_ij. lam (default 1) is the fraction of each dropped token that is folded:
      with lam = 1 every dropped token is absorbed whole and the sizes sum to F*N (groups that
      have receivers); lam = 0 is merge=None.
    Sizes are the total weight of the originals in each token (SPEC §9). Inputs and output as
    AOTReducer: features [F,N,D] | [B,F,N,D] | list, scores [F,N] (needed by some), grid.
    check_values: NaN/inf in the features and scores (one host sync); False skips it. The
    baselines' selections read values (they wait for the device regardless).
    return_map=True (call): the result's `token_map` / `apply` reduce any other per-token
    tensor [F,N,*] with the same groups and weights (fp16/bf16 then reduced in float32).
    """
    name = "base"
    needs_scores = False
    default_merge: Optional[str] = None

    def __init__(self, retention: float = 0.10, *, merge: Optional[str] = "default",
                 eps: float = 0.1, lam: float = 1.0, max_iter: int = 100,
                 backend: str = "auto", grid: Optional[Tuple[int, int]] = None,
                 check_values: bool = True):
        self.retention = check_retention(retention)
        merge = self.default_merge if merge == "default" else merge
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        validate.solver(eps, max_iter, 0.0)
        validate.aggregation(lam, None, None, 1)
        validate.backend(backend)
        self.merge, self.eps, self.lam, self.max_iter = merge, float(eps), float(lam), int(max_iter)
        self.backend, self.grid, self.check_values = backend, grid, bool(check_values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(retention={self.retention}, merge={self.merge!r})"

    @abstractmethod
    def groups(self, video: Video, grid: Tuple[int, int], frame_budget: List[int]) -> List[Group]:
        """The reducer's decision for one video: which tokens stay, which fold where."""

    def __call__(self, features, scores=None, local_scores=None, *, grid=None, return_map=False):
        videos, form = as_videos(features, scores, local_scores, self.check_values)
        videos, dtype = map_precision(videos, return_map)
        if self.needs_scores and any(v.scores is None for v in videos):
            raise ValueError(f"the {self.name!r} reducer ranks tokens by scores: pass scores [F, N]")
        n = videos[0].features.shape[1]
        hw = grid_of(grid if grid is not None else self.grid, n)
        out = []
        for v in videos:
            budget = even_split(token_budget(v.frames, n, self.retention), v.frames)
            out.append(self._merge(v, hw, self.groups(v, hw, budget), return_map))
        return finish(out, form, dtype)

    def _merge(self, video: Video, grid, groups: List[Group], return_map: bool = False
               ) -> ReducedVideo:
        feats = video.features
        frames, n, d = feats.shape
        flat = feats.reshape(frames * n, d)
        sdt = size_dtype(feats.dtype)
        kept = torch.cat([g.kept for g in groups])
        order = torch.argsort(kept)
        kept = kept[order]
        slot = torch.full((frames * n,), -1, dtype=torch.long, device=feats.device)
        slot[kept] = torch.arange(len(kept), device=feats.device)
        sizes = torch.ones(len(kept), dtype=sdt, device=feats.device)
        tokens = flat[kept]
        token_map = TokenMap(frames, n, [Take(kept)], sdt) if return_map else None
        if self.merge == "average":
            dropped = torch.cat([g.dropped for g in groups])
            target = slot[torch.cat([g.target for g in groups])]
            sums = tokens.to(sdt).index_add(0, target, flat[dropped].to(sdt))
            sizes = sizes.index_add(0, target, torch.ones(len(dropped), dtype=sdt, device=feats.device))
            tokens = (sums / sizes.unsqueeze(1)).to(feats.dtype)
            if return_map:  # each kept token: the plain mean of itself and its members
                rows = torch.cat([torch.arange(len(kept), device=feats.device), target])
                token_map = TokenMap(frames, n, [Scatter(rows, torch.cat([kept, dropped]),
                                                         1.0 / sizes[rows], len(kept))])
        elif self.merge == "ot":
            tokens, sizes, token_map = self._fold_ot(flat, slot, tokens, sizes, groups,
                                                     token_map)
        return ReducedVideo(tokens, kept // n, kept, sizes,
                            torch.zeros(len(kept), dtype=torch.bool, device=feats.device),
                            [g.frames for g in groups], grid,
                            {"tokens_in": frames * n, "tokens_out": len(kept)}, token_map)

    def _fold_ot(self, flat, slot, tokens, sizes, groups: List[Group], token_map=None):
        """merge="ot" (class docstring): one padded, batched sinkhorn_aggregate over every group,
        its receivers absorbing its dropped tokens (zero weight pads the ragged groups,
        SPEC §2). The receivers are original tokens, so the fold is Eq. 11 with T = p.
        token_map (the selection's map, or None): returned with the fold's weights added."""
        live = [g for g in groups if len(g.dropped) and bool(g.receivers.any())]
        if not live:
            return tokens, sizes, token_map
        recv = [g.kept[g.receivers] for g in live]
        m, k = max(len(r) for r in recv), max(len(g.dropped) for g in live)
        b, d, dev = len(live), flat.shape[1], flat.device
        anchors = flat.new_zeros(b, m, d)
        sources = flat.new_zeros(b, k, d)
        a_w = torch.zeros(b, m, dtype=size_dtype(flat.dtype), device=dev)
        s_w = torch.zeros(b, k, dtype=a_w.dtype, device=dev)
        for i, (g, r) in enumerate(zip(live, recv)):
            anchors[i, :len(r)] = flat[r]
            sources[i, :len(g.dropped)] = flat[g.dropped]
            # Totals equal (N_drop on both sides): no rescaling, and the solver's exact columns
            # give each dropped token exactly one unit, T_ji = p_ij.
            a_w[i, :len(r)] = len(g.dropped) / len(r)
            s_w[i, :len(g.dropped)] = 1.0
        out = sinkhorn_aggregate(anchors, sources, anchor_weight=a_w, source_weight=s_w,
                                 eps=self.eps, lam=self.lam, max_iter=self.max_iter,
                                 backend=self.backend, check_values=False,  # inputs checked
                                 return_plan=token_map is not None)
        got = folded_sizes(out.mass.to(sizes.dtype), self.lam)
        tokens, sizes = tokens.clone(), sizes.clone()
        for i, r in enumerate(recv):
            tokens[slot[r]] = out.tokens[i, :len(r)]
            sizes[slot[r]] = got[i, :len(r)]
        if token_map is not None:  # receivers from the fold's rows, the rest as selected
            index = torch.zeros(b, m + k, dtype=torch.long, device=dev)  # padding: weight 0
            take = token_map.steps[0].index.clone()
            base = token_map.frames * token_map.tokens
            for i, (g, r) in enumerate(zip(live, recv)):
                index[i, :len(r)] = r
                index[i, m:m + len(g.dropped)] = g.dropped
                take[slot[r]] = base + i * m + torch.arange(len(r), device=dev)
            weight = fold_weights(out.plan.to(a_w.dtype), self.lam)
            token_map = TokenMap(token_map.frames, token_map.tokens,
                                 [Mix(index, weight), Take(take)])
        return tokens, sizes, token_map
