"""Token scores for encoders that give none (SPEC §4's rule for encoders without [CLS])."""
from __future__ import annotations

import torch


def self_attention_scores(features: torch.Tensor) -> torch.Tensor:
    """[F, N]: mean attention each token receives, softmax(X X^T / sqrt(D)) per frame (SPEC §4's
    rule for encoders without [CLS]; one head)."""
    x = features.float()
    attn = torch.softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, dim=-1)
    return attn.mean(1)
