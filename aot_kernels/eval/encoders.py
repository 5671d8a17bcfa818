"""The descriptor tower: the stand-in vision encoder every built-in video goes through.

Each 224 x 224 frame is a 14 x 14 grid of 16 x 16 patches (the LLaVA-OneVision token grid).
Every patch gets a fixed 31-number descriptor, standardised over the video and projected to D by
a fixed Gaussian matrix (seed 0): the tokens' cosine geometry is that of the descriptors. Scores
follow SPEC §4's rule for encoders without [CLS]: the mean attention each token receives under
its frame's own softmax self-attention (`reducers.scores.self_attention_scores`). These are
patch statistics, not ViT tokens.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ..reducers.scores import self_attention_scores

SIZE = 224
PATCH = 16
GRID = (SIZE // PATCH, SIZE // PATCH)
DESCRIPTOR = 31  # 3 mean RGB + 3 std RGB + 1 gradient energy + 8 orientations + 16 layout


def patch_descriptors(frames: np.ndarray) -> np.ndarray:
    """[F, 196, 31] per 16 x 16 patch: mean and std of R, G, B; mean gradient magnitude; an
    8-bin gradient-orientation histogram (magnitude weighted, normalised); the patch's grey
    levels pooled to 4 x 4, minus their mean (layout)."""
    f, h, w, _ = frames.shape
    gh, gw = h // PATCH, w // PATCH
    patches = frames.reshape(f, gh, PATCH, gw, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(f, gh * gw, PATCH, PATCH, 3)
    grey = patches.mean(-1)
    gy, gx = np.gradient(grey, axis=(2, 3))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation
    bins = np.minimum((angle / np.pi * 8).astype(int), 7)
    hist = np.stack([(magnitude * (bins == k)).sum((2, 3)) for k in range(8)], -1)
    hist = hist / (hist.sum(-1, keepdims=True) + 1e-6)
    layout = grey.reshape(f, gh * gw, 4, PATCH // 4, 4, PATCH // 4).mean((3, 5)).reshape(f, gh * gw, 16)
    layout = layout - layout.mean(-1, keepdims=True)
    return np.concatenate([patches.mean((2, 3)), patches.std((2, 3)),
                           magnitude.mean((2, 3))[..., None], hist, layout], -1)


def tokens_from_descriptors(desc: np.ndarray, dim: int) -> torch.Tensor:
    """Standardise each descriptor entry over the video, project to `dim` (fixed seed). The
    projection keeps |x| ~ 2 |z| ~ 11, so a token's self-attention logit |x|^2 / sqrt(D) is a
    few units at D = 1152: attention is neither uniform nor one-hot."""
    z = (desc - desc.mean((0, 1))) / (desc.std((0, 1)) + 1e-6)
    proj = np.random.default_rng(0).standard_normal((desc.shape[-1], dim)) * (2.0 / np.sqrt(dim))
    return torch.from_numpy(z @ proj).float()


def encode(pixels: np.ndarray, dim: int = 1152) -> Tuple[torch.Tensor, torch.Tensor]:
    """Frames [F, 224, 224, 3] in [0, 1] -> (features [F, 196, dim] float32, scores [F, 196]):
    the stand-in vision tower every built-in video goes through (descriptors, projection,
    mean self-attention received)."""
    features = tokens_from_descriptors(patch_descriptors(pixels), dim)
    return features, self_attention_scores(features)
