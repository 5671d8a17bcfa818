"""SPEC §9 proxies: ideals, orderings and invariances that a wrong metric would break."""
import math

import pytest
import torch
import torch.nn.functional as F

from aot_kernels import metrics, reducers
from aot_kernels.reducers.video import ReducedVideo


def reduced(tokens, frame_ids, sizes=None):
    k = len(tokens)
    sizes = torch.ones(k, dtype=tokens.dtype) if sizes is None else sizes
    return ReducedVideo(tokens, torch.as_tensor(frame_ids), torch.arange(k), sizes,
                        torch.zeros(k, dtype=torch.bool), [(0, int(max(frame_ids)) + 1)], (1, k))


def video(frames=6, n=16, d=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, n, d, generator=g, dtype=torch.float64) * 2


def identity(x):
    f, n, _ = x.shape
    return reduced(x.reshape(f * n, -1), torch.arange(f).repeat_interleave(n))


def test_identity_reduction_is_ideal_for_every_proxy():
    x = video()
    out = identity(x)
    r = metrics.readout(x, out)
    assert set(r) == {f"readout@{m:g}" for m in metrics.TEMPERATURES} | {"readout"}
    for v in r.values():
        assert v == pytest.approx(1.0, abs=1e-12)
    assert metrics.reconstruction(x, out, tau=0) == pytest.approx(1.0, abs=1e-12)
    assert metrics.temporal(x, out, tau=0) == pytest.approx(1.0, abs=1e-12)
    assert metrics.needle(x, out, [3, 40, 41]) == pytest.approx(1.0, abs=1e-12)
    # with the soft default the near-ideal holds on tokens that are far apart
    assert metrics.reconstruction(x, out) > 0.999
    # keeping everything through a real reducer is the identity too
    kept = reducers.build("topk", retention=1.0)(x, torch.rand(6, 16, dtype=torch.float64), grid=(4, 4))
    assert metrics.readout(x, kept)["readout"] == pytest.approx(1.0, abs=1e-12)


def test_reconstruction_by_hand():
    """Two originals (frames 0 and 1), one reduced token e0 labelled frame 0: the first is
    rebuilt exactly, the second (orthogonal) has cosine 0; temporal takes 1 frame of penalty
    off the second."""
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    one = reduced(torch.tensor([[2.0, 0.0]], dtype=torch.float64), [0])
    assert metrics.reconstruction(x, one) == pytest.approx(0.5)
    assert metrics.temporal(x, one, frame_penalty=0.1) == pytest.approx((1.0 + (0.0 - 0.1)) / 2)
    # soft weights: r = (e0, e1) gives token e0 weights softmax((1, 0) / tau)
    both = reduced(torch.eye(2, dtype=torch.float64), [0, 1])
    tau = 0.5
    w = torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64) / tau, 0)
    assert metrics.reconstruction(x, both, tau=tau) == pytest.approx((w[0] / w.norm()).item())


