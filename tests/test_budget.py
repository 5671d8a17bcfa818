"""How AOTReducer splits its exact budget K (issue 13): the anchor share, and quota='adaptive',
where the K - c M dynamic slots follow the content, against the float64 reference's literal
slot-by-slot allocation, and without host reads."""
import pytest
import torch

from aot_kernels import AOTReducer
from reference.video_reference import default_plan, reduce_video
from test_reducer import compare, video
from test_sync_free import check_shapes, fake_cuda, fake_video


def scene_cut(frames=16, cut=11, n=16, d=8, seed=0, dtype=torch.float64):
    """Two nearly static scenes, cut at frame `cut` (inside a clip of 4 when cut % 4 != 0)."""
    g = torch.Generator().manual_seed(seed)
    scenes = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2)]
    feats = torch.stack([scenes[t >= cut] + 0.05 * torch.randn(n, d, generator=g,
                                                                dtype=torch.float64)
                         for t in range(frames)])
    return feats.to(dtype), torch.rand(frames, n, generator=g, dtype=torch.float64).to(dtype)


def dynamic_per_frame(out, frames):
    return torch.bincount(out.frame_ids[out.dynamic], minlength=frames).tolist()


CASES = [  # (frames, retention, kwargs)
    (7, 0.3, dict(clip_len=3)),  # the last clip is shorter
    (9, 0.2, dict()),
    (6, 0.25, dict(clip_len=2, marginals="unit", content_share=0.9)),
    (8, 0.4, dict(clip_len=4, content_share=0.2)),
]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("frames,retention,kw", CASES)
def test_adaptive_quota_matches_reference(frames, retention, kw, backend):
    feats, scores = video(frames)
    out = AOTReducer(retention, quota="adaptive", backend=backend, **kw)(feats, scores, grid=(4, 4))
    m, clips = default_plan(frames, 16, retention, kw.get("clip_len"))
    ref = reduce_video(feats.numpy(), scores.numpy(), None, (4, 4), (2, 2), m, clips,
                       retention=retention, quota_rule="adaptive",
                       content_share=kw.get("content_share", 0.5),
                       marginals=kw.get("marginals", "probability"))
    compare(out, ref)
    assert len(out) == round(retention * frames * 16)


