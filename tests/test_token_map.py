"""Issue 23 item 1 (SPEC §11): every reducer's result, with return_map=True, applies the same
selection and merge weights to another per-token tensor [F,N,*].

Three independent judges of the map:
- the reference: AOT's weights over the originals as reference/video_reference.py tracks them
  through both folds (normalised by its sizes);
- the one-hot trick of test_sizes: append c e_k to every original; the reducer's own ops carry
  each output's weights over the originals in that block (block / c), so the map must equal it
  for every reducer, merge rule and option (the ops, not the map code, compute the block);
- the main features: applying the map to them gives the tokens the ops computed.
"""
import numpy as np
import pytest
import torch

from aot_kernels import AOTReducer, AuthorsAOTReducer, reducers
from aot_kernels.reducers.token_map import Mix, Take, TokenMap
from reference.video_reference import reduce_video
from test_sizes import AOT_CASES, C, D, tagged_video

BASELINES = [name for name in reducers.NAMES if name != "aot"]


def share_of(out, d=D):
    """[K, F*N]: each token's normalised weights over the originals (its one-hot block / c)."""
    return out.tokens[:, d:] / C


def check_map(out, feats, atol=1e-9):
    """The map is a convex combination (rows sum to 1, weights >= 0) and reproduces the tokens."""
    w = out.token_map.matrix()
    torch.testing.assert_close(w.sum(1), torch.ones(len(out), dtype=w.dtype), rtol=0, atol=1e-12)
    assert bool((w > -1e-12).all())
    torch.testing.assert_close(out.apply(feats), out.tokens, rtol=0, atol=atol)
    return w


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("case", AOT_CASES,
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c[3].items()))
def test_aot_map_is_the_references_weights(case, backend):
    """Both stages (lam_inter 0 and > 0, unit marginals, threshold mode): the map's matrix is the
    reference's tracked weights divided by its sizes, and the one-hot block of the same run."""
    frames, n, grid, kw = case
    feats, scores = tagged_video(frames, n, seed=3)
    reducer = AOTReducer(backend=backend, grid=grid, **kw)
    plan = reducer.plan(frames, n)
    out = reducer(feats, scores, return_map=True)
    ref = reduce_video(feats.numpy(), scores.numpy(), None, grid, reducer.windows, plan.anchors,
                       plan.clips, retention=None if reducer.tau is not None else reducer.retention,
                       tau=reducer.tau, eps=reducer.eps, lam_intra=reducer.lam_intra,
                       lam_inter=reducer.lam_inter, marginals=reducer.marginals,
                       quota_rule=reducer.quota, track_weights=True)
    assert out.positions.tolist() == ref["positions"].tolist()
    held = torch.from_numpy(ref["weights"])
    w = check_map(out, feats)
    torch.testing.assert_close(w, held / held.sum(1, keepdim=True), rtol=0, atol=1e-9)
    torch.testing.assert_close(w, share_of(out), rtol=0, atol=1e-9)


@pytest.mark.parametrize("merge", [None, "average", "ot"])
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_map_is_what_its_merge_did(name, merge):
    frames, n = 5, 16
    feats, scores = tagged_video(frames, n, seed=4)
    out = reducers.build(name, retention=0.3, merge=merge)(feats, scores, grid=(4, 4),
                                                          return_map=True)
    torch.testing.assert_close(check_map(out, feats), share_of(out), rtol=0, atol=1e-9)


@pytest.mark.parametrize("config", [dict(), dict(pool="average"), dict(duplicate_anchors=False),
                                    dict(pool="average", inter=False),
                                    dict(keep_ratio=0.1, clip_len=3, nn_blend=0.0),
                                    dict(spatial=0.0)],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "default")