def test_readout_matches_a_direct_computation():
    x = video(3, 8, 6)
    pick = torch.tensor([0, 5, 9, 17, 23])
    out = reduced(x.reshape(24, 6)[pick], (pick // 8).tolist())
    q = metrics.held_out_queries(x, 32, seed=3)
    s = 2.0 / math.sqrt(6)
    flat = x.reshape(24, 6)
    full = torch.softmax(q @ flat.T * s, 1) @ flat
    part = torch.softmax(q @ flat[pick].T * s, 1) @ flat[pick]
    want = F.cosine_similarity(full, part, dim=1).mean().item()
    got = metrics.readout(x, out, temperatures=[2.0], num_queries=32, seed=3)
    assert got["readout@2"] == pytest.approx(want, abs=1e-12) and got["readout"] == got["readout@2"]


def test_queries_are_held_out_and_seeded():
    x = video()
    q = metrics.held_out_queries(x, 64, seed=0)
    assert q.shape == (64, 12)
    assert torch.equal(q, metrics.held_out_queries(x, 64, seed=0))
    assert not torch.equal(q, metrics.held_out_queries(x, 64, seed=1))
    cos = F.normalize(q, dim=1) @ F.normalize(x.reshape(-1, 12), dim=1).T
    assert cos.max() < 0.99  # no query is a token of the video
    torch.testing.assert_close(q.norm(dim=1), x.reshape(-1, 12).norm(dim=1).mean().expand(64))


def test_size_free_readout_ignores_uniform_repetition_but_not_uneven():
    """A static video (one frame repeated 4 times) reduced to one copy is exact without sizes
    (softmax over a doubled set reads the same); uneven multiplicities are only exact with the
    proportional option and the true sizes."""
    frame = video(1, 12, 8)[0]
    static = frame.repeat(4, 1, 1)
    one_copy = reduced(frame, [0] * 12)
    assert metrics.readout(static, one_copy)["readout"] == pytest.approx(1.0, abs=1e-12)
    uneven = torch.cat([frame[:6], frame[:6], frame]).unsqueeze(0)
    sizes = torch.tensor([3.0] * 6 + [1.0] * 6, dtype=torch.float64)
    plain = metrics.readout(uneven, reduced(frame, [0] * 12, sizes))["readout"]
    prop = metrics.readout(uneven, reduced(frame, [0] * 12, sizes), proportional=True)["readout"]
    assert prop == pytest.approx(1.0, abs=1e-12) and plain < 0.999


def test_order_of_reduced_tokens_does_not_matter():
    x = video()
    out = reducers.build("random", retention=0.25, seed=2)(x)
    perm = torch.randperm(len(out), generator=torch.Generator().manual_seed(0))
    shuffled = ReducedVideo(out.tokens[perm], out.frame_ids[perm], out.positions[perm],
                            out.sizes[perm], out.dynamic[perm], out.clips, out.grid)
    a, b = metrics.proxies(x, out), metrics.proxies(x, shuffled)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-10)


def test_every_proxy_drops_for_a_clearly_worse_reduction():
    x = video(6, 16, 12)
    s = torch.rand(6, 16, dtype=torch.float64)
    half = reducers.build("random", retention=0.5, seed=0)(x, s)
    tenth = reducers.build("random", retention=0.1, seed=0)(x, s)
    a, b = metrics.proxies(x, half, needle_indices=[5, 21]), metrics.proxies(x, tenth, needle_indices=[5, 21])
    assert a["readout"] > b["readout"] and a["reconstruction"] > b["reconstruction"]
    assert a["temporal"] > b["temporal"]
    # one token per frame, the mean of the frame, is worse still
    means = reduced(x.mean(1), list(range(6)))
    assert metrics.reconstruction(x, means) < b["reconstruction"]


def test_temporal_penalises_content_carried_at_the_wrong_frame():
    x = video(4, 8, 10)
    out = identity(x)
    moved = reduced(out.tokens, torch.zeros(len(out), dtype=torch.long))  # all labelled frame 0
    assert metrics.reconstruction(x, moved, tau=0) == pytest.approx(1.0, abs=1e-12)
    # frames 0..3 at 0.01 per frame: mean penalty 0.015 at tau = 0
    assert metrics.temporal(x, moved, tau=0) == pytest.approx(1.0 - 0.015, abs=1e-12)


def test_needle_is_lost_when_its_tokens_are_averaged_away():
    x = video(4, 8, 10)
    flat = x.reshape(32, 10)
    needle_idx = [9, 10]  # frame 1
    keep = [i for i in range(32) if i not in needle_idx]
    without = reduced(flat[keep], [i // 8 for i in keep])
    with_it = reduced(flat[[9, 10, 0]], [1, 1, 0])
    assert metrics.needle(x, with_it, needle_idx) == pytest.approx(1.0, abs=1e-12)
    assert metrics.needle(x, without, needle_idx) < 0.9


def test_random_band_brackets_random_and_needs_two_seeds():
    x = video()
    band = metrics.random_band(x, 0.25, seeds=range(4))
    for s in range(4):
        got = metrics.proxies(x, reducers.build("random", retention=0.25, seed=s, merge=None)(x))
        for k, (lo, hi) in band.items():
            assert lo - 1e-12 <= got[k] <= hi + 1e-12
    assert any(hi > lo for lo, hi in band.values())
    with pytest.raises(ValueError, match="seeds"):
        metrics.random_band(x, 0.25, seeds=[0])


def test_bad_arguments_are_named():
    x = torch.randn(2, 4, 8)
    out = reducers.build("random", retention=0.5)(x)
    with pytest.raises(TypeError, match="ReducedVideo"):
        metrics.readout(x, out.tokens)
    with pytest.raises(TypeError, match="features"):
        metrics.reconstruction(x.numpy(), out)
    with pytest.raises(ValueError, match="D=8"):
        metrics.temporal(torch.randn(2, 4, 6), out)
    with pytest.raises(ValueError, match=r"\[F, N, D\]"):
        metrics.reconstruction(torch.randn(8, 8), out)
    with pytest.raises(ValueError, match="floating"):
        metrics.reconstruction(torch.ones(2, 4, 8, dtype=torch.long), out)
    with pytest.raises(ValueError, match="NaN"):
        metrics.readout(torch.full((2, 4, 8), float("nan")), out)
    with pytest.raises(ValueError, match="frame_ids"):
        metrics.reconstruction(x[:1], out)  # tokens from frame 1 of a 1-frame video
    batch = reducers.build("random", retention=0.5)(torch.stack([x, x]))
    with pytest.raises(ValueError, match="batch"):
        metrics.readout(x, batch)
    with pytest.raises(ValueError, match="temperature"):
        metrics.readout(x, out, temperatures=[1.0, 0.0])
    with pytest.raises(ValueError, match="temperatures"):
        metrics.readout(x, out, temperatures=[])
    with pytest.raises(TypeError, match="proportional"):
        metrics.readout(x, out, proportional=1)
    with pytest.raises(ValueError, match="num_queries"):
        metrics.readout(x, out, num_queries=0)
    with pytest.raises(ValueError, match="tau"):
        metrics.reconstruction(x, out, tau=-1.0)
    with pytest.raises(ValueError, match="frame_penalty"):
        metrics.temporal(x, out, frame_penalty=float("nan"))
    with pytest.raises(ValueError, match="indices"):
        metrics.needle(x, out, [])
    with pytest.raises(ValueError, match="indices"):
        metrics.needle(x, out, [0, 8])
    with pytest.raises(ValueError, match="indices"):
        metrics.needle(x, out, [0.5])


def test_low_rank_shortcut_is_exact(monkeypatch):
    """Features in a 10-dimensional subspace of D = 200: the proxies computed in the span's
    coordinates equal the ones computed in D (the shortcut turned off)."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(4, 36, 10, generator=g, dtype=torch.float64) @
         torch.randn(10, 200, generator=g, dtype=torch.float64))
    assert metrics._span_basis(x.reshape(-1, 200)) is not None
    out = reducers.build("tome", retention=0.2)(x, grid=(6, 6))
    fast = metrics.proxies(x, out, needle_indices=[3, 50])
    monkeypatch.setattr(metrics, "SPAN_RANK", 10 ** 6)  # d <= 2 * SPAN_RANK: no shortcut
    assert metrics._span_basis(x.reshape(-1, 200)) is None
    slow = metrics.proxies(x, out, needle_indices=[3, 50])
    for k in slow:
        assert fast[k] == pytest.approx(slow[k], abs=1e-10), k
    # full-rank features never take it
    monkeypatch.undo()
    assert metrics._span_basis(torch.randn(300, 200, dtype=torch.float64)) is None
