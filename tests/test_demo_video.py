"""The demo's embedded video: real photos, a fixed descriptor, SigLIP-rule scores."""
import numpy as np
import torch

from aot_kernels import demo
from aot_kernels.eval import encoders, videos
from aot_kernels.reducers.scores import self_attention_scores
from aot_kernels.reducers.clips import dynamic_clips


def test_demo_video_is_fixed_and_has_its_scene_cut():
    a, b = demo.demo_video(dim=64, frames=24), demo.demo_video(dim=64, frames=24)
    assert a.features.shape == (24, 196, 64) and a.grid == (14, 14) and a.cut == 20
    assert torch.equal(a.features, b.features)  # deterministic
    assert a.frames.shape == (24, 224, 224, 3) and 0.0 <= a.frames.min() and a.frames.max() <= 1.0
    g = torch.nn.functional.normalize(a.features.mean(1), dim=1)
    sims = (g[:-1] * g[1:]).sum(1)
    assert int(sims.argmin()) == a.cut - 1  # the least similar neighbours straddle the cut
    assert (a.cut - 1) in [e - 1 for _, e in dynamic_clips(a.features.mean(1))]


def test_scores_are_mean_attention_received():
    x = torch.randn(3, 10, 16)
    s = self_attention_scores(x)
    torch.testing.assert_close(s.sum(1), torch.ones(3))  # each query spreads one unit
    attn = torch.softmax(x[1] @ x[1].T / 4.0, dim=1)
    torch.testing.assert_close(s[1], attn.mean(0))


def test_descriptor_has_31_documented_entries():
    frames = videos.photo_frames(frames=2, cut=1)
    desc = encoders.patch_descriptors(frames)
    assert desc.shape == (2, 196, encoders.DESCRIPTOR)
    # mean RGB of the first patch is its pixel mean
    np.testing.assert_allclose(desc[0, 0, :3], frames[0, :16, :16].reshape(-1, 3).mean(0))
    sums = desc[..., 7:15].sum(-1)  # orientation histogram: normalised, or 0 on a flat patch
    assert np.all((np.abs(sums - 1) < 1e-3) | (sums == 0)) and (sums > 0).mean() > 0.9
