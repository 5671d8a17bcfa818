"""AuthorsAOTReducer (variant "authors", SPEC §8) against reference/authors_reference.py on every
backend, plus the invariants the issue names."""
import math

import numpy as np
import pytest
import torch

import aot_kernels as ak
from aot_kernels import reducers
from aot_kernels.reducers.authors import AuthorsAOTReducer, setting
from reference import authors_reference as A

BACKENDS = ("cpp", "torch")


def video(frames=8, side=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, side * side, d))
    feats = base + 0.5 * rng.normal(size=(frames, side * side, d))
    return feats, rng.random((frames, side * side)), rng.random((frames, side * side))


def check(out, ref, atol):
    assert out.positions.tolist() == ref.positions.tolist()
    assert out.frame_ids.tolist() == ref.frame_ids.tolist()
    np.testing.assert_allclose(out.tokens.double().numpy(), ref.tokens, rtol=0, atol=atol)


def check_sizes(out, ref, atol=1e-9):
    """SPEC §9: sizes are the totals of the weights over the pooled tokens that the reference
    tracks, and size x token = weights @ pooled tokens."""
    np.testing.assert_allclose(out.sizes.double().numpy(), ref.sizes, rtol=0, atol=atol)
    pooled = ref.pooled.reshape(-1, ref.pooled.shape[-1])
    np.testing.assert_allclose(out.sizes.double().numpy()[:, None] * out.tokens.double().numpy(),
                               ref.weights @ pooled, rtol=0, atol=atol)
    np.testing.assert_allclose(ref.weights.sum(1), ref.sizes, rtol=0, atol=1e-12)


