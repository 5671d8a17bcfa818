"""Every op and backend against the float64 reference (SPEC §1-3, §5 step)."""
import numpy as np
import pytest
import torch

import aot_kernels as ak
from reference import ot_reference as R
from samples import (BACKENDS, DTYPES, SAMPLES, assert_within_rule, inputs, kwargs,
                     max_err, reference, stack)

FIELDS = ("tokens", "mass", "confidence", "distance", "f", "g", "plan")


def run(sample, dtype, backend):
    x, y, aw, sw = inputs(sample, dtype)
    return ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, return_plan=True,
                                 backend=backend, **kwargs(sample))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sinkhorn_aggregate_matches_reference(sample, dtype):
    ref = reference(sample, dtype)
    out = {be: run(sample, dtype, be) for be in BACKENDS}
    assert_within_rule(out, ref, FIELDS, dtype)
    assert all(getattr(o, name).dtype == dtype for o in out.values() for name in FIELDS)
    for be in BACKENDS:
        o = out[be]
        ref_kept = stack(ref, "kept").astype(bool)
        if dtype == torch.float64:
            assert np.array_equal(o.kept.numpy(), ref_kept)
        elif sample.keep is not None:  # same count; lowest confidence kept (ties within rounding)
            assert (o.kept.sum(1) == sample.keep).all()
        ref_iters = np.array([r.iterations for r in ref])
        if sample.tol == 0:
            assert (o.iterations == sample.max_iter).all()
        elif dtype == torch.float64:
            assert np.array_equal(o.iterations.numpy(), ref_iters)
        assert o.iterations.dtype == torch.int64 and o.kept.dtype == torch.bool


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sinkhorn_matches_reference(sample, backend):
    x, y, aw, sw = inputs(sample)
    cost = torch.from_numpy(R.batched_cosine_cost(x.numpy(), y.numpy()))
    ref = R.batched_sinkhorn(cost.numpy(), None if aw is None else aw.numpy(),
                             None if sw is None else sw.numpy(), eps=sample.eps,
                             max_iter=sample.max_iter, tol=sample.tol)
    out = ak.sinkhorn(cost, aw, sw, eps=sample.eps, max_iter=sample.max_iter, tol=sample.tol,
                      return_plan=True, backend=backend)
    for name in ("f", "g", "plan"):
        assert max_err(getattr(out, name), stack(ref, name)) < 1e-9, name
    assert np.array_equal(out.iterations.numpy(), [r.iterations for r in ref])
    assert np.allclose(out.error.numpy(), [r.error for r in ref], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_cost_matches_reference(backend, dtype):
    for sample in SAMPLES[:8]:
        x, y, _, _ = inputs(sample, dtype)
        ref = R.batched_cosine_cost(x.double().numpy(), y.double().numpy())
        cost = ak.cosine_cost(x, y, backend=backend)
        assert cost.dtype == dtype and cost.shape == ref.shape
        assert max_err(cost, ref) <= {torch.float64: 1e-12, torch.float32: 1e-6,
                                      torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vector_has_cost_one(backend):
    x = torch.zeros(1, 2, 3, dtype=torch.float64)
    x[0, 1, 0] = 2.0
    y = torch.tensor([[[1.0, 0, 0], [0, 0, 0]]], dtype=torch.float64)
    cost = ak.cosine_cost(x, y, backend=backend)
    assert torch.equal(cost, torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [{}, {"tau": 0.4}, {"keep": 3}])
def test_padding_equals_unpadded(backend, mode):
    """Zero weights at extra anchors/sources give the unpadded result; padding gets nothing."""
    g = torch.Generator().manual_seed(3)
    B, M, N, D, PM, PN = 3, 6, 9, 5, 2, 4
    x = torch.randn(B, M + PM, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, N + PN, D, generator=g, dtype=torch.float64)
    aw = torch.rand(B, M + PM, generator=g, dtype=torch.float64) + 0.2
    sw = torch.rand(B, N + PN, generator=g, dtype=torch.float64) + 0.2
    aw[:, M:] = 0
    sw[:, N:] = 0
    padded = ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, return_plan=True,
                                   backend=backend, **mode)
    plain = ak.sinkhorn_aggregate(x[:, :M], y[:, :N], anchor_weight=aw[:, :M],
                                  source_weight=sw[:, :N], return_plan=True, backend=backend, **mode)
    for name in ("tokens", "mass"):
        torch.testing.assert_close(getattr(padded, name)[:, :M], getattr(plain, name), rtol=0, atol=1e-12)
    for name in ("confidence", "g"):
        torch.testing.assert_close(getattr(padded, name)[:, :N], getattr(plain, name), rtol=0, atol=1e-12)
    torch.testing.assert_close(padded.plan[:, :M, :N], plain.plan, rtol=0, atol=1e-12)
    torch.testing.assert_close(padded.distance, plain.distance, rtol=0, atol=1e-12)
    assert torch.equal(padded.kept[:, :N], plain.kept)
    # Padding is exactly inert.
    assert torch.equal(padded.plan[:, M:], torch.zeros_like(padded.plan[:, M:]))
    assert torch.equal(padded.plan[:, :, N:], torch.zeros_like(padded.plan[:, :, N:]))
    assert torch.equal(padded.tokens[:, M:], x[:, M:])
    assert (padded.f[:, M:] == float("-inf")).all() and (padded.g[:, N:] == float("-inf")).all()
    assert not padded.kept[:, N:].any() and (padded.confidence[:, N:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_problems_stop_independently(backend):
    """With tol > 0 each problem stops on its own, with the result it would have alone."""
    g = torch.Generator().manual_seed(5)
    B, M, N, D = 4, 8, 12, 6
    x = torch.randn(B, M, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    kw = dict(eps=0.05, tol=1e-7, max_iter=2000, backend=backend)
    y[0] = x[0, torch.arange(N) % M]  # an easy problem next to hard ones
    batch = ak.sinkhorn_aggregate(x, y, **kw)
    assert len(set(batch.iterations.tolist())) > 1, "problems should need different counts"
    for b in range(B):
        alone = ak.sinkhorn_aggregate(x[b:b + 1], y[b:b + 1], **kw)
        assert alone.iterations.item() == batch.iterations[b].item()
        fixed = ak.sinkhorn_aggregate(x[b:b + 1], y[b:b + 1], eps=0.05, tol=0.0,
                                      max_iter=int(batch.iterations[b]), backend=backend)
        torch.testing.assert_close(fixed.tokens[0], batch.tokens[b], rtol=0, atol=1e-12)
        assert batch.error[b] < 1e-7


@pytest.mark.parametrize("backend", BACKENDS)
def test_inter_mode_merges_only_stable(backend):
    """Inter mode: mass = sum of p over merged sources; keep=0 merges all, keep=N none."""
    x, y, _, _ = inputs(SAMPLES[10])
    n = y.shape[1]
    none_kept = ak.sinkhorn_aggregate(x, y, keep=0, backend=backend, return_plan=True)
    p = none_kept.plan / none_kept.plan.sum(1, keepdim=True)
    torch.testing.assert_close(none_kept.mass, p.sum(2), rtol=0, atol=1e-12)
    torch.testing.assert_close(none_kept.mass.sum(1), torch.full((x.shape[0],), float(n), dtype=x.dtype))
    all_kept = ak.sinkhorn_aggregate(x, y, keep=n, backend=backend)
    assert all_kept.kept.all() and torch.equal(all_kept.tokens, x)
    assert torch.equal(ak.sinkhorn_aggregate(x, y, tau=0.0, backend=backend).kept,
                       torch.zeros_like(all_kept.kept))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lam_zero_returns_anchors(backend):
    x, y, _, _ = inputs(SAMPLES[4])
    assert torch.equal(ak.sinkhorn_aggregate(x, y, lam=0.0, backend=backend).tokens, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_underflow_paths_match_reference(dtype):
    """eps = 0.002 with a source opposite to every anchor: exp(-C/eps) = exp(-1000) underflows
    even in fp64, so the compiled solver must take its log-domain and absorption paths."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 6, 4, generator=g, dtype=torch.float64).abs()  # all in one orthant
    y = torch.cat([x[:, :5] + 0.3 * torch.randn(2, 5, 4, generator=g, dtype=torch.float64),
                   -x[:, :1].abs() - 1.0], dim=1)  # last source opposite to all anchors
    for eps in (0.002, 0.01):
        ref = R.batched_sinkhorn_aggregate(x.numpy(), y.numpy(), eps=eps, max_iter=300)
        out = ak.sinkhorn_aggregate(x.to(dtype), y.to(dtype), eps=eps, max_iter=300,
                                    return_plan=True, backend="cpp")
        tol = 1e-9 if dtype == torch.float64 else 5e-5
        for name in ("tokens", "mass", "plan", "f", "g"):
            assert max_err(getattr(out, name), stack(ref, name)) < tol, (eps, name)
        assert torch.isfinite(out.tokens).all()


def test_baseline_build_matches_reference():
    """The non-AVX2 build of the hot loops (what CPUs without AVX2/FMA run), forced by
    AOT_KERNELS_NO_AVX2 in a fresh process, agrees with the reference like the AVX2 build."""
    import os
    import subprocess
    import sys

    code = ("import torch, aot_kernels as ak, sys; sys.path.insert(0, 'tests'); "
            "from samples import SAMPLES, inputs, kwargs; "
            "out = []\n"
            "for i in (4, 6, 7, 11):\n"
            "    s = SAMPLES[i]; x, y, aw, sw = inputs(s, torch.float32)\n"
            "    out.append(ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, "
            "backend='cpp', **kwargs(s)).tokens)\n"
            "torch.save(out, sys.argv[1])")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.pt")
        env = dict(os.environ, AOT_KERNELS_NO_AVX2="1")
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        baseline = torch.load(path)
    for tokens, i in zip(baseline, (4, 6, 7, 11)):
        expected = stack(reference(SAMPLES[i], torch.float32), "tokens")
        assert max_err(tokens, expected) < 1e-5
