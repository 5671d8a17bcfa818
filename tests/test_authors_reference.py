"""reference/authors_reference.py (SPEC §8) checked piece by piece: against cases worked out by
hand, the authors' probability-domain Sinkhorn written out independently, torch's own pooling,
and numpy's quantile."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import authors_reference as A


@pytest.mark.parametrize("v,count", [(126, 126), (176, 169), (196, 188), (205, 202), (108, 108),
                                     (180, 180)])
def test_anchor_counts_follow_the_released_window_rule(v, count):
    assert A.anchor_count(v) == count
    rng = np.random.default_rng(v)
    chosen = A.select_anchors(rng.random(729), rng.random(729), (27, 27), v)
    assert len(chosen) == count and chosen == sorted(set(chosen))


def test_anchor_selection_by_hand():
    """6x6 grid, 3x3 windows of 2x2, V = 20: k_w = floor(10 / 9) = 1 local anchor per window (the
    highest local score = the window's bottom-right token), then the 10 best global scores
    (= lowest indices) among the rest."""
    local = np.arange(36, dtype=float)
    chosen = A.select_anchors(-local, local, (6, 6), 20)
    assert chosen == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 19, 21, 23, 31, 33, 35]
    # Equal scores: ties to the lower index, in every window and globally.
    assert A.select_anchors(np.zeros(36), np.zeros(36), (6, 6), 20) == sorted(
        [0, 2, 4, 12, 14, 16, 24, 26, 28] + [1, 3, 5, 6, 7, 8, 9, 10, 11, 13])


def test_grid_positions():
    p = A.positions((27, 27))
    assert np.allclose(p[0], [0, 0]) and np.allclose(p[26], [1, 0])
    assert np.allclose(p[27], [0, 1 / 26]) and np.allclose(p[728], [1, 1])


def authors_sinkhorn(cost_sources_by_anchors, eps, max_iter, tol=1e-2):
    """The released iteration, transcribed in the probability domain: K [N_src, M_anchor],
    r (sources) then c (anchors), stop on mean |r - r_prev| < tol."""
    k = np.exp(-cost_sources_by_anchors / eps)
    n, m = k.shape
    u, v = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    r, c = np.ones(n), np.ones(m)
    for it in range(1, max_iter + 1):
        r_prev = r
        r = u / (k @ c)
        c = v / (k.T @ r)
        if np.abs(r - r_prev).mean() < tol:
            break
    return r[:, None] * k * c[None, :], it


@pytest.mark.parametrize("eps,shift", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.3)])
def test_log_domain_sinkhorn_is_the_released_iteration(eps, shift):
    rng = np.random.default_rng(1)
    cost = rng.random((7, 11)) * 2 + shift  # anchors x sources
    got = A.sinkhorn_scaling_stop(cost, eps, max_iter=100)
    plan, iterations = authors_sinkhorn(cost.T, eps, 100)
    assert got.iterations == iterations < 100
    np.testing.assert_allclose(got.plan, plan.T, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.plan.sum(1), 1 / 7, rtol=1e-12)  # anchors updated last: exact


def test_one_anchor_by_hand():
    """M = 1: the plan row is the source marginal 1/N, so x_OT = (x + mean y) / 2, and every
    source is nearest to it: x_NN = (x + sum y) / (1 + N)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(1, 4)), rng.normal(size=(5, 4))
    got, _ = A.intra_frame(x, y, np.zeros((1, 2)), rng.random((5, 2)))
    want = 0.9 * (x[0] + y.mean(0)) / 2 + 0.1 * (x[0] + y.sum(0)) / 6
    np.testing.assert_allclose(got[0], want, rtol=1e-12)


def test_spatial_term_and_nearest_anchor_ties():
    """Two identical anchors: the spatial term decides the plan (each source goes mostly to the
    anchor beside it), while the nearest-anchor rule sees cosine only and picks the lower index."""
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([[1.0, 0.1], [1.0, -0.1]])
    anchor_pos = np.array([[0.0, 0.0], [1.0, 1.0]])
    source_pos = np.array([[0.0, 0.1], [0.9, 1.0]])
    out, solved = A.intra_frame(x, y, anchor_pos, source_pos, spatial=0.5)
    assert solved.plan[0, 0] > 4 * solved.plan[1, 0] and solved.plan[1, 1] > 4 * solved.plan[0, 1]
    _, flat = A.intra_frame(x, y, anchor_pos, source_pos, spatial=0.0)
    np.testing.assert_allclose(flat.plan, 0.25)  # without it the two anchors are alike
    x_ot = [(x[j] + solved.plan[j] @ y) / (1 + solved.plan[j].sum()) for j in range(2)]
    x_nn = [(x[0] + y.sum(0)) / 3, x[1]]  # both sources go to anchor 0 (tie, lower index)
    np.testing.assert_allclose(out, 0.9 * np.array(x_ot) + 0.1 * np.array(x_nn), rtol=1e-12)