@pytest.mark.parametrize("frames,retention,kw", CASES)
def test_no_content_share_is_the_uniform_quota(frames, retention, kw):
    feats, scores = video(frames, dtype=torch.float32)
    kw = dict(kw, content_share=0.0)
    got = AOTReducer(retention, quota="adaptive", **kw)(feats, scores, grid=(4, 4))
    kw.pop("content_share")
    want = AOTReducer(retention, quota="uniform", **kw)(feats, scores, grid=(4, 4))
    for name in ("tokens", "sizes", "positions", "frame_ids", "dynamic"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_a_scene_cut_inside_a_clip_gets_the_dynamic_tokens():
    feats, scores = scene_cut()
    uniform = AOTReducer(0.3, clip_len=4, quota="uniform")(feats, scores, grid=(4, 4))
    adaptive = AOTReducer(0.3, clip_len=4, quota="adaptive", content_share=0.9)(
        feats, scores, grid=(4, 4))
    assert len(adaptive) == len(uniform) == round(0.3 * 16 * 16)
    u, a = dynamic_per_frame(uniform, 16), dynamic_per_frame(adaptive, 16)
    m = uniform.stats["anchors_per_frame"]
    assert sum(a) == sum(u) and max(a) <= m
    assert min(a[11:12]) > max(u) and sum(a[11:12]) > sum(u[11:12])  # the clip 8-11 cut at 11
    # still frames give up their slots, and every frame in a clip stays where it was
    assert sum(a[1:8]) < sum(u[1:8])
    assert adaptive.frame_ids.tolist() == sorted(adaptive.frame_ids.tolist())


def test_a_list_of_videos_keeps_each_budget():
    videos = [scene_cut(16, 6, seed=1), video(12, seed=2), scene_cut(16, 13, seed=3)]
    reducer = AOTReducer(0.25, clip_len=4, quota="adaptive")
    outs = reducer([v[0] for v in videos], [v[1] for v in videos], grid=(4, 4))
    for out, (f, s) in zip(outs, videos):
        single = reducer(f, s, grid=(4, 4))
        assert len(out) == round(0.25 * f.shape[0] * 16)
        for name in ("positions", "frame_ids", "dynamic"):
            assert torch.equal(getattr(out, name), getattr(single, name)), name
        torch.testing.assert_close(out.tokens, single.tokens)


def test_adaptive_quota_reads_nothing_on_the_host():
    reducer = AOTReducer(0.1, grid=(14, 14), max_iter=3, quota="adaptive", check_values=False)
    with fake_cuda():
        feats, scores, local = fake_video(32, 196)
        check_shapes(reducer(feats, scores, local), 32, 196, 0.1)
        feats, scores, local = fake_video(11, 196, batch=2)
        check_shapes(reducer(feats, scores, local), 11, 196, 0.1, lead=(2,))


def test_adaptive_quota_compiles_with_fullgraph():
    torch._dynamo.reset()
    reducer = AOTReducer(0.25, clip_len=3, max_iter=4, quota="adaptive", check_values=False)
    feats, scores = torch.randn(7, 16, 8), torch.rand(7, 16)
    eager = reducer(feats, scores)
    compiled = torch.compile(lambda f, s: reducer(f, s).positions, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(feats, scores), eager.positions)


@pytest.mark.parametrize("share", [0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("frames,retention", [(32, 0.10), (9, 0.3), (16, 0.25)])
def test_anchor_share_matches_reference(share, frames, retention):
    feats, scores = video(frames)
    out = AOTReducer(retention, anchor_share=share)(feats, scores, grid=(4, 4))
    m, clips = default_plan(frames, 16, retention, anchor_share=share)
    assert out.stats["anchors_per_frame"] == m and out.clips == clips
    compare(out, reduce_video(feats.numpy(), scores.numpy(), None, (4, 4), (2, 2), m, clips,
                              retention=retention))


@pytest.mark.parametrize("kw,match", [
    (dict(anchor_share=0.0), r"anchor_share must be in \(0, 1\]"),
    (dict(anchor_share=1.5), r"anchor_share must be in \(0, 1\]"),
    (dict(anchor_share=0.5, num_anchors=4), "not both"),
    (dict(anchor_share=0.8, num_anchors=4), "not both"),
    (dict(quota="even"), "quota must be one of"),
    (dict(quota="adaptive", tau=0.5), "needs tau=None"),
    (dict(quota="adaptive", content_share=1.0), r"content_share must be in \[0, 1\)"),
    (dict(content_share=-0.1), r"content_share must be in \[0, 1\)"),
    (dict(content_share="half"), "content_share"),
])
def test_bad_quota_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AOTReducer(0.2, **kw)


def test_presets_keep_the_papers_settings():
    """AOTReducer()'s measured defaults do not leak into the presets (SPEC §6 settings)."""
    r = AOTReducer.preset("llava-onevision-7b", 0.10)
    assert (r.eps, r.lam_intra, r.lam_inter, r.max_iter, r.quota) == (0.1, 1.0, 1.0, 100, "uniform")
    assert r.num_anchors == 126 and r.grid == (14, 14)
    threshold = AOTReducer.preset("llava-onevision-7b", 0.10, tau=0.5)  # no quota rule there
    assert threshold.tau == 0.5 and threshold.eps == 0.1
    assert AOTReducer.preset("qwen2.5-vl-7b", 0.1, quota="adaptive").quota == "adaptive"
    default = AOTReducer(0.1)
    assert (default.eps, default.lam_inter, default.quota) == (0.02, 0.0, "adaptive")
