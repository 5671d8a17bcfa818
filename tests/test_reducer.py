"""AOTReducer (SPEC §4-6) against the float64 loop reference, plus the invariants of its output."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from aot_kernels import AOTReducer, ReducedVideo
from aot_kernels.reducers.aot import PRESETS
from aot_kernels.reducers.planning import default_anchors
from reference.video_reference import default_plan, reduce_video


def video(frames, n=16, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # Slowly drifting frames, so that inter-frame confidences spread over (0, 1].
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    feats = torch.stack([base + 0.4 * t * torch.randn(n, d, generator=g, dtype=torch.float64)
                         for t in range(frames)])
    scores = torch.rand(frames, n, generator=g, dtype=torch.float64)
    return feats.to(dtype), scores.to(dtype)


def compare(out: ReducedVideo, ref: dict, atol=1e-9):
    assert out.positions.tolist() == ref["positions"].tolist()
    assert out.frame_ids.tolist() == ref["frame_ids"].tolist()
    assert out.dynamic.tolist() == ref["dynamic"].tolist()
    np.testing.assert_allclose(out.tokens.double().numpy(), ref["tokens"], atol=atol, rtol=0)
    np.testing.assert_allclose(out.sizes.double().numpy(), ref["sizes"], atol=atol, rtol=0)


CASES = [  # (frames, retention, reducer kwargs, grid)
    (7, 0.3, dict(clip_len=3), (4, 4)),
    (9, 0.2, dict(), (4, 4)),  # default clip length grows until feasible
    (6, 0.25, dict(clip_len=2, marginals="unit"), (4, 4)),
    (5, 0.5, dict(clip_len=5, num_anchors=16), (4, 4)),  # M = N: no intra sources
    (6, 0.3, dict(clip_len=3, lam_intra=0.5, lam_inter=2.0, eps=0.05, windows=(1, 3)), (2, 8)),
    (8, 0.2, dict(clip_len=4, tol=1e-4, max_iter=300), (4, 4)),
]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("frames,retention,kw,grid", CASES)
def test_quota_mode_matches_reference(frames, retention, kw, grid, backend):
    feats, scores = video(frames)
    out = AOTReducer(retention, backend=backend, **kw)(feats, scores, grid=grid)
    m, clips = default_plan(frames, 16, retention, kw.get("clip_len"), kw.get("num_anchors"))
    assert out.clips == clips and out.stats["anchors_per_frame"] == m
    ref = reduce_video(feats.numpy(), scores.numpy(), None, grid, kw.get("windows", (2, 2)), m,
                       clips, retention=retention,
                       **{k: v for k, v in kw.items() if k not in ("clip_len", "num_anchors", "windows")})
    compare(out, ref)
    assert len(out) == round(retention * frames * 16)


@pytest.mark.parametrize("tau", [0.0, 0.6, 1.0])
def test_threshold_mode_matches_reference(tau):
    feats, scores = video(8, seed=1)
    local = torch.rand(8, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = AOTReducer(0.25, clip_len=4, tau=tau)(feats, scores, local, grid=(4, 4))
    ref = reduce_video(feats.numpy(), scores.numpy(), local.numpy(), (4, 4), (2, 2),
                       out.stats["anchors_per_frame"], out.clips, tau=tau)
    compare(out, ref)
    if tau == 0.0:
        assert not out.dynamic.any()
    if tau == 1.0:  # every source with q < 1 stays
        assert out.dynamic.sum() > 0


def test_dynamic_segmentation_matches_reference():
    g = torch.Generator().manual_seed(3)
    scene = [torch.randn(16, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    feats = torch.stack([scene[t >= 5] + 0.05 * torch.randn(16, 8, generator=g, dtype=torch.float64)
                         for t in range(9)])
    scores = torch.rand(9, 16, generator=g, dtype=torch.float64)
    out = AOTReducer(0.3, segmentation="dynamic", num_clips=2)(feats, scores, grid=(4, 4))
    assert out.clips == [(0, 5), (5, 9)]  # the cut falls on the scene change
    ref = reduce_video(feats.numpy(), scores.numpy(), None, (4, 4), (2, 2),
                       out.stats["anchors_per_frame"], out.clips, retention=0.3)
    compare(out, ref)


def test_batch_and_list_inputs_equal_one_video_at_a_time():
    reducer = AOTReducer(0.25, clip_len=3)
    vids = [video(f, seed=s) for f, s in ((6, 0), (6, 1), (9, 2))]
    singles = [reducer(f, s, grid=(4, 4)) for f, s in vids]
    batch = reducer(torch.stack([vids[0][0], vids[1][0]]), torch.stack([vids[0][1], vids[1][1]]),
                    grid=(4, 4))
    assert batch.tokens.shape == (2, len(singles[0]), 8)
    listed = reducer([f for f, _ in vids], [s for _, s in vids], grid=(4, 4))
    assert isinstance(listed, list) and [len(r) for r in listed] == [len(r) for r in singles]
    for k in range(2):
        torch.testing.assert_close(batch.tokens[k], singles[k].tokens, rtol=0, atol=1e-12)
        assert torch.equal(batch.positions[k], singles[k].positions)
    m, clips = default_plan(9, 16, 0.25, 3)
    compare(listed[2], reduce_video(vids[2][0].numpy(), vids[2][1].numpy(), None, (4, 4), (2, 2),
                                    m, clips, retention=0.25))
    for got, want in zip(listed, singles):
        torch.testing.assert_close(got.tokens, want.tokens, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.sizes, want.sizes, rtol=0, atol=1e-12)
        assert torch.equal(got.dynamic, want.dynamic) and got.clips == want.clips


def test_zero_lambdas_return_input_tokens_at_their_positions():
    feats, scores = video(10, n=25, d=12, dtype=torch.float32)
    out = AOTReducer(0.2, clip_len=4, lam_intra=0.0, lam_inter=0.0)(feats, scores)
    flat = feats.reshape(-1, 12)
    assert torch.equal(out.tokens, flat[out.positions])
    assert torch.equal(out.frame_ids, out.positions // 25)


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(1, 20), side=st.integers(2, 6), retention=st.floats(0.02, 1.0),
       seed=st.integers(0, 9))
def test_quota_invariants(frames, side, retention, seed):
    n = side * side
    if round(retention * frames * n) < 1:
        return
    feats, scores = video(frames, n=n, d=6, seed=seed, dtype=torch.float32)
    out = AOTReducer(retention, max_iter=20)(feats, scores)
    assert len(out) == round(retention * frames * n)  # exact budget
    pos = out.positions
    assert bool((pos[1:] > pos[:-1]).all())  # unique, and frames / positions in order
    assert torch.equal(out.frame_ids, pos // n)
    for s, e in out.clips:  # anchors sit on the clip's first frame, dynamic tokens later
        in_clip = (out.frame_ids >= s) & (out.frame_ids < e)
        assert torch.equal(out.dynamic[in_clip], out.frame_ids[in_clip] > s)
    # Every token holds at least one original's worth (an anchor itself, or the average merged
    # token of Eq. 16); what the sizes add up to is checked against tracked weights in
    # test_sizes.py (SPEC §9: folds absorb fractions, so they need not sum to F*N).
    assert bool((out.sizes >= 1 - 1e-5).all())


@settings(max_examples=200, deadline=None)
@given(frames=st.integers(1, 128), n=st.integers(1, 400), retention=st.floats(0.001, 1.0))
def test_default_plan_is_feasible_whenever_the_budget_is_positive(frames, n, retention):
    if round(retention * frames * n) < 1:
        return
    plan = AOTReducer(retention).plan(frames, n)
    k, c, m = plan.budget, len(plan.clips), plan.anchors
    assert c * m <= k <= frames * m and m <= n
    assert sum(plan.keep) == k - c * m and max(plan.keep) <= m
    assert (m, plan.clips) == default_plan(frames, n, retention)


def test_default_anchors_near_the_papers_llava_onevision_setting():
    assert default_anchors(627, 32, 4, 196) == 125  # paper: 126 at 10%
    given = AOTReducer(0.1, clip_len=8).plan(32, 196)
    assert given.clips == [(s, s + 8) for s in range(0, 32, 8)] and given.anchors == 125


def test_unset_clips_and_anchors_follow_the_measured_rule():
    """M = round(0.7 x 196) = 137; c = round(0.5 K / 137): K = 627 gives 2 clips of 16 frames,
    K = 1568 gives 6 clips of ceil(32 / 6) = 6 frames (the last one 2)."""
    ten, quarter = AOTReducer(0.1).plan(32, 196), AOTReducer(0.25).plan(32, 196)
    assert (ten.anchors, ten.clips) == (137, [(0, 16), (16, 32)])
    assert quarter.anchors == 137
    assert quarter.clips == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30), (30, 32)]
    assert sum(ten.keep) == 627 - 2 * 137 and sum(quarter.keep) == 1568 - 6 * 137


def test_presets_follow_spec_section_6():
    r = AOTReducer.preset("llava-onevision-7b", retention=0.10)
    assert r.num_anchors == 126 and r.grid == (14, 14) and r.eps == 0.1 and r.max_iter == 100
    assert AOTReducer.preset("llava-video-7b", retention=0.15).num_anchors == 144
    with pytest.warns(UserWarning, match="exceed"):
        assert AOTReducer.preset("llava-onevision-7b", retention=0.25).num_anchors == 196
    with pytest.warns(UserWarning, match="169"):
        assert AOTReducer.preset("llava-video-7b", retention=0.20).num_anchors == 169
    assert AOTReducer.preset("qwen2.5-vl-7b", retention=0.1).num_anchors is None
    for model, p in PRESETS.items():  # every preset's budgets are feasible at its own shape
        for r in sorted(p.anchors) or [0.1]:
            with pytest.warns(UserWarning) if p.anchors.get(r, 0) > p.grid[0] * p.grid[1] else nullcontext():
                red = AOTReducer.preset(model, retention=r)
            red.plan(p.frames, p.grid[0] * p.grid[1])
    with pytest.raises(ValueError, match="retention"):
        AOTReducer.preset("llava-onevision-7b", retention=0.12)
    with pytest.raises(ValueError, match="unknown preset"):
        AOTReducer.preset("gpt-4v")


def test_low_precision_inputs_keep_their_dtype():
    feats, scores = video(6, dtype=torch.float32)
    want = AOTReducer(0.3, clip_len=3)(feats, scores)
    for dtype in (torch.bfloat16, torch.float16):
        got = AOTReducer(0.3, clip_len=3)(feats.to(dtype), scores)
        assert got.tokens.dtype == dtype and got.sizes.dtype == torch.float32
        assert len(got) == len(want)


def test_profile_records_stage_times():
    feats, scores = video(6)
    out = AOTReducer(0.3, clip_len=3, profile=True)(feats, scores)
    assert {"select_ms", "intra_ms", "inter_ms"} <= set(out.stats)
    assert out.stats["tokens_in"] == 96 and out.stats["tokens_out"] == len(out)


BAD_CONFIG = [
    (dict(retention=0.0), ValueError, "retention"),
    (dict(retention=1.5), ValueError, "retention"),
    (dict(retention=True), TypeError, "retention"),
    (dict(num_anchors=0), ValueError, "num_anchors"),
    (dict(num_anchors=2.0), TypeError, "num_anchors"),
    (dict(clip_len=0), ValueError, "clip_len"),
    (dict(segmentation="scenes"), ValueError, "segmentation"),
    (dict(segmentation="dynamic", clip_len=4), ValueError, "clip_len"),
    (dict(marginals="uniform"), ValueError, "marginals"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(lam_inter=-1.0), ValueError, "lam"),
    (dict(tau=1.5), ValueError, "tau"),
    (dict(windows=(2,)), TypeError, "windows"),
    (dict(backend="cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize("kw,exc,match", BAD_CONFIG)
def test_bad_configuration_is_named(kw, exc, match):
    kw = dict(kw)
    retention = kw.pop("retention", 0.1)
    with pytest.raises(exc, match=match):
        AOTReducer(retention, **kw)


def test_bad_inputs_are_named():
    feats, scores = video(6)
    r = AOTReducer(0.3, clip_len=3)
    cases = [
        (lambda: r(feats, scores, grid=(3, 5)), ValueError, "grid 3x5"),
        (lambda: r(feats, scores[:, :15]), ValueError, "scores"),
        (lambda: r(feats, None), ValueError, "scores"),
        (lambda: r(feats, scores.masked_fill(scores > 0.9, float("nan"))), ValueError, "NaN"),
        (lambda: r(feats.masked_fill(feats > 2, float("inf")), scores), ValueError, "features"),
        (lambda: r(feats[0], scores), ValueError, "features"),
        (lambda: r(feats.int(), scores), TypeError, "features"),
        (lambda: r(feats[:, :15], scores[:, :15]), ValueError, "not a square"),
        (lambda: r([feats, feats[:, :9]], [scores, scores[:, :9]], grid=(4, 4)), ValueError, "N, D"),
        (lambda: r([feats], scores), TypeError, "list"),
        (lambda: r([], []), ValueError, "empty"),
        (lambda: AOTReducer(0.3, tau=0.5)(feats[None], scores[None]), ValueError, "list of videos"),
        (lambda: AOTReducer(0.1, num_anchors=8, clip_len=3)(feats, scores), ValueError, "budget impossible"),
        (lambda: AOTReducer(0.3, num_anchors=17)(feats, scores), ValueError, "num_anchors=17"),
        (lambda: AOTReducer(0.001)(feats, scores), ValueError, "keeps no token"),
        (lambda: AOTReducer(0.3, num_anchors=2, clip_len=6)(feats, scores), ValueError,
         "budget impossible"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