CONFIGS = [
    dict(pool="bilinear"),
    dict(pool="average"),
    dict(pool="bilinear", duplicate_anchors=False),
    dict(pool="average", inter=False),
    dict(pool="bilinear", keep_ratio=0.1, clip_len=3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_matches_reference(config, backend):
    feats, g, l = video()
    kw = dict(grid=(6, 6), anchors=20, keep_ratio=0.3, clip_len=4, inter=True,
              duplicate_anchors=True)
    kw.update(config)
    pool = kw.pop("pool")
    ref = A.reduce_video(feats, g, l, pool_mode=pool, **kw)
    out = AuthorsAOTReducer(pool=pool, backend=backend, **kw)(
        torch.from_numpy(feats), torch.from_numpy(g), torch.from_numpy(l))
    check(out, ref, 1e-10)
    check_sizes(out, ref, 1e-10)
    assert out.grid == (3, 3)  # 6x6 pooled: bilinear to ceil(6/2), average to floor(6/2)


def test_the_papers_grid_and_anchor_count():
    """27x27 grid, V = 126: 126 anchors, bilinear to 14x14, one 4-frame clip; positions t*196+n."""
    feats, g, l = video(frames=4, side=27, d=16, seed=1)
    ref = A.reduce_video(feats, g, l)
    out = AuthorsAOTReducer()(torch.from_numpy(feats), torch.from_numpy(g), torch.from_numpy(l))
    check(out, ref, 1e-9)
    assert out.grid == (14, 14) and (out.positions < 4 * 196).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_low_precision(dtype):
    feats, g, l = video(seed=2)
    x = torch.from_numpy(feats).to(dtype)
    ref = A.reduce_video(x.double().numpy(), g, l, grid=(6, 6), anchors=20, clip_len=4)
    out = AuthorsAOTReducer(grid=(6, 6), anchors=20, clip_len=4)(x, torch.from_numpy(g),
                                                                 torch.from_numpy(l))
    assert out.tokens.dtype == dtype
    check(out, ref, 1e-5 if dtype == torch.float32 else 2e-2)


def test_invariants():
    feats, g, l = video(frames=8, seed=3)
    kw = dict(grid=(6, 6), anchors=20, keep_ratio=0.3, clip_len=4)
    out = AuthorsAOTReducer(**kw)(torch.from_numpy(feats), torch.from_numpy(g), torch.from_numpy(l))
    ref = A.reduce_video(feats, g, l, **kw)
    kept = ref.kept_per_frame
    assert all(kept)
    pos = out.positions.tolist()
    at = 0
    for start in (0, 4):
        first = [start * 9 + k for k in kept[start]]
        # The first frame's tokens appear twice: as they were, then as the merged anchors.
        assert pos[at:at + len(first)] == first
        at += len(first)
        for step in range(1, 4):
            count = math.ceil((len(kept[start + step]) - 1) * 0.3)  # distinct confidences
            assert out.dynamic[at:at + count].all() and (out.frame_ids[at:at + count] == start + step).all()
            at += count
        assert pos[at:at + len(first)] == first and not out.dynamic[at:at + len(first)].any()
        at += len(first)
    assert at == len(out)
    # Sizes (SPEC §9, in pooled tokens): tokens as they are count 1; a merged anchor is the
    # weighted mean of the pooled tokens with the weights the reference tracks through Eq. 16.
    assert (out.sizes[out.dynamic] == 1).all()
    check_sizes(out, ref)


def test_frames_that_keep_nothing():
    feats, g, l = video(seed=5)
    kw = dict(grid=(6, 6), anchors=4, clip_len=4)
    ref = A.reduce_video(feats, g, l, **kw)
    assert any(not k for k in ref.kept_per_frame)
    for backend in BACKENDS:
        out = AuthorsAOTReducer(backend=backend, **kw)(torch.from_numpy(feats), torch.from_numpy(g),
                                                       torch.from_numpy(l))
        check(out, ref, 1e-10)


def test_batches_and_lists_give_lists():
    feats, g, l = video(frames=8, seed=6)
    x, gs, ls = torch.from_numpy(feats), torch.from_numpy(g), torch.from_numpy(l)
    r = AuthorsAOTReducer(grid=(6, 6), anchors=20, clip_len=4)
    one = [r(x[:8], gs[:8], ls[:8]), r(x[:5], gs[:5], ls[:5])]
    listed = r([x[:8], x[:5]], [gs[:8], gs[:5]], [ls[:8], ls[:5]])
    batch = r(torch.stack([x, x.flip(0)]), torch.stack([gs, gs.flip(0)]), torch.stack([ls, ls.flip(0)]))
    assert isinstance(listed, list) and isinstance(batch, list) and len(batch) == 2
    for a, b in zip(one, listed):
        assert torch.equal(a.positions, b.positions) and torch.allclose(a.tokens, b.tokens)
    assert torch.equal(batch[0].positions, one[0].positions)


def test_build_and_settings():
    r = reducers.build("aot-authors", model="llava-onevision-7b", benchmark="videomme")
    assert (r.anchors, r.keep_ratio, r.clip_len, r.pool, r.inter) == (108, 0.1, "auto", "bilinear", True)
    r = reducers.build("aot-authors", model="llava-onevision-7b", benchmark="mvbench", clip_len=8)
    assert (r.anchors, r.keep_ratio, r.clip_len) == (126, 0.3, 8)
    r = reducers.build("aot-authors", model="llava-video-7b", benchmark="egoschema")
    assert (r.anchors, r.pool, r.inter) == (180, "average", False)
    assert setting("llava-onevision-7b", "egoschema").anchors == 126
    assert isinstance(reducers.build("aot-authors", anchors=20), ak.AuthorsAOTReducer)
    for kw, exc, match in [
        (dict(model="qwen"), ValueError, "model must be one of"),
        (dict(benchmark="mmlu"), ValueError, "benchmark must be one of"),
        (dict(retention=0.1), ValueError, "has no retention"),
        (dict(pool="max"), ValueError, "pool must be one of"),
        (dict(keep_ratio=1.5), ValueError, "keep_ratio must be in"),
        (dict(anchors=0), ValueError, "anchors"),
        (dict(inter=1), TypeError, "inter must be a bool"),
        (dict(clip_len="four"), TypeError, "clip_len"),
    ]:
        with pytest.raises(exc, match=match):
            reducers.build("aot-authors", **kw)
    with pytest.raises(ValueError, match="grid"):
        AuthorsAOTReducer()(torch.randn(2, 36, 4), torch.rand(2, 36))  # 36 tokens, 27x27 grid


@pytest.mark.parametrize("frames,length", [(32, 4), (64, 8), (12, 1)])
def test_auto_clip_length_follows_the_frame_count(frames, length):
    """SPEC §8.7: clips of 4 frames for 32 frames, of 8 for 64 (F / 8)."""
    feats, g, l = video(frames=frames, seed=7)
    out = AuthorsAOTReducer(grid=(6, 6), anchors=20, clip_len="auto")(
        torch.from_numpy(feats), torch.from_numpy(g), torch.from_numpy(l))
    assert out.clips == [(s, min(s + length, frames)) for s in range(0, frames, length)]
