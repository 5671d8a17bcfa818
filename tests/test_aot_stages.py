"""AOTReducer's stages one at a time (planning, intra-frame, inter-frame, output layout), each
against the float64 reference or the invariants its contract states."""
import numpy as np
import pytest
import torch

import aot_kernels as ak
from aot_kernels.reducers import planning
from aot_kernels.reducers.inter import inter_frame
from aot_kernels.reducers.intra import IntraResult, intra_frame
from aot_kernels.reducers.layout import assemble
from aot_kernels.reducers.video import Video
from reference import ot_reference as R
from reference import selection_reference as S

BACKENDS = ["torch"] + (["cpp"] if ak.HAS_EXTENSION else [])


@pytest.mark.parametrize("frames, tokens, retention", [(32, 196, 0.10), (32, 196, 0.25),
                                                       (16, 256, 0.10), (7, 49, 0.3),
                                                       (3, 16, 0.5), (64, 169, 0.15)])
def test_a_plan_meets_its_budget_exactly(frames, tokens, retention):
    p = planning.plan(frames, tokens, retention)
    k = ak.reducers.video.token_budget(frames, tokens, retention)
    c, m = len(p.clips), p.anchors
    assert p.budget == k and c * m <= k <= frames * m and 1 <= m <= tokens
    assert p.clips[0][0] == 0 and p.clips[-1][1] == frames
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(p.clips, p.clips[1:]))  # contiguous
    assert sum(p.keep) == k - c * m and max(p.keep) <= m
    assert all(p.keep[s] == 0 for s, _ in p.clips)  # a clip's first frame holds its anchors
    # the reducer plans the same
    assert ak.AOTReducer(retention).plan(frames, tokens) == p


def test_a_plan_refuses_an_impossible_budget():
    with pytest.raises(ValueError, match="budget impossible"):
        planning.plan(8, 16, 0.05, num_anchors=2, clip_len=1)  # 8 clips x 2 > K = 6
    with pytest.raises(ValueError, match="exceeds the N=16"):
        planning.plan(8, 16, 0.5, num_anchors=17)


def test_threshold_plans_have_no_budget():
    p = planning.plan(8, 16, 0.25, threshold=True, clip_len=4)
    assert p.budget is None and p.keep is None and p.clips == [(0, 4), (4, 8)]


def videos_of(shapes, n=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Video(torch.randn(f, n, d, generator=g, dtype=torch.float64),
                  torch.rand(f, n, generator=g, dtype=torch.float64), None) for f in shapes]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("marginals", ["probability", "unit"])
