"""Clip split: uniform and FastVID-style dynamic segmentation, against the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aot_kernels.reducers.clips import dynamic_clips, uniform_clips
from reference import selection_reference as R


@pytest.mark.parametrize("frames,clip_len", [(32, 4), (30, 4), (1, 4), (7, 1), (5, 10)])
def test_uniform(frames, clip_len):
    assert uniform_clips(frames, clip_len) == R.uniform_clips(frames, clip_len)


def scene_video(seed, frames=32, dim=16, cut_at=(11, 23)):
    g = torch.Generator().manual_seed(seed)
    scenes = torch.randn(len(cut_at) + 1, dim, generator=g, dtype=torch.float64)
    scene = torch.bucketize(torch.arange(frames), torch.tensor(cut_at), right=True)
    return scenes[scene] + 0.05 * torch.randn(frames, dim, generator=g, dtype=torch.float64)


def test_dynamic_cuts_at_scene_changes():
    video = scene_video(0)
    clips = dynamic_clips(video, num_clips=3, threshold=0.5)
    assert clips == [(0, 11), (11, 23), (23, 32)]
    assert clips == R.dynamic_clips(video.numpy(), 3, 0.5)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(1, 10), st.floats(-1.0, 1.0), st.integers(0, 10**6))
def test_dynamic_matches_reference(frames, num_clips, threshold, seed):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(frames, 6, generator=g, dtype=torch.float64)
    clips = dynamic_clips(video, num_clips, threshold)
    assert clips == R.dynamic_clips(video.numpy(), num_clips, threshold)
    assert clips[0][0] == 0 and clips[-1][1] == frames
    assert all(a[1] == b[0] for a, b in zip(clips, clips[1:]))
    assert len(clips) >= min(num_clips, frames)


def test_bad_input():
    with pytest.raises(ValueError, match="clip_len"):
        uniform_clips(8, 0)
    with pytest.raises(TypeError, match="frames"):
        uniform_clips(8.0, 2)
    with pytest.raises(ValueError, match="frame_features"):
        dynamic_clips(torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="frame_features"):
        dynamic_clips(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="num_clips"):
        dynamic_clips(torch.randn(4, 3), num_clips=0)
    with pytest.raises(ValueError, match="threshold"):
        dynamic_clips(torch.randn(4, 3), threshold=float("nan"))
