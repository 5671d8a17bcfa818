"""SPEC §9, issue 13: every reducer's `sizes` describe what its features absorbed. A token is a
weighted mean of original tokens, and its size is the total of those weights:
size x token = sum_k w_k x_k. Small cases, float64.

The one-hot trick: append c * e_k (k = the original's flat index t*N + n) to every original
token. Every reducer's output is a combination of the originals that is the same in every
feature, so a token's appended block divided by c is its weight vector over the originals,
normalised: it sums to 1 and is >= 0 exactly when the token is a weighted mean. The absolute
weights, size x block / c, are then checked against what each merge rule says: 0/1 members for
averages, one whole unit per dropped token for the baselines' OT merge, and the weights
reference/video_reference.py tracks through AOT's folds (for the authors' variant, the weights
over pooled tokens: test_authors_reducer.check_sizes)."""
import numpy as np
import pytest
import torch

from aot_kernels import AOTReducer, reducers
from reference.video_reference import reduce_video

C = 1e-3  # small: the appended block barely changes any cosine
D = 6


def tagged_video(frames, n, seed=0):
    """features [F,N,D+F*N]: random tokens (drifting over frames) with the one-hot block c e_k
    appended; scores [F,N]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, D, generator=g, dtype=torch.float64)
    feats = torch.stack([base + 0.5 * (t + 1) ** 0.5 * torch.randn(n, D, generator=g,
                                                                  dtype=torch.float64)
                         for t in range(frames)])
    tag = C * torch.eye(frames * n, dtype=torch.float64).view(frames, n, frames * n)
    return torch.cat([feats, tag], 2), torch.rand(frames, n, generator=g, dtype=torch.float64)


def weights_of(out, d=D):
    """[K, F*N]: each token's absolute weights over the originals, size x block / c."""
    share = out.tokens[:, d:] / C
    torch.testing.assert_close(share.sum(1), torch.ones(len(out), dtype=share.dtype),
                               rtol=0, atol=1e-12)  # a weighted mean, not a scaled sum
    assert bool((share > -1e-12).all())
    return out.sizes.unsqueeze(1) * share


AOT_CASES = [  # (frames, N, grid, reducer kwargs); eps 0.1: 100 iterations make the rows exact
    (6, 16, (4, 4), dict(retention=0.25, clip_len=3, eps=0.1, lam_inter=1.0)),
    (6, 16, (4, 4), dict(retention=0.25, clip_len=3, marginals="unit", lam_intra=0.5,
                         lam_inter=2.0)),
    (5, 16, (4, 4), dict(retention=0.3, clip_len=5, tau=0.6, eps=0.1)),
    (8, 16, (4, 4), dict(retention=0.25, clip_len=4)),  # the shipped defaults: lam_inter = 0
]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("case", AOT_CASES,
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c[3].items()))
def test_aot_sizes_are_the_weights_its_folds_give(case, backend):
    """AOTReducer's sizes equal the totals of the weights the reference tracks through the intra
    fold (anchor 1, source lam T_ji) and Eq. 16; its tokens carry exactly those weights (their
    one-hot blocks), and size x token = weights @ originals."""
    frames, n, grid, kw = case
    feats, scores = tagged_video(frames, n, seed=3)
    reducer = AOTReducer(backend=backend, grid=grid, **kw)
    plan = reducer.plan(frames, n)
    out = reducer(feats, scores)
    ref = reduce_video(feats.numpy(), scores.numpy(), None, grid, reducer.windows, plan.anchors,
                       plan.clips, retention=None if reducer.tau is not None else reducer.retention,
                       tau=reducer.tau, eps=reducer.eps, lam_intra=reducer.lam_intra,
                       lam_inter=reducer.lam_inter, marginals=reducer.marginals,
                       quota_rule=reducer.quota, track_weights=True)
    held = torch.from_numpy(ref["weights"])
    assert out.positions.tolist() == ref["positions"].tolist()
    torch.testing.assert_close(out.sizes, held.sum(1), rtol=0, atol=1e-9)
    torch.testing.assert_close(weights_of(out), held, rtol=0, atol=1e-9)
    originals = feats.reshape(frames * n, -1)
    torch.testing.assert_close(out.sizes.unsqueeze(1) * out.tokens, held @ originals,
                               rtol=0, atol=1e-9)
    # With probability marginals an intra-frame anchor (a dynamic token keeps that size) holds
    # itself and 1/M of a token's worth, lam_intra T_ji with sum_i T_ji = 1/M, not the
    # 1 + (N - M)/M on average of counting every folded source whole.
    # (At eps 0.1, where 100 iterations make the rows exact; at 0.02 they are ~1e-3 off.)
    if kw.get("marginals", "probability") == "probability" and plan.anchors < n and kw.get("eps"):
        torch.testing.assert_close(out.sizes[out.dynamic],
                                   torch.full_like(out.sizes[out.dynamic], 1 + 1 / plan.anchors),
                                   rtol=0, atol=1e-6)