def test_authors_map_is_its_fold_pool_and_merges(config):
    """The released pipeline: spatial cost, nearest-anchor blend, the model's pooling, the >= 0.5
    cells and the time-scaled quantile steps, all in the map (extra tensors on the un-pooled
    grid)."""
    frames, side = 8, 6
    feats, scores = tagged_video(frames, side * side, seed=5)
    local = torch.rand(frames, side * side, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    kw = dict(grid=(side, side), anchors=20, keep_ratio=0.3, clip_len=4)
    kw.update(config)
    out = AuthorsAOTReducer(**kw)(feats, scores, local, return_map=True)
    torch.testing.assert_close(check_map(out, feats), share_of(out), rtol=0, atol=1e-9)


def hand_fold(values, out, n):
    """By hand from the one-hot blocks: each token's value is its weights over the originals
    applied to the values."""
    flat = values.reshape(values.shape[0] * n, -1)
    return (share_of(out) @ flat).view(len(out), *values.shape[2:])


@pytest.mark.parametrize("reducer", [
    AOTReducer(0.25, grid=(4, 4), lam_inter=1.0, clip_len=3),
    AOTReducer(0.25, grid=(4, 4)),
    reducers.build("tome", retention=0.25),
    reducers.build("visionzip", retention=0.25, merge="ot"),
], ids=["aot-lam1", "aot", "tome", "visionzip-ot"])
def test_an_extra_tensor_gets_the_same_weighted_means(reducer):
    """DeepStack-like extras [F,N,levels,E]: a merged token's extra is the same weighted mean."""
    frames, n = 6, 16
    feats, scores = tagged_video(frames, n, seed=6)
    extra = torch.randn(frames, n, 3, 4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    out = reducer(feats, scores, return_map=True)
    got = out.apply(extra)
    assert got.shape == (len(out), 3, 4) and got.dtype == extra.dtype
    torch.testing.assert_close(got, hand_fold(extra, out, n), rtol=0, atol=1e-9)
    # float32 extras: computed in float64 weights, returned in float32
    assert out.apply(extra.float()).dtype == torch.float32


def test_batches_and_lists_carry_one_map_per_video():
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 6, 16, 8, generator=g)
    scores = torch.rand(2, 6, 16, generator=g)
    extra = torch.randn(2, 6, 16, 5, generator=g)
    reducer = AOTReducer(0.25, lam_inter=1.0, clip_len=3)
    batch = reducer(feats, scores, return_map=True)
    assert batch.apply(extra).shape == (2, len(batch), 5)
    for b in range(2):
        one = reducer(feats[b], scores[b], return_map=True)
        torch.testing.assert_close(batch.apply(extra)[b], one.apply(extra[b]))
    listed = reducer([feats[0], feats[1, :4]], [scores[0], scores[1, :4]], return_map=True)
    torch.testing.assert_close(listed[1].apply(extra[1, :4]),
                               reducer(feats[1, :4], scores[1, :4],
                                       return_map=True).apply(extra[1, :4]))
    with pytest.raises(ValueError, match=r"values must have shape \[2, 6, 16"):
        batch.apply(extra[0])
    assert batch.token_map.matrix().shape == (2, len(batch), 6 * 16)
    assert batch.token_map.device == feats.device and len(batch.token_map) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps_come_from_float32_plans(dtype):
    """fp16/bf16 inputs are reduced in float32 with return_map (half-precision potentials are
    too coarse for the weights); the tokens come back in their dtype and the map applied to the
    features matches them to that dtype's rounding."""
    g = torch.Generator().manual_seed(8)
    feats = torch.randn(6, 16, 8, generator=g).to(dtype)
    scores = torch.rand(6, 16, generator=g).to(dtype)
    for reducer in (AOTReducer(0.25, lam_inter=1.0, clip_len=3), reducers.build("tome", retention=0.25)):
        out = reducer(feats, scores, return_map=True)
        assert out.tokens.dtype == dtype and out.apply(feats).dtype == dtype
        torch.testing.assert_close(out.apply(feats.float()), out.tokens.float(),
                                   rtol=0, atol=2e-2 if dtype == torch.bfloat16 else 2e-3)


def test_without_return_map_nothing_is_kept_and_nothing_changes():
    feats, scores = tagged_video(6, 16, seed=9)
    reducer = AOTReducer(0.25, grid=(4, 4), lam_inter=1.0, clip_len=3)
    plain, mapped = reducer(feats, scores), reducer(feats, scores, return_map=True)
    assert plain.token_map is None
    torch.testing.assert_close(plain.tokens, mapped.tokens, rtol=0, atol=0)
    assert torch.equal(plain.positions, mapped.positions)
    with pytest.raises(ValueError, match="return_map=True"):
        plain.apply(feats)


def test_bad_values_name_the_argument():
    feats, scores = tagged_video(4, 16, seed=10)
    out = AOTReducer(0.25, grid=(4, 4))(feats, scores, return_map=True)
    with pytest.raises(TypeError, match="values must be a tensor"):
        out.apply(feats.numpy())
    with pytest.raises(TypeError, match="values must be a floating tensor"):
        out.apply(torch.ones(4, 16, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values must have shape \[4, 16, \.\.\.\]"):
        out.apply(feats[:3])
    with pytest.raises(ValueError, match="values is on meta"):
        out.apply(torch.empty(4, 16, 2, device="meta"))
    with pytest.raises(TypeError, match="return_map must be a bool"):
        AOTReducer(0.25, grid=(4, 4))(feats, scores, return_map=1)
    with pytest.raises(ValueError, match="at least one step"):
        TokenMap(4, 16, [])


def test_steps_compose_as_documented():
    """A hand-built program: a Mix of two rows, then a Take of an input row and the mix's row."""
    mix = Mix(torch.tensor([[0, 3]]), torch.tensor([[[0.25, 0.75]]], dtype=torch.float64))
    tm = TokenMap(2, 2, [mix, Take(torch.tensor([4, 1]))])
    values = torch.arange(8, dtype=torch.float64).view(2, 2, 2)
    expected = torch.stack([0.25 * values[0, 0] + 0.75 * values[1, 1], values[0, 1]])
    torch.testing.assert_close(tm(values), expected)
    assert len(tm) == 2 and "Mix, Take" in repr(tm)
    np.testing.assert_allclose(tm.matrix().numpy(), [[0.25, 0, 0, 0.75], [0, 1, 0, 0]])


def test_a_reordered_map_permutes_its_outputs():
    feats, scores = tagged_video(4, 16, seed=11)
    out = AOTReducer(0.25, grid=(4, 4), lam_inter=1.0, clip_len=2)(feats, scores, return_map=True)
    order = torch.randperm(len(out), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.token_map.reordered(order)(feats), out.tokens[order],
                               rtol=0, atol=1e-12)
