"""torch.library contracts: opcheck on every sample, torch.compile, and the fallback path."""
import warnings

import pytest
import torch

import aot_kernels as ak
from aot_kernels.ops import api, library
from samples import SAMPLES, inputs, kwargs

# opcheck runs the op many times (fake, autograd, AOT dispatch); the 300-sized samples add
# minutes and no new paths, so every sample but those two.
OPCHECK_SAMPLES = [s for s in SAMPLES if s.M * s.N <= 5000]


def test_ops_registered_after_import():
    assert ak.HAS_EXTENSION, ak.EXTENSION_ERROR
    for name in ("cosine_cost", "sinkhorn", "sinkhorn_aggregate"):
        assert hasattr(torch.ops.aot, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=lambda s: s.name)
def test_opcheck_sinkhorn_aggregate(sample, dtype):
    x, y, aw, sw = inputs(sample, dtype)
    k = kwargs(sample)
    args = (x.requires_grad_(), y.requires_grad_(), aw, sw, k["eps"], 1.0, k["max_iter"], k["tol"],
            k["tau"], k["keep"])
    torch.library.opcheck(torch.ops.aot.sinkhorn_aggregate, args)


@pytest.mark.parametrize("sample", OPCHECK_SAMPLES, ids=lambda s: s.name)
def test_opcheck_sinkhorn_and_cost(sample):
    x, y, aw, sw = inputs(sample)
    torch.library.opcheck(torch.ops.aot.cosine_cost, (x.requires_grad_(), y.requires_grad_()))
    cost = torch.ops.aot.cosine_cost(x.detach(), y.detach()).requires_grad_()
    k = kwargs(sample)
    torch.library.opcheck(torch.ops.aot.sinkhorn, (cost, aw, sw, k["eps"], k["max_iter"], k["tol"]))


def test_opcheck_half_precision():
    x, y, _, _ = inputs(SAMPLES[4], torch.bfloat16)
    torch.library.opcheck(torch.ops.aot.sinkhorn_aggregate,
                          (x, y, None, None, 0.1, 1.0, 20, 0.0, None, None))


def test_torch_compile_fullgraph():
    x, y, _, _ = inputs(SAMPLES[5], torch.float32)

    def direct(x, y):
        out = torch.ops.aot.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 100, 0.0, None, 4)
        return out[0] * 2 + 1, out[4]

    def wrapper(x, y):
        r = ak.sinkhorn_aggregate(x, y, keep=4)
        return r.tokens * 2 + 1, r.distance

    want = direct(x, y)
    for fn in (direct, wrapper):
        got = torch.compile(fn, fullgraph=True, backend="inductor")(x, y)
        for g_, w_ in zip(got, want):
            torch.testing.assert_close(g_, w_)


def test_torch_compile_backward():
    x, y, _, _ = inputs(SAMPLES[4], torch.float64)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()

    @torch.compile(fullgraph=True)
    def loss(x, y):
        r = ak.sinkhorn_aggregate(x, y, max_iter=500, tol=1e-12)
        return r.tokens.square().sum() + r.distance.sum()

    got = torch.autograd.grad(loss(xr, yr), (xr, yr))
    r = ak.sinkhorn_aggregate(xr, yr, max_iter=500, tol=1e-12)
    want = torch.autograd.grad(r.tokens.square().sum() + r.distance.sum(), (xr, yr))
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_)


def test_fallback_without_extension(monkeypatch):
    """A missing extension degrades to the torch backend with one warning, not an ImportError."""
    x, y, _, _ = inputs(SAMPLES[4])
    want = ak.sinkhorn_aggregate(x, y, backend="torch").tokens
    monkeypatch.setattr(library, "HAS_EXTENSION", False)
    monkeypatch.setattr(library, "EXTENSION_ERROR", "ImportError: simulated")
    monkeypatch.setattr(api, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="simulated"):
        got = ak.sinkhorn_aggregate(x, y).tokens
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ak.sinkhorn_aggregate(x, y)  # warned once only
    with pytest.raises(RuntimeError, match="backend='cpp'.*simulated"):
        ak.sinkhorn_aggregate(x, y, backend="cpp")