BASELINES = [name for name in reducers.NAMES if name != "aot"]


@pytest.mark.parametrize("merge", [None, "average", "ot"])
@pytest.mark.parametrize("name", BASELINES)
def test_baseline_sizes_are_their_members(name, merge):
    """Baselines, every merge: merge=None keeps originals (weight 1 on itself); "average" makes
    each kept token the plain mean of its members (0/1 weights, each original in one token);
    "ot" folds each dropped token whole (its weights over the receivers sum to 1) and keeps
    each receiver's own weight 1. With a receiver in every frame (retention 0.3), every
    original is accounted for once: the sizes sum to F*N."""
    frames, n = 5, 16
    feats, scores = tagged_video(frames, n, seed=4)
    out = reducers.build(name, retention=0.3, merge=merge)(feats, scores, grid=(4, 4))
    held = weights_of(out)
    own = held[torch.arange(len(out)), out.positions]
    if merge is None:
        torch.testing.assert_close(held, torch.eye(frames * n, dtype=held.dtype)[out.positions])
        return
    torch.testing.assert_close(own, torch.ones_like(own), rtol=0, atol=1e-9)  # itself, whole
    torch.testing.assert_close(held.sum(0), torch.ones(frames * n, dtype=held.dtype),
                               rtol=0, atol=1e-9)  # every original once, in all
    torch.testing.assert_close(out.sizes.sum(), torch.tensor(float(frames * n),
                                                             dtype=out.sizes.dtype))
    if merge == "average":
        torch.testing.assert_close(held, held.round(), rtol=0, atol=1e-9)  # members count 1


def test_topk_ot_moves_the_kept_tokens_by_what_they_absorb():
    """topk + merge="ot" differs from topk: each kept token takes N_drop/M of the frame's
    dropped tokens' mass (unit demand split evenly), so it moves most of the way to the
    barycentre of what it absorbed: at 25% (4 kept of 16) each absorbs 3 tokens' worth."""
    frames, n = 4, 16
    feats, scores = tagged_video(frames, n, seed=5)
    feats = feats[..., :D]
    plain = reducers.build("topk", retention=0.25)(feats, scores, grid=(4, 4))
    folded = reducers.build("topk", retention=0.25, merge="ot")(feats, scores, grid=(4, 4))
    assert plain.positions.tolist() == folded.positions.tolist()
    torch.testing.assert_close(folded.sizes, torch.full_like(folded.sizes, 4.0), rtol=0,
                               atol=1e-6)  # 1 + 12/4: rows of the plan converged
    cos = torch.nn.functional.cosine_similarity(plain.tokens, folded.tokens, dim=1)
    assert float(1 - cos.mean()) > 0.1
    # lam: the fraction of each dropped token folded in; lam = 0 is topk itself.
    half = reducers.build("topk", retention=0.25, merge="ot", lam=0.5)(feats, scores,
                                                                        grid=(4, 4))
    torch.testing.assert_close(half.sizes, torch.full_like(half.sizes, 2.5), rtol=0, atol=1e-6)
    none = reducers.build("topk", retention=0.25, merge="ot", lam=0.0)(feats, scores,
                                                                        grid=(4, 4))
    torch.testing.assert_close(none.tokens, plain.tokens, rtol=0, atol=1e-12)
    assert np.allclose(none.sizes.numpy(), 1.0)


@pytest.mark.parametrize("backend", ["cpp", "torch", "triton"])
def test_lam_zero_folds_nothing_and_keeps_every_size(backend):
    """lam = 0 leaves each clip's anchors as they are (Eq. 16), so their sizes stay too, even
    when the merged tokens' sizes differ from theirs (AOTReducer's default lam_inter)."""
    from aot_kernels import clip_aggregate, gpu

    if backend == "triton" and not gpu.HAS_TRITON:
        pytest.skip("needs Triton")
    g = torch.Generator().manual_seed(4)
    frames = torch.randn(3, 4, 5, 8, generator=g, dtype=torch.float64)
    sizes = 1 + 4 * torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    out = clip_aggregate(frames, [4, 2, 3], sizes, lam=0.0, keep=[[0, 1, 1, 0]] * 3,
                         backend=backend)
    torch.testing.assert_close(out.anchors, frames[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out.sizes, sizes[:, 0], rtol=0, atol=0)
