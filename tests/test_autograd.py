"""Gradients: implicit (compiled ops) vs float64 finite differences and vs unrolled autograd."""
import pytest
import torch

import aot_kernels as ak
from samples import SAMPLES, inputs, saved_bytes

CONVERGED = dict(max_iter=3000, tol=1e-14)


def small(seed, B=2, M=4, N=6, D=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, M, D, generator=g, dtype=torch.float64)
    y = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    return x.requires_grad_(), y.requires_grad_()


@pytest.mark.parametrize("mode", [{}, {"tau": 0.55}, {"keep": 2}], ids=["intra", "tau", "keep"])
@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_gradcheck_sinkhorn_aggregate(mode, eps):
    x, y = small(1)

    def fn(x, y):
        r = ak.sinkhorn_aggregate(x, y, eps=eps, backend="cpp", **CONVERGED, **mode)
        return r.tokens, r.mass, r.distance, r.confidence

    assert torch.autograd.gradcheck(fn, (x, y), atol=1e-6, rtol=1e-4)


def test_gradcheck_sinkhorn_aggregate_with_padding():
    x, y = small(2)
    sw = torch.tensor([[1.0, 1, 1, 1, 0, 0], [1, 2, 3, 4, 5, 0]], dtype=torch.float64)

    def fn(x, y):
        r = ak.sinkhorn_aggregate(x, y, source_weight=sw, backend="cpp", **CONVERGED)
        return r.tokens, r.distance

    assert torch.autograd.gradcheck(fn, (x, y), atol=1e-6, rtol=1e-4)


def test_gradcheck_sinkhorn_plan():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(2, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    aw = torch.tensor([[1.0, 2, 3, 0], [1, 1, 1, 1]], dtype=torch.float64)

    def fn(c):
        r = ak.sinkhorn(c, aw, eps=0.2, return_plan=True, backend="cpp", **CONVERGED)
        return r.plan

    assert torch.autograd.gradcheck(fn, (cost,), atol=1e-6, rtol=1e-4)


def test_gradcheck_cosine_cost():
    x, y = small(4)
    assert torch.autograd.gradcheck(lambda a, b: ak.cosine_cost(a, b, backend="cpp"), (x, y))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("sample", [SAMPLES[4], SAMPLES[6], SAMPLES[11]], ids=lambda s: s.name)
def test_implicit_matches_unrolled(sample, dtype):
    """On converged problems the implicit gradient equals autograd through the iterations."""
    x, y, aw, sw = inputs(sample, dtype)
    kw = dict(eps=sample.eps, tau=sample.tau, keep=sample.keep, anchor_weight=aw,
              source_weight=sw, max_iter=1000, tol=1e-12 if dtype == torch.float64 else 1e-6)
    grads = {}
    for backend in ("cpp", "torch"):
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        r = ak.sinkhorn_aggregate(xr, yr, backend=backend, **kw)
        w = torch.linspace(-1, 1, r.tokens.numel(), dtype=dtype).view_as(r.tokens)
        loss = (w * r.tokens).sum() + r.distance.sum() + (r.mass ** 2).sum()
        grads[backend] = torch.autograd.grad(loss, (xr, yr))
    tol = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    for got, want in zip(grads["cpp"], grads["torch"]):
        torch.testing.assert_close(got, want, **tol)


def test_low_precision_gradients_have_input_dtype():
    x, y, _, _ = inputs(SAMPLES[4], torch.bfloat16)
    x.requires_grad_()
    y.requires_grad_()
    r = ak.sinkhorn_aggregate(x, y, backend="cpp")
    gx, gy = torch.autograd.grad(r.tokens.float().sum(), (x, y))
    assert gx.dtype == torch.bfloat16 and gy.dtype == torch.bfloat16
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_backward_memory_does_not_grow_with_iterations():
    """The compiled path saves O(B*(M+N)*D) for backward, whatever max_iter is."""
    x, y = small(5, B=4, M=30, N=40, D=8)
    few = saved_bytes(lambda: ak.sinkhorn_aggregate(x, y, max_iter=10, backend="cpp"))
    many = saved_bytes(lambda: ak.sinkhorn_aggregate(x, y, max_iter=1000, backend="cpp"))
    assert few == many
    assert many <= 8 * (x.numel() + y.numel()) * x.element_size()
