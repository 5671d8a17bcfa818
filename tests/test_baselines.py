"""Baseline reducers: their decisions against literal loop references, the merge step against
the OT reference and PyTorch's own pooling, and the invariants every reducer's output keeps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from aot_kernels import reducers
from aot_kernels.reducers.baselines import pool_cells
from reference import baselines_reference as BR
from reference import ot_reference as R


def video(frames=6, n=16, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    feats = torch.stack([base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
                         for _ in range(frames)])
    return feats.to(dtype), torch.rand(frames, n, generator=g, dtype=torch.float64).to(dtype)


VARIANTS = [(name, merge) for name in reducers.NAMES if name != "aot" for merge in (None, "average", "ot")]


def budget(frames, n, retention):
    k = round(retention * frames * n)
    return [k // frames + (1 if t < k % frames else 0) for t in range(frames)]


def expected_tokens(feats, groups):
    """Each kept token = mean of its members (flat indices), in position order."""
    flat = feats.reshape(-1, feats.shape[-1]).numpy()
    keys = sorted(groups)
    return keys, np.stack([flat[groups[k]].mean(0) for k in keys])


@pytest.mark.parametrize("name,merge", VARIANTS)
@pytest.mark.parametrize("retention", [0.05, 0.3, 1.0])
def test_every_reducer_keeps_the_exact_budget_and_accounts_for_every_token(name, merge, retention):
    feats, scores = video(frames=7, n=20, seed=1)
    out = reducers.build(name, retention=retention, merge=merge)(feats, scores, grid=(4, 5))
    assert len(out) == round(retention * 7 * 20)
    pos = out.positions
    assert bool((pos[1:] > pos[:-1]).all()) and torch.equal(out.frame_ids, pos // 20)
    assert not out.dynamic.any() and out.tokens.dtype == feats.dtype
    total = out.sizes.sum().item()
    if merge is None:
        assert total == len(out)
        assert torch.equal(out.tokens, feats.reshape(-1, 8)[pos])  # untouched copies
    else:
        # Every token is folded somewhere once each frame has room for a receiver (at 5%,
        # some frames keep 0 or 1 token and drop the rest outright).
        assert len(out) - 1e-9 <= total <= 140 + 1e-9
        if retention >= 0.3:
            assert abs(total - 140) < 1e-9
        assert bool((out.sizes >= 1 - 1e-12).all())


def test_tome_matches_bipartite_matching_reference():
    feats, _ = video(frames=3, n=23, seed=2)
    out = reducers.build("tome", retention=0.3)(feats, grid=(1, 23))
    ks = budget(3, 23, 0.3)
    groups = {}
    for t in range(3):
        groups.update({t * 23 + i: [t * 23 + j for j in v]
                       for i, v in BR.tome_frame(feats[t].numpy(), ks[t]).items()})
    keys, want = expected_tokens(feats, groups)
    assert out.positions.tolist() == keys
    np.testing.assert_allclose(out.tokens.numpy(), want, atol=1e-12)
    assert out.sizes.tolist() == [float(len(groups[k])) for k in keys]


def test_visionzip_matches_reference():
    feats, scores = video(frames=4, n=36, seed=3)
    out = reducers.build("visionzip", retention=0.25)(feats, scores)
    groups = {}
    for t, k in enumerate(budget(4, 36, 0.25)):
        groups.update({t * 36 + i: [t * 36 + j for j in v] for i, v in
                       BR.visionzip_frame(feats[t].numpy(), scores[t].numpy(), k).items()})
    keys, want = expected_tokens(feats, groups)
    assert out.positions.tolist() == keys
    np.testing.assert_allclose(out.tokens.numpy(), want, atol=1e-12)


@pytest.mark.parametrize("retention", [0.1, 0.4, 0.8])  # window budget below and above a frame
def test_dycoke_matches_reference(retention):
    feats, scores = video(frames=10, n=16, seed=4)
    out = reducers.build("dycoke", retention=retention)(feats, scores)
    ks = budget(10, 16, retention)
    groups = {}
    for s in range(0, 10, 4):
        e = min(s + 4, 10)
        local = BR.dycoke_window(feats[s:e].numpy(), scores[s].numpy(), sum(ks[s:e]))
        groups.update({s * 16 + i: [s * 16 + j for j in v] for i, v in local.items()})
    keys, want = expected_tokens(feats, groups)
    assert out.positions.tolist() == keys and out.clips == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_allclose(out.tokens.numpy(), want, atol=1e-12)


def test_topk_keeps_the_highest_scores_ties_to_the_lower_index():
    feats, scores = video(frames=5, n=16, seed=5)
    scores = (scores * 4).round() / 4  # many ties
    out = reducers.build("topk", retention=0.25)(feats, scores)
    want = [t * 16 + i for t, k in enumerate(budget(5, 16, 0.25))
            for i in BR.top_by_score(scores[t].numpy(), k)]
    assert out.positions.tolist() == want


def test_pool_with_square_cells_is_average_pooling():
    feats, _ = video(frames=3, n=36, seed=6)
    out = reducers.build("pool", retention=0.25)(feats, grid=(6, 6))  # 9 cells of 2x2 per frame
    grid = feats.permute(0, 2, 1).reshape(3, 8, 6, 6)
    pooled = F.avg_pool2d(grid, 2).reshape(3, 8, 9).permute(0, 2, 1).reshape(-1, 8)
    torch.testing.assert_close(out.tokens, pooled, rtol=0, atol=1e-12)
    assert out.sizes.tolist() == [4.0] * 27


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 16), w=st.integers(1, 16), data=st.data())
def test_pool_cells_partition_the_grid(h, w, data):
    k = data.draw(st.integers(1, h * w))
    cells = pool_cells((h, w), k)
    assert len(cells) == k
    assert sorted(i for c in cells for i in c) == list(range(h * w))
    for c in cells:  # contiguous rectangles
        rows, cols = {i // w for i in c}, {i % w for i in c}
        assert len(c) == len(rows) * len(cols)
        assert max(rows) - min(rows) + 1 == len(rows) and max(cols) - min(cols) + 1 == len(cols)


def test_ot_merge_equals_the_reference_aggregation_per_group():
    """Ragged groups (frames keep 3 or 4 tokens) share one padded call; each must equal its own
    unpadded problem in the float64 reference."""
    feats, scores = video(frames=5, n=16, seed=7)
    out = reducers.build("topk", retention=0.22, merge="ot")(feats, scores)
    plain = reducers.build("topk", retention=0.22)(feats, scores)
    assert out.positions.tolist() == plain.positions.tolist()
    for t in range(5):
        kept = (plain.positions[plain.frame_ids == t] % 16).tolist()
        dropped = [i for i in range(16) if i not in kept]
        # merge="ot": unit mass per dropped token, the receivers' demand split evenly.
        ref = R.sinkhorn_aggregate(feats[t, kept].numpy(), feats[t, dropped].numpy(),
                                   np.full(len(kept), len(dropped) / len(kept)),
                                   np.ones(len(dropped)))
        p = ref.plan / ref.plan.sum(0, keepdims=True)  # each dropped token's shares
        np.testing.assert_allclose(ref.plan, p, atol=1e-12)  # whole tokens: columns sum to 1
        k, y = feats[t, kept].numpy(), feats[t, dropped].numpy()
        want = (k + p @ y) / (1 + p.sum(1, keepdims=True))
        np.testing.assert_allclose(ref.tokens, want, atol=1e-12)
        np.testing.assert_allclose(out.tokens[out.frame_ids == t].numpy(), want, atol=1e-10)
        np.testing.assert_allclose(out.sizes[out.frame_ids == t].numpy(), 1 + p.sum(1), atol=1e-10)
    assert abs(float(out.sizes.sum()) - 5 * 16) < 1e-9  # every dropped token folded whole


def test_random_is_seeded_and_list_input_gives_a_list():
    feats, scores = video(frames=4, n=16, seed=8)
    a = reducers.build("random", retention=0.3, seed=3)(feats)
    b = reducers.build("random", retention=0.3, seed=3)(feats)
    c = reducers.build("random", retention=0.3, seed=4)(feats)
    assert torch.equal(a.positions, b.positions) and not torch.equal(a.positions, c.positions)
    listed = reducers.build("visionzip", retention=0.3)([feats, feats[:3]], [scores, scores[:3]])
    assert isinstance(listed, list) and [len(r) for r in listed] == [19, 14]
    batch = reducers.build("tome", retention=0.3)(torch.stack([feats, feats]))
    assert batch.tokens.shape == (2, 19, 8)


def test_build_errors_are_named():
    feats, scores = video()
    with pytest.raises(ValueError, match="unknown reducer"):
        reducers.build("fastv")
    with pytest.raises(ValueError, match="merge"):
        reducers.build("topk", merge="max")
    with pytest.raises(ValueError, match="optimal transport"):
        reducers.build("aot", merge="average")
    with pytest.raises(ValueError, match="scores"):
        reducers.build("visionzip")(feats)
    with pytest.raises(ValueError, match="retention"):
        reducers.build("pool", retention=0.0)
    with pytest.raises(TypeError, match="seed"):
        reducers.build("random", seed=1.5)
    with pytest.raises(ValueError, match="window"):
        reducers.build("dycoke", window=0)
    with pytest.raises(ValueError, match="grid"):
        reducers.build("pool")(feats, grid=(3, 3))
    assert isinstance(reducers.build("aot", retention=0.2), reducers.AOTReducer)
