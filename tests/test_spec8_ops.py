"""SPEC §8's op options (the authors' pipeline) on every backend against the float64 reference:
the spatial cost term, stop="scaling" (source scaling first, stop on its mean change), the
nearest-anchor blend, the quantile rule and the cost shift; and the authors' intra-frame and
inter-frame steps as one sinkhorn_aggregate call each."""
import numpy as np
import pytest
import torch

import aot_kernels as ak
from reference import authors_reference as A
from reference import ot_reference as R
from samples import BACKENDS, DTYPES, assert_within_rule, max_err, stack

SAMPLES = [  # (B, M, N, D, options)
    (3, 7, 11, 16, dict(spatial=0.5)),
    (3, 7, 11, 16, dict(stop="scaling", tol=1e-2)),
    (2, 9, 14, 8, dict(stop="scaling", tol=0.0, max_iter=30)),
    (2, 9, 14, 8, dict(nn_blend=0.1)),
    (4, 12, 30, 16, dict(spatial=0.5, stop="scaling", tol=1e-2, nn_blend=0.1)),
    (2, 9, 14, 8, dict(spatial=0.3, keep=4, weights="pad")),
    (2, 9, 14, 8, dict(stop="scaling", tol=1e-3, tau=0.5, weights="random")),
    (2, 9, 14, 8, dict(nn_blend=0.5, spatial=1.0, weights="pad")),
    (3, 9, 14, 8, dict(keep_quantile=0.3, shift_min=True, stop="scaling", tol=1e-2, eps=0.17)),
    (2, 9, 14, 8, dict(keep_quantile=0.1, weights="pad")),
    (2, 9, 14, 8, dict(shift_min=True, spatial=0.5, weights="pad")),
    (2, 9, 14, 8, dict(stop="scaling", tol=1e-2, spatial=0.5, weights="midpad")),
]
FIELDS = ("tokens", "mass", "confidence", "distance", "f", "g", "plan")


def name(sample):
    b, m, n, d, opts = sample
    return f"B{b}M{m}N{n}D{d}-" + "-".join(f"{k}{v}" for k, v in opts.items())


def make(sample, dtype=torch.float64):
    """Clustered features, grid-like positions in [0, 1]^2, optional weights; float64 weights."""
    b, m, n, d, opts = sample
    g = torch.Generator().manual_seed(m * 100 + n)
    x = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    y = x[:, torch.randint(0, m, (n,), generator=g)] + 0.7 * torch.randn(b, n, d, generator=g,
                                                                          dtype=torch.float64)
    pa, ps = torch.rand(b, m, 2, generator=g, dtype=torch.float64), torch.rand(b, n, 2, generator=g,
                                                                               dtype=torch.float64)
    aw = sw = None
    if opts.get("weights") == "random":
        aw, sw = torch.rand(b, m, generator=g, dtype=torch.float64) + 0.1, torch.rand(
            b, n, generator=g, dtype=torch.float64) + 0.1
    elif opts.get("weights") in ("pad", "midpad"):
        aw, sw = torch.ones(b, m, dtype=torch.float64), torch.ones(b, n, dtype=torch.float64)
        if opts["weights"] == "pad":
            aw[:, -1], sw[:, -1] = 0, 0
        else:  # padding in the middle: the transposed solve sees padded rows and columns inside
            aw[:, [2, 5]], sw[:, [1, 6, 7]] = 0, 0
    kw = {k: v for k, v in opts.items() if k != "weights"}
    if not kw.get("spatial"):
        pa = ps = None
    return x.to(dtype), y.to(dtype), aw, sw, pa, ps, kw


def reference(sample, dtype):
    x, y, aw, sw, pa, ps, kw = make(sample, dtype)
    as_np = lambda t: None if t is None else t.double().numpy()  # noqa: E731
    return R.batched_sinkhorn_aggregate(as_np(x), as_np(y), as_np(aw), as_np(sw), as_np(pa),
                                        as_np(ps), **kw)


def run(sample, dtype, backend):
    x, y, aw, sw, pa, ps, kw = make(sample, dtype)
    return ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, anchor_pos=pa,
                                 source_pos=ps, return_plan=True, backend=backend, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=name)
