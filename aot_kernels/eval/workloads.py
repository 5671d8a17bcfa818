"""Paper-sized inputs shared by the demo, the benchmarks and the tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int  # problems (frames for the intra stage)
    anchors: int  # M
    sources: int  # N
    dim: int  # D
    eps: float = 0.1
    max_iter: int = 100


# LLaVA-OneVision-7B, 32 frames of 196 tokens, 10% retention: 126 anchors per frame and the
# other 70 tokens folded in (SPEC §6), SigLIP features (D = 1152) or projected (D = 3584).
PAPER_INTRA = Workload("paper-intra", 32, 126, 70, 1152)
PAPER_INTRA_3584 = Workload("paper-intra-3584", 32, 126, 70, 3584)
# Inter-frame stage: 8 clips x 3 later frames, anchors vs the next frame's anchors.
PAPER_INTER = Workload("paper-inter", 24, 126, 126, 1152)


def make_inputs(w: Workload, dtype=torch.float32, seed: int = 0):
    """Anchors [B,M,D] and sources [B,N,D]: each source is a noisy copy of a random anchor,
    like neighbouring patches of one frame (random Gaussian tokens would all be orthogonal)."""
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(w.batch, w.anchors, w.dim, generator=g)
    pick = torch.randint(0, w.anchors, (w.batch, w.sources), generator=g)
    sources = torch.gather(anchors, 1, pick.unsqueeze(2).expand(-1, -1, w.dim))
    sources = sources + 0.8 * torch.randn(w.batch, w.sources, w.dim, generator=g)
    return anchors.to(dtype), sources.to(dtype)
