"""A reduction as an operator on any per-token tensor (SPEC §11: DeepStack features, or anything
else a model carries per token, reduced with the same selection and the same merge weights).

Every reducer's output token is a weighted mean of the input tokens whose weights depend on the
features only through the reducer's decisions (selection, OT plans): fixed those, the reduction
is linear. A TokenMap is that linear map, recorded as a short straight-line program over a table
of rows: the table starts as the video's F*N tokens (flat index t*N + n); each step appends
rows that are weighted sums of rows already there; the last step's rows are the output [K, *].
Each output row's weights sum to 1, so a constant tensor maps to itself and a merged token's
extra feature is the same weighted mean as its main feature.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch


class Take(NamedTuple):
    """rows = table[index]: index [K] int64."""
    index: torch.Tensor


class Mix(NamedTuple):
    """Dense weighted sums in batches (an OT fold): rows [B*M], row b*M + j = sum_p
    weight[b, j, p] * table[index[b, p]]. index [B,P] int64; weight [B,M,P] (or [1,M,P], the
    same weights for every b). Padding: any valid index with weight 0."""
    index: torch.Tensor
    weight: torch.Tensor


class Scatter(NamedTuple):
    """Sparse weighted sums (averages of ragged groups): rows [count], row r = sum over e with
    target[e] = r of weight[e] * table[index[e]]. target, index [E] int64; weight [E]."""
    target: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor
    count: int


Step = Union[Take, Mix, Scatter]


class TokenMap:
    """The linear map of one video's reduction: values [F,N,*] -> [K,*] (module docstring).

    frames, tokens: the input's F and N; steps: Take / Mix / Scatter in order, on one device;
    dtype: the reduction's precision (float32, or float64 for a float64 reduction; default the
    weights'). Call it with any floating tensor [F,N,*] on that device; the result has the
    values' dtype, computed in at least `dtype`.
    """

    def __init__(self, frames: int, tokens: int, steps: Sequence[Step],
                 dtype: Optional[torch.dtype] = None):
        if not steps:
            raise ValueError("a TokenMap needs at least one step")
        self.frames, self.tokens, self.steps = int(frames), int(tokens), tuple(steps)
        self.outputs = _rows(self.steps[-1])
        weighted = [s.weight.dtype for s in self.steps if not isinstance(s, Take)]
        self.dtype = dtype or (weighted[0] if weighted else torch.float32)

    @property
    def device(self) -> torch.device:
        return self.steps[-1].index.device

    def __len__(self) -> int:
        return self.outputs

    def __repr__(self) -> str:
        kinds = ", ".join(type(s).__name__ for s in self.steps)
        return f"TokenMap([{self.frames}, {self.tokens}] -> {self.outputs}: {kinds})"

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        _check(values, (self.frames, self.tokens), self.device, "values")
        return self._run(values)

    def _run(self, values: torch.Tensor) -> torch.Tensor:
        rest = values.shape[2:]
        cd = torch.promote_types(self.dtype, values.dtype)
        flat = values.reshape(self.frames * self.tokens, -1)
        # One table for the inputs and every intermediate step's rows (no copy per step).
        filled = flat.shape[0]
        table = flat.new_empty(filled + sum(_rows(s) for s in self.steps[:-1]), flat.shape[1],
                               dtype=cd)
        table[:filled] = flat
        for step in self.steps[:-1]:
            rows = _rows(step)
            table[filled:filled + rows] = _apply(step, table[:filled])
            filled += rows
        out = _apply(self.steps[-1], table[:filled])
        return out.reshape(out.shape[0], *rest).to(values.dtype)

    def reordered(self, order: torch.Tensor) -> "TokenMap":
        """The same map with its outputs permuted: output k of the new map is output order[k]."""
        base = self.frames * self.tokens + sum(_rows(s) for s in self.steps[:-1])
        return TokenMap(self.frames, self.tokens, self.steps + (Take(base + order),), self.dtype)

    def matrix(self) -> torch.Tensor:
        """The map as a dense [K, F*N] matrix (for tests and inspection; K*F*N entries)."""
        eye = torch.eye(self.frames * self.tokens, dtype=self.dtype, device=self.device)
        return self._run(eye.view(self.frames, self.tokens, -1))


class TokenMaps:
    """The maps of a batch of reductions that kept the same count: values [B,F,N,*] ->
    [B,K,*]."""

    def __init__(self, maps: Sequence[TokenMap]):
        self.maps = tuple(maps)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, b: int) -> TokenMap:
        return self.maps[b]

    def __repr__(self) -> str:
        return f"TokenMaps({len(self.maps)} x {self.maps[0]!r})"

    @property
    def device(self) -> torch.device:
        return self.maps[0].device

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        first = self.maps[0]
        _check(values, (len(self.maps), first.frames, first.tokens), first.device, "values")
        return torch.stack([m._run(v) for m, v in zip(self.maps, values)])

    def matrix(self) -> torch.Tensor:
        """[B, K, F*N]: each video's map as a dense matrix (TokenMap.matrix)."""
        return torch.stack([m.matrix() for m in self.maps])


def _rows(step: Step) -> int:
    if isinstance(step, Take):
        return step.index.shape[0]
    if isinstance(step, Mix):
        return step.index.shape[0] * step.weight.shape[1]
    return step.count


def _apply(step: Step, table: torch.Tensor) -> torch.Tensor:
    if isinstance(step, Take):
        return table.index_select(0, step.index)
    width = table.shape[1]
    if isinstance(step, Mix):
        b, p = step.index.shape
        picked = table.index_select(0, step.index.reshape(-1)).view(b, p, width)
        weight = step.weight.to(table.dtype)
        if weight.shape[0] != b:
            weight = weight.expand(b, -1, -1)
        return torch.bmm(weight, picked).reshape(-1, width)
    out = table.new_zeros(step.count, width)
    return out.index_add_(0, step.target,
                          table.index_select(0, step.index) * step.weight.to(table.dtype)[:, None])


def _check(values, shape: Tuple[int, ...], device, name: str) -> None:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a tensor [{', '.join(map(str, shape))}, ...], got "
                        f"{type(values).__name__}")
    if not values.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor (a weighted mean of its rows is "
                        f"taken), got {values.dtype}")
    if tuple(values.shape[:len(shape)]) != tuple(shape):
        raise ValueError(f"{name} must have shape [{', '.join(map(str, shape))}, ...] (the "
                         f"reduced video's tokens), got {list(values.shape)}")
    if values.device != device:
        raise ValueError(f"{name} is on {values.device} but the reduction is on {device}")


def fold_weights(transport: torch.Tensor, lam: float) -> torch.Tensor:
    """The fold x~_j = (x_j + lam sum_i T_ji y_i) / (1 + lam sum_i T_ji) (Eq. 11 / Eq. 16) as
    weights over [the anchor itself; the sources]: transport [B,M,S] -> [B,M,M+S], each row
    summing to 1 (the plan's own row sums normalise it)."""
    b, m, _ = transport.shape
    norm = 1.0 + lam * transport.sum(2, keepdim=True)
    own = torch.diag_embed(torch.ones(b, m, dtype=transport.dtype, device=transport.device))
    return torch.cat([own, lam * transport], 2) / norm