def test_options_match_reference(sample, dtype):
    ref = reference(sample, dtype)
    out = {be: run(sample, dtype, be) for be in BACKENDS}
    assert_within_rule(out, ref, FIELDS, dtype)
    iterations = np.array([r.iterations for r in ref])
    for o in out.values():
        if dtype == torch.float64:
            assert np.array_equal(o.iterations.numpy(), iterations)
            assert np.array_equal(o.kept.numpy(), stack(ref, "kept").astype(bool))
        elif sample[4].get("stop") == "scaling" and sample[4].get("tol"):
            # The stop is a threshold on a float: rounding may move it by an iteration.
            assert (np.abs(o.iterations.numpy() - iterations) <= 1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sinkhorn_scaling_stop_on_a_given_cost(backend):
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 6, 9, generator=g, dtype=torch.float64) * 2
    sw = torch.ones(3, 9, dtype=torch.float64)
    sw[:, -2:] = 0
    out = ak.sinkhorn(cost, source_weight=sw, eps=0.1, tol=1e-2, stop="scaling",
                      return_plan=True, backend=backend)
    for b in range(3):
        r = R.sinkhorn(cost[b].numpy(), None, sw[b].numpy(), 0.1, 100, 1e-2, stop="scaling")
        assert out.iterations[b] == r.iterations < 100
        assert max_err(out.plan[b], r.plan) < 1e-12 and abs(out.error[b].item() - r.error) < 1e-12
        assert max_err(out.f[b], r.f) < 1e-12 and max_err(out.g[b], r.g) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_cost_matches_reference(backend):
    x, y, _, _, pa, ps, _ = make(SAMPLES[0])
    got = ak.cosine_cost(x, y, x_pos=pa, y_pos=ps, spatial=0.5, backend=backend)
    for b in range(x.shape[0]):
        want = R.cosine_cost(x[b].numpy(), y[b].numpy()) + R.spatial_cost(pa[b].numpy(),
                                                                          ps[b].numpy(), 0.5)
        assert max_err(got[b], want) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_authors_intra_step_is_one_call(backend):
    """SPEC §8.4-8.5 on a 9x9 grid: the reference's intra_frame == sinkhorn_aggregate with
    spatial 0.5 on the grid positions, stop="scaling" at 1e-2 and nn_blend 0.1."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(81, 12))
    anchors = A.select_anchors(rng.random(81), rng.random(81), (9, 9), 20, windows=(3, 3))
    others = [i for i in range(81) if i not in set(anchors)]
    pos = A.positions((9, 9))
    want, solved = A.intra_frame(feats[anchors], feats[others], pos[anchors], pos[others])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0)  # noqa: E731
    out = ak.sinkhorn_aggregate(t(feats[anchors]), t(feats[others]), anchor_pos=t(pos[anchors]),
                                source_pos=t(pos[others]), spatial=A.SPATIAL_WEIGHT, stop="scaling",
                                tol=A.STOP_TOL, nn_blend=A.NN_BLEND, backend=backend)
    assert out.iterations.item() == solved.iterations
    assert max_err(out.tokens[0], want) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", [1, 2, 3])
def test_the_authors_inter_step_is_one_call(backend, step):
    """SPEC §8.7: the reference's time-scaled step (cost (c - min c)(1 - exp(-l^2/4.5)) at eps
    0.1) == sinkhorn_aggregate with shift_min at eps 0.1 / (1 - exp(-l^2/4.5)), stop="scaling",
    keep_quantile."""
    rng = np.random.default_rng(step)
    x = rng.normal(size=(10, 12))
    y = x[rng.integers(0, 10, 13)] + 0.5 * rng.normal(size=(13, 12))
    want, dynamic, q, solved = A.inter_step(x, y, step, 0.3)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0)  # noqa: E731
    out = ak.sinkhorn_aggregate(t(x), t(y), eps=0.1 / A.time_factor(step), shift_min=True,
                                stop="scaling", tol=A.STOP_TOL, keep_quantile=0.3, backend=backend)
    assert out.iterations.item() == solved.iterations
    assert np.array_equal(out.kept[0].numpy(), dynamic)
    assert max_err(out.tokens[0], want) < 1e-10 and max_err(out.confidence[0], q) < 1e-10


@pytest.mark.parametrize("sample", [SAMPLES[0], SAMPLES[3], SAMPLES[4], SAMPLES[8]], ids=name)
def test_opcheck(sample):
    x, y, aw, sw, pa, ps, kw = make(sample)
    args = (x.requires_grad_(), y.requires_grad_(), aw, sw, kw.get("eps", 0.1), 1.0,
            kw.get("max_iter", 100), kw.get("tol", 0.0), None, None, pa, ps,
            kw.get("spatial", 0.0), kw.get("stop", "marginal"), kw.get("nn_blend", 0.0),
            kw.get("keep_quantile"), kw.get("shift_min", False))
    torch.library.opcheck(torch.ops.aot.sinkhorn_aggregate, args)
    torch.library.opcheck(torch.ops.aot.cosine_cost, (x, y, pa, ps, kw.get("spatial", 0.0)))


def test_gradients_with_every_option():
    """Converged (stop="scaling" with a tiny tol): the implicit gradient through the spatial
    cost and the blend equals float64 finite differences and the unrolled torch backend."""
    x, y, _, _, pa, ps, _ = make(SAMPLES[4])
    x, y, pa, ps = x[:1, :4, :5], y[:1, :6, :5], pa[:1, :4], ps[:1, :6]
    kw = dict(anchor_pos=pa, source_pos=ps, spatial=0.5, stop="scaling", tol=1e-13,
              max_iter=5000, nn_blend=0.1, eps=0.5)
    w = torch.randn(1, 4, 5, dtype=torch.float64)

    def loss(x_, y_, backend="cpp"):
        return (ak.sinkhorn_aggregate(x_, y_, backend=backend, **kw).tokens * w).sum()

    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (xr, yr), eps=1e-6, atol=1e-6)
    implicit = torch.autograd.grad(loss(xr, yr), (xr, yr))
    unrolled = torch.autograd.grad(loss(xr, yr, "torch"), (xr, yr))
    for a, b in zip(implicit, unrolled):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_bad_options_are_named():
    x, y, _, _, pa, ps, _ = make(SAMPLES[0])
    cases = [
        (dict(spatial=0.5), ValueError, "needs anchor_pos and source_pos"),
        (dict(anchor_pos=pa, source_pos=ps), ValueError, "used only with spatial > 0"),
        (dict(spatial=-1.0, anchor_pos=pa, source_pos=ps), ValueError, "spatial must be >= 0"),
        (dict(spatial=0.5, anchor_pos=pa[:, :3], source_pos=ps), ValueError, "anchor_pos must have shape"),
        (dict(spatial=0.5, anchor_pos=pa, source_pos=ps[..., :1]), ValueError, "different P"),
        (dict(spatial=0.5, anchor_pos=pa.long(), source_pos=ps), TypeError, "anchor_pos"),
        (dict(stop="rows"), ValueError, "stop must be one of"),
        (dict(nn_blend=1.5), ValueError, "nn_blend must be in"),
        (dict(nn_blend=0.1, keep=2), ValueError, "nn_blend applies to intra mode"),
        (dict(nn_blend=0.1, keep_quantile=0.3), ValueError, "nn_blend applies to intra mode"),
        (dict(keep_quantile=1.5), ValueError, "keep_quantile must be in"),
        (dict(keep_quantile=0.3, tau=0.5), ValueError, "give one of tau, keep and keep_quantile"),
        (dict(shift_min=1), TypeError, "shift_min must be a bool"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            ak.sinkhorn_aggregate(x, y, **kw)
    bad = pa.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="anchor_pos contains NaN"):
        ak.sinkhorn_aggregate(x, y, anchor_pos=bad, source_pos=ps, spatial=0.5)
    with pytest.raises(ValueError, match="stop must be"):
        torch.ops.aot.sinkhorn(torch.rand(1, 2, 3), None, None, 0.1, 10, 0.0, "rows")
    with pytest.raises(ValueError, match="anchor_pos is required"):
        torch.ops.aot.sinkhorn_aggregate(x, y, spatial=0.5)
