"""The ops, their autograd and the reducer on CUDA tensors (Triton compiled for the GPU), against
the C++ CPU backend. Skipped without a CUDA device; `make gpu-check` runs them there."""
import pytest
import torch

import aot_kernels as ak
from aot_kernels import gpu

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and gpu.HAS_TRITON and not gpu.interpreting()),
    reason="needs a CUDA device and compiled Triton (TRITON_INTERPRET=0)")


@pytest.mark.parametrize("n", [70, 603], ids=["sweep-128", "sweep-1024"])
def test_gradients_on_cuda_match_the_cpu_backend(n):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 126, 64, generator=g, dtype=torch.float64)
    y = torch.randn(4, n, 64, generator=g, dtype=torch.float64)
    weights = torch.randn(4, 126, 64, generator=g, dtype=torch.float64)
    grads = []
    for device, backend in (("cpu", "cpp"), ("cuda", "auto")):
        xd = x.float().to(device).requires_grad_()
        yd = y.float().to(device).requires_grad_()
        out = ak.sinkhorn_aggregate(xd, yd, max_iter=200, tol=1e-6, backend=backend)
        (out.tokens * weights.float().to(device)).sum().backward()
        grads.append((xd.grad.cpu(), yd.grad.cpu(), out.tokens.detach().cpu()))
    for cpu_t, cuda_t in zip(*grads):
        torch.testing.assert_close(cuda_t, cpu_t, rtol=1e-3, atol=1e-4)


def test_reducer_on_cuda_matches_the_cpu_backend():
    g = torch.Generator().manual_seed(0)
    feats, scores = torch.randn(32, 196, 1152, generator=g), torch.rand(32, 196, generator=g)
    want = ak.AOTReducer(0.1, backend="cpp")(feats, scores)
    got = ak.AOTReducer(0.1)(feats.cuda(), scores.cuda())
    assert got.tokens.is_cuda and got.tokens.shape == want.tokens.shape
    assert torch.equal(got.positions.cpu(), want.positions)
    torch.testing.assert_close(got.tokens.cpu(), want.tokens, rtol=0, atol=1e-4)


def test_clip_aggregate_on_cuda_matches_the_cpu_backend():
    """The Triton clip scan (the op's CUDA kernel) and its backward (the replay) against C++."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(4, 8, 126, 64, generator=g)
    lengths, keep = torch.tensor([8, 8, 5, 2]), torch.full((4, 8), 4)
    weights = torch.randn(4, 126, 64, generator=g)
    results = []
    for device, backend in (("cpu", "cpp"), ("cuda", "auto")):
        x = frames.to(device).requires_grad_()
        out = ak.clip_aggregate(x, lengths.to(device), keep=keep.to(device), max_iter=200,
                                tol=1e-6, backend=backend)
        (out.anchors * weights.to(device)).sum().backward()
        results.append([t.detach().cpu() for t in (out.anchors, out.sizes, out.kept, x.grad)])
    (a_cpu, s_cpu, k_cpu, g_cpu), (a_gpu, s_gpu, k_gpu, g_gpu) = results
    assert torch.equal(k_gpu, k_cpu)
    torch.testing.assert_close(a_gpu, a_cpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(s_gpu, s_cpu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-3, atol=1e-4)
