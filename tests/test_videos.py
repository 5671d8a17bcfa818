"""Built-in videos: shapes, determinism, and that each shows what its docstring says."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aot_kernels import demo
from aot_kernels.eval import videos

D = 64  # the geometry does not depend on D (a fixed projection of the descriptors)


def same_place_similarity(features):
    """[F-1]: mean cosine between each token and the token at the same place one frame later."""
    x = F.normalize(features, dim=-1)
    return (x[:-1] * x[1:]).sum(-1).mean(1)


@pytest.mark.parametrize("name", videos.NAMES)
def test_shapes_and_determinism(name):
    v = videos.load(name, dim=D)
    assert v.name == name and v.description
    assert v.features.shape == (32, 196, D) and v.features.dtype == torch.float32
    assert v.scores.shape == (32, 196) and v.grid == (14, 14)
    assert v.pixels.shape == (32, 224, 224, 3) and 0 <= v.pixels.min() and v.pixels.max() <= 1
    torch.testing.assert_close(v.scores.sum(1), torch.ones(32))  # mean attention received
    again = videos._build.__wrapped__(name, D, 32)  # rebuilt from scratch, not the cache
    assert torch.equal(again.features, v.features) and np.array_equal(again.pixels, v.pixels)


def test_demo_entry_is_the_demo_video():
    a, b = videos.load("demo", dim=D), demo.demo_video(dim=D)
    assert torch.equal(a.features, b.features) and a.cuts == [b.cut]


def test_cuts_are_where_stated():
    for name in ("cuts", "demo"):
        v = videos.load(name, dim=D)
        sim = same_place_similarity(v.features)
        lowest = sorted(int(i) + 1 for i in torch.argsort(sim)[:len(v.cuts)])
        assert lowest == v.cuts
    assert videos.load("cuts", dim=D).cuts == [6, 13, 23]


def test_static_is_static_and_pan_moves():
    still = same_place_similarity(videos.load("static", dim=D).features)
    pan = same_place_similarity(videos.load("pan", dim=D).features)
    assert still.min() > 0.95 and pan.max() < 0.7


def test_needle_indices_point_at_the_needles():
    v = videos.load("needle", dim=D)
    assert len(v.needle) == 10
    shown = {}
    for frames, (r, c), colours in videos.NEEDLES:
        pattern = videos.needle_pattern(colours)
        for t in range(32):  # drawn in its frames only
            patch = v.pixels[t, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
            assert np.array_equal(patch, pattern) == (t in frames)
        for t in frames:
            shown[t * 196 + r * 14 + c] = colours
    assert sorted(v.needle.tolist()) == sorted(shown)
    flat = F.normalize(v.features.reshape(-1, D), dim=1)
    rest = torch.ones(len(flat), dtype=torch.bool)
    rest[v.needle] = False
    # distinctive: losing a needle costs (best cosine to any other token well below 1)
    assert (flat[v.needle] @ flat[rest].T).max() < 0.8


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown video"):
        videos.load("nope")
    with pytest.raises(ValueError, match="dim"):
        videos.load("demo", dim=0)
    with pytest.raises(ValueError, match="frames"):
        videos.load("demo", frames=2.5)
    with pytest.raises(ValueError, match="needle"):
        videos.load("needle", frames=10)


def test_ball_is_a_small_object_moving_over_a_still_shot():
    v = videos.load("ball", dim=D)
    size = videos.SIZE
    yy, xx = np.mgrid[0:size, 0:size]
    for t in (0, 15, 31):
        cy, cx = videos.ball_centre(t)
        assert 0 <= cy - videos.BALL_RADIUS and cy + videos.BALL_RADIUS < size  # inside
        assert 0 <= cx - videos.BALL_RADIUS and cx + videos.BALL_RADIUS < size
        r, g, b = v.pixels[t, int(cy), int(cx)]
        assert b > 0.8 and b > 2 * r  # blue at its centre
    (y0, x0), (y1, x1) = videos.ball_centre(0), videos.ball_centre(1)
    far = ((yy - y0) ** 2 + (xx - x0) ** 2 > 40 ** 2) & ((yy - y1) ** 2 + (xx - x1) ** 2 > 40 ** 2)
    assert np.abs(v.pixels[1][far] - v.pixels[0][far]).max() < 0.05  # the rest stays still
    assert 0.3 < np.hypot(y1 - y0, x1 - x0) / 16 < 0.6  # under a patch per frame
    # in tokens: the ball's cell changes when the ball arrives, a far cell stays put
    cell = lambda y, x: int(y // 16) * 14 + int(x // 16)
    x = F.normalize(v.features, dim=-1)
    t = 15
    here = cell(*videos.ball_centre(t))
    assert (x[t, here] * x[0, here]).sum() < 0.9
    assert (x[t, cell(200, 20)] * x[0, cell(200, 20)]).sum() > 0.95
    # a longer video keeps the ball inside to its last frame
    long = videos.load("ball", dim=D, frames=64)
    cy, cx = videos.ball_centre(63, 64)
    assert cy + videos.BALL_RADIUS < size and cx + videos.BALL_RADIUS < size
    r, g, b = long.pixels[63, int(cy), int(cx)]
    assert b > 0.8 and b > 2 * r
