"""How much of a video a reduction kept, measured without an LLM.

attention_fidelity: what a query attending over the reduced tokens reads, against what it reads
over all tokens. set_distance: how far the reduced set is from the original one.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .video import ReducedVideo


def _tokens(features: torch.Tensor) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.dim() not in (2, 3):
        raise ValueError("features must be one video's tokens, [F, N, D] or [T, D]")
    return features.reshape(-1, features.shape[-1])


def _reduced(reduced: ReducedVideo, dim: int):
    if not isinstance(reduced, ReducedVideo):
        raise TypeError(f"reduced must be a ReducedVideo, got {type(reduced).__name__}")
    if reduced.tokens.dim() != 2:
        raise ValueError("reduced must be one video's ReducedVideo (tokens [K, D]), not a batch")
    if reduced.tokens.shape[1] != dim:
        raise ValueError(f"reduced tokens have D={reduced.tokens.shape[1]}, features D={dim}")
    return reduced.tokens, reduced.sizes


def attention_fidelity(features: torch.Tensor, reduced: ReducedVideo, *, num_queries: int = 256,
                       seed: int = 0, scale: Optional[float] = None) -> float:
    """Mean cosine between attention outputs over all tokens and over the reduced tokens.

    Queries are `num_queries` of the video's own tokens (drawn without replacement, seeded).
    Full: softmax(q X^T s) X over the F*N tokens. Reduced: softmax(q R^T s + log sizes) R, the
    proportional attention of ToMe, so that a token standing for n originals weighs like n
    copies. s = 1/sqrt(D) unless given. 1.0 means the reduced set answers every query exactly.
    """
    x = _tokens(features)
    r, sizes = _reduced(reduced, x.shape[1])
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, r, sizes = x.to(cd), r.to(cd), sizes.to(cd)
    scale = 1.0 / math.sqrt(x.shape[1]) if scale is None else float(scale)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x), generator=gen)[:min(num_queries, len(x))].to(x.device)
    q = x[pick]
    full = torch.softmax(q @ x.T * scale, dim=1) @ x
    bias = torch.log(sizes.clamp_min(torch.finfo(cd).tiny))
    part = torch.softmax(q @ r.T * scale + bias, dim=1) @ r
    return F.cosine_similarity(full, part, dim=1, eps=1e-12).mean().item()


def set_distance(features: torch.Tensor, reduced: ReducedVideo) -> float:
    """Symmetric Chamfer distance in cosine distance (1 - cos), in [0, 2]:
    half the mean over original tokens of the distance to their nearest reduced token (coverage)
    plus half the mean over reduced tokens of the distance to their nearest original token
    (faithfulness: a merged token far from every real one costs). 0 for an identical set."""
    x = F.normalize(_tokens(features).float(), dim=1, eps=1e-12)
    r = F.normalize(_reduced(reduced, x.shape[1])[0].float(), dim=1, eps=1e-12)
    sim = x @ r.T
    return 0.5 * ((1 - sim.max(1).values).mean() + (1 - sim.max(0).values).mean()).item()
