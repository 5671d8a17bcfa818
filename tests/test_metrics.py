"""Fidelity metrics: invariants that a wrong metric would break."""
import pytest
import torch

from aot_kernels import metrics, reducers
from aot_kernels.video import ReducedVideo


def reduced(tokens, sizes, frames=1, n=None):
    k = len(tokens)
    pos = torch.arange(k)
    return ReducedVideo(tokens, pos // (n or k), pos, sizes, torch.zeros(k, dtype=torch.bool),
                        [(0, frames)], (1, n or k))


def test_keeping_everything_is_perfect():
    x = torch.randn(4, 9, 16, dtype=torch.float64)
    out = reducers.build("topk", retention=1.0)(x, torch.rand(4, 9, dtype=torch.float64), grid=(3, 3))
    assert metrics.attention_fidelity(x, out) == pytest.approx(1.0, abs=1e-12)
    assert metrics.set_distance(x, out) == pytest.approx(0.0, abs=1e-6)


def test_proportional_attention_makes_merged_duplicates_exact():
    """Four identical frames folded into one frame of size-4 tokens: attention over the reduced
    set with log-size bias reads exactly what it reads over all 4 copies; without the sizes it
    would not (check that the metric notices)."""
    g = torch.Generator().manual_seed(0)
    frame = torch.randn(12, 8, generator=g, dtype=torch.float64) * 3
    x = frame.repeat(4, 1, 1)
    exact = reduced(frame, torch.full((12,), 4.0, dtype=torch.float64))
    assert metrics.attention_fidelity(x, exact) == pytest.approx(1.0, abs=1e-12)
    # Uneven multiplicities: the first 6 tokens appear 3 times, the rest once. With the sizes
    # the reduced set is exact; without them (all ones) it is not.
    uneven = torch.cat([frame[:6], frame[:6], frame]).unsqueeze(0)
    sizes = torch.tensor([3.0] * 6 + [1.0] * 6, dtype=torch.float64)
    assert metrics.attention_fidelity(uneven, reduced(frame, sizes)) == pytest.approx(1.0, abs=1e-12)
    flat = dict(scale=0.05)  # near-uniform attention, where multiplicities matter most
    assert metrics.attention_fidelity(uneven, reduced(frame, sizes), **flat) == pytest.approx(1.0, abs=1e-12)
    assert metrics.attention_fidelity(uneven, reduced(frame, torch.ones(12, dtype=torch.float64)), **flat) < 0.99


def test_fidelity_drops_as_tokens_are_removed():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, 12, generator=g, dtype=torch.float64)
    s = torch.rand(6, 16, generator=g, dtype=torch.float64)
    fid = [metrics.attention_fidelity(x, reducers.build("random", retention=r, merge=None)(x, s))
           for r in (1.0, 0.5, 0.1)]
    assert fid[0] > fid[1] > fid[2]


def test_set_distance_is_chamfer_in_cosine_distance():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    one = reduced(torch.tensor([[1.0, 0.0]]), torch.ones(1))
    # originals: 0 and 1 (mean 0.5); reduced: 0 -> 0.5 * (0.5 + 0) = 0.25
    assert metrics.set_distance(x, one) == pytest.approx(0.25)


def test_bad_arguments_are_named():
    x = torch.randn(2, 4, 8)
    out = reducers.build("random", retention=0.5)(x)
    with pytest.raises(TypeError, match="ReducedVideo"):
        metrics.attention_fidelity(x, out.tokens)
    with pytest.raises(ValueError, match="D=8"):
        metrics.set_distance(torch.randn(2, 4, 6), out)
    batch = reducers.build("random", retention=0.5)(torch.stack([x, x]))
    with pytest.raises(ValueError, match="batch"):
        metrics.attention_fidelity(x, batch)
    with pytest.raises(ValueError, match="features"):
        metrics.set_distance(torch.randn(8), out)