@pytest.mark.parametrize("side", [27, 6, 5])
def test_pooling_matches_torch(side):
    rng = np.random.default_rng(side)
    v = rng.normal(size=(side, side, 3))
    t = torch.from_numpy(v).permute(2, 0, 1).unsqueeze(0)
    bilinear = F.interpolate(t, size=(-(-side // 2),) * 2, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(A.pool(v, "bilinear"), bilinear[0].permute(1, 2, 0).numpy(),
                               rtol=1e-12, atol=1e-12)
    average = F.avg_pool2d(t, 2)
    np.testing.assert_allclose(A.pool(v, "average"), average[0].permute(1, 2, 0).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_quantile_rule_counts():
    rng = np.random.default_rng(3)
    for n, ratio in [(10, 0.3), (126, 0.3), (126, 0.1), (7, 0.5), (2, 0.3)]:
        q = rng.permutation(n) / n  # distinct
        assert A.quantile_linear(q, ratio) == pytest.approx(np.quantile(q, ratio), abs=1e-15)
        cut = A.quantile_linear(q, ratio)
        assert sum(v < cut for v in q) == math.ceil((n - 1) * ratio)


def test_time_factor_is_an_eps_rescaling():
    assert [round(0.1 / A.time_factor(step), 3) for step in (1, 2, 3)] == [0.502, 0.17, 0.116]
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 8))
    y = x[rng.integers(0, 6, 9)] + 0.5 * rng.normal(size=(9, 8))
    _, dynamic, q, solved = A.inter_step(x, y, 2, 0.3)
    c = A.cosine_cost(x, y)
    rescaled = A.sinkhorn_scaling_stop(c - c.min(), 0.1 / A.time_factor(2))
    np.testing.assert_allclose(solved.plan, rescaled.plan, rtol=1e-9)
    assert solved.iterations == rescaled.iterations
    assert dynamic.sum() == math.ceil(8 * 0.3)


def test_inter_step_with_one_anchor_by_hand():
    """M = 1: every p_1i = 1, so all q are equal, none is below their quantile, and the anchor
    absorbs every token: (x + sum y) / (1 + N)."""
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(1, 4)), rng.normal(size=(5, 4))
    new, dynamic, q, _ = A.inter_step(x, y, 1, 0.3)
    assert not dynamic.any() and np.allclose(q, 1.0)
    np.testing.assert_allclose(new[0], (x[0] + y.sum(0)) / 6, rtol=1e-12)


def small_video(frames=8, side=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, side * side, d))
    feats = base + 0.5 * rng.normal(size=(frames, side * side, d))
    return feats, rng.random((frames, side * side)), rng.random((frames, side * side))


@pytest.mark.parametrize("pool_mode", ["bilinear", "average"])
def test_whole_video_invariants(pool_mode):
    feats, g, loc = small_video()
    kw = dict(grid=(6, 6), anchors=20, keep_ratio=0.3, clip_len=4, pool_mode=pool_mode)
    out = A.reduce_video(feats, g, loc, **kw)
    per_frame = 9
    # Kept pooled cells are exactly those whose pooled anchor mask is >= 0.5.
    for t in range(8):
        chosen = A.select_anchors(g[t], loc[t], (6, 6), 20)
        mask = np.zeros(36)
        mask[chosen] = 1
        pooled = A.pool(mask.reshape(6, 6), pool_mode).reshape(-1)
        assert out.kept_per_frame[t] == [k for k in range(per_frame) if pooled[k] >= 0.5]
    assert all(out.kept_per_frame)  # the case below needs tokens in every frame
    # Each clip: first frame's kept tokens, dynamic tokens of later frames, merged anchors.
    pos = 0
    for start in (0, 4):
        first = out.kept_per_frame[start]
        block = out.tokens[pos:pos + len(first)]
        np.testing.assert_allclose(block, out.pooled[start].reshape(per_frame, -1)[first])
        assert list(out.positions[pos:pos + len(first)]) == [start * per_frame + k for k in first]
        pos += len(first)
        for step in range(1, 4):
            count = math.ceil((len(out.kept_per_frame[start + step]) - 1) * 0.3)
            assert (out.frame_ids[pos:pos + count] == start + step).all()
            pos += count
        assert list(out.positions[pos:pos + len(first)]) == [start * per_frame + k for k in first]
        pos += len(first)
    assert pos == len(out.tokens)
    single = A.reduce_video(feats, g, loc, duplicate_anchors=False, **kw)
    assert len(single.tokens) == len(out.tokens) - len(out.kept_per_frame[0]) - len(out.kept_per_frame[4])
    flat = A.reduce_video(feats, g, loc, inter=False, **kw)
    assert len(flat.tokens) == sum(len(k) for k in out.kept_per_frame)


def test_frames_that_keep_nothing():
    """Few anchors on a small grid: some frames keep no pooled token. Such a frame is skipped; a
    clip whose first frame keeps nothing passes its later tokens through."""
    feats, g, loc = small_video(seed=5)
    out = A.reduce_video(feats, g, loc, grid=(6, 6), anchors=4, clip_len=4)
    assert any(not k for k in out.kept_per_frame)
    expected = 0
    for start in (0, 4):
        first = len(out.kept_per_frame[start])
        later = [len(out.kept_per_frame[t]) for t in range(start + 1, start + 4)]
        if first:
            expected += 2 * first + sum(math.ceil((k - 1) * 0.3) for k in later if k)
        else:
            expected += sum(later)
    assert len(out.tokens) == expected