def test_intra_frame_is_the_reference_fold_of_each_frame(backend, marginals):
    videos, m, lam = videos_of([3, 2]), 5, 0.7
    ot = planning.OTSettings(0.1, 200, 0.0, marginals, backend)
    out = intra_frame(videos, m, (4, 4), windows=(2, 2), ot=ot, lam=lam)
    assert out.tokens.shape == (5, m, 8) and out.sizes.shape == (5, m)
    x = torch.cat([v.features for v in videos]).numpy()
    s = torch.cat([v.scores for v in videos]).numpy()
    anchors, sources = S.select_anchors(s, None, (4, 4), (2, 2), m)
    for t in range(5):
        np.testing.assert_array_equal(out.anchors[t].numpy(), anchors[t])
        r = R.sinkhorn_aggregate(x[t, anchors[t]], x[t, sources[t]],
                                 None if marginals == "probability" else np.ones(m), None,
                                 eps=0.1, lam=lam, max_iter=200)
        np.testing.assert_allclose(out.tokens[t].numpy(), r.tokens, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(out.sizes[t].numpy(), 1 + lam * r.mass, rtol=1e-9)


def clip_case(seed=1):
    """One video of 7 frames of M = 4 intra tokens (the stage-3 input) in clips [0,4), [4,7)."""
    g = torch.Generator().manual_seed(seed)
    frames, m, n, d = 7, 4, 16, 6
    intra = IntraResult(torch.randn(frames, m, d, generator=g, dtype=torch.float64),
                        1 + torch.rand(frames, m, generator=g, dtype=torch.float64),
                        torch.stack([torch.randperm(n, generator=g)[:m].sort().values
                                     for _ in range(frames)]))
    p = planning.Plan(m, [(0, 4), (4, 7)], 2 * m + 5, [0, 1, 1, 1, 0, 1, 1])
    return intra, p, n


@pytest.mark.parametrize("backend", BACKENDS)
def test_inter_frame_is_the_reference_clip_fold(backend):
    intra, p, _ = clip_case()
    ot = planning.OTSettings(0.1, 200, 0.0, "probability", backend)
    got = inter_frame(intra, [p], ot=ot, lam=0.8, tau=None, quota="uniform", content_share=0.5)
    for c, (s, e) in enumerate(p.clips):
        r = R.clip_aggregate(intra.tokens[s:e].numpy(), sizes=intra.sizes[s:e].numpy(), eps=0.1,
                             lam=0.8, max_iter=200, keep=p.keep[s:e])
        np.testing.assert_allclose(got.out.anchors[c].numpy(), r.anchors, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(got.out.sizes[c].numpy(), r.sizes, rtol=1e-9)
        np.testing.assert_array_equal(got.out.kept[c, :e - s].numpy(), r.kept)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_layout_puts_anchors_then_dynamic_tokens_by_frame_and_position(backend):
    """SPEC §5 order, rebuilt here from the kept masks alone: per clip its M anchors at the
    clip's first frame, then each later frame's kept tokens in slot (= position) order."""
    intra, p, n = clip_case()
    ot = planning.OTSettings(0.1, 200, 0.0, "probability", backend)
    inter = inter_frame(intra, [p], ot=ot, lam=0.8, tau=None, quota="uniform", content_share=0.5)
    [(tokens, sizes, frame_ids, positions, dynamic)] = assemble(inter, [p], n)
    want_tokens, want_sizes, want_frames, want_pos, want_dyn = [], [], [], [], []
    kept = inter.out.kept
    for c, (s, e) in enumerate(p.clips):
        for j in range(p.anchors):
            want_tokens.append(inter.out.anchors[c, j])
            want_sizes.append(inter.out.sizes[c, j])
            want_frames.append(s)
            want_pos.append(s * n + int(intra.anchors[s, j]))
            want_dyn.append(False)
        for step in range(1, e - s):
            assert int(kept[c, step].sum()) == p.keep[s + step]  # the quota, exactly
            for j in torch.nonzero(kept[c, step]).flatten().tolist():
                want_tokens.append(intra.tokens[s + step, j])
                want_sizes.append(intra.sizes[s + step, j])
                want_frames.append(s + step)
                want_pos.append((s + step) * n + int(intra.anchors[s + step, j]))
                want_dyn.append(True)
    assert len(tokens) == p.budget
    torch.testing.assert_close(tokens, torch.stack(want_tokens), rtol=0, atol=0)
    torch.testing.assert_close(sizes, torch.stack(want_sizes), rtol=0, atol=0)
    assert frame_ids.tolist() == want_frames and positions.tolist() == want_pos
    assert dynamic.tolist() == want_dyn


def test_the_stages_compose_to_the_reducer():
    """AOTReducer is planning -> intra -> inter -> layout and nothing else."""
    (video,) = videos_of([8], n=16)
    red = ak.AOTReducer(0.25, clip_len=4, lam_inter=0.5, grid=(4, 4), backend="torch")
    p = red.plan(8, 16)
    ot = planning.OTSettings(red.eps, red.max_iter, red.tol, red.marginals, red.backend)
    intra = intra_frame([video], p.anchors, (4, 4), windows=red.windows, ot=ot,
                        lam=red.lam_intra)
    inter = inter_frame(intra, [p], ot=ot, lam=red.lam_inter, tau=None, quota=red.quota,
                        content_share=red.content_share)
    [(tokens, sizes, frame_ids, positions, dynamic)] = assemble(inter, [p], 16)
    out = red(video.features, video.scores)
    torch.testing.assert_close(out.tokens, tokens, rtol=0, atol=0)
    torch.testing.assert_close(out.sizes, sizes, rtol=0, atol=0)
    assert torch.equal(out.positions, positions) and torch.equal(out.dynamic, dynamic)
