"""The ops, their autograd and the reducer on CUDA tensors (Triton compiled for the GPU), against
the C++ CPU backend. Skipped without a CUDA device; `make gpu-check` runs them there."""
import pytest
import torch

import aot_kernels as ak
from aot_kernels import gpu
from samples import cuda_tol

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
        torch.testing.assert_close(cuda_t, cpu_t, **cuda_tol(torch.float32, 1e-6))


def test_reducer_on_cuda_matches_the_cpu_backend():
    g = torch.Generator().manual_seed(0)
    feats, scores = torch.randn(32, 196, 1152, generator=g), torch.rand(32, 196, generator=g)
    want = ak.AOTReducer(0.1, backend="cpp")(feats, scores)
    got = ak.AOTReducer(0.1)(feats.cuda(), scores.cuda())
    assert got.tokens.is_cuda and got.tokens.shape == want.tokens.shape
    assert torch.equal(got.positions.cpu(), want.positions)
    torch.testing.assert_close(got.tokens.cpu(), want.tokens, **cuda_tol(torch.float32))


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
    torch.testing.assert_close(a_gpu, a_cpu, **cuda_tol(torch.float32, 1e-6))
    torch.testing.assert_close(s_gpu, s_cpu, **cuda_tol(torch.float32, 1e-4))  # sizes ~ 1 + lam P
    torch.testing.assert_close(g_gpu, g_cpu, **cuda_tol(torch.float32, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_sinkhorn_aggregate_on_cuda_matches_the_cpu_backend_per_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 126, 256, generator=g).to(dtype)
    y = torch.randn(8, 70, 256, generator=g).to(dtype)
    want = ak.sinkhorn_aggregate(x, y, keep=8, backend="cpp")
    got = ak.sinkhorn_aggregate(x.cuda(), y.cuda(), keep=8)
    for name in ("tokens", "mass", "f", "g"):
        torch.testing.assert_close(getattr(got, name).cpu().float(),
                                   getattr(want, name).float(), **cuda_tol(dtype), msg=name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_inputs_on_the_second_gpu_run_there_while_the_first_is_current():
    """Triton launches on the current device; the launchers switch to the inputs' device and
    its current stream (issue 21). Inputs made on a side stream of cuda:1, cuda:0 current."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 126, 128, generator=g), torch.randn(4, 70, 128, generator=g)
    frames = torch.randn(2, 4, 20, 64, generator=g)
    keep = torch.full((2, 4), 3)
    want = ak.sinkhorn_aggregate(x, y, keep=5, backend="cpp")
    want_clip = ak.clip_aggregate(frames, keep=keep, backend="cpp")
    side = torch.cuda.Stream(device="cuda:1")
    with torch.cuda.stream(side):  # cuda:1 current, `side` its current stream
        x1, y1 = x.to("cuda:1", non_blocking=True), y.to("cuda:1", non_blocking=True)
        f1, k1 = frames.to("cuda:1", non_blocking=True), keep.to("cuda:1", non_blocking=True)
        with torch.cuda.device(0):  # cuda:0 current again; cuda:1's stream is still `side`
            got = ak.sinkhorn_aggregate(x1, y1, keep=5)
            clip = ak.clip_aggregate(f1, keep=k1)
            cost = ak.cosine_cost(x1, y1)
            assert torch.cuda.current_device() == 0
    torch.cuda.synchronize("cuda:1")
    assert got.tokens.device == torch.device("cuda:1")
    torch.testing.assert_close(got.tokens.cpu(), want.tokens, **cuda_tol(torch.float32))
    torch.testing.assert_close(clip.anchors.cpu(), want_clip.anchors, **cuda_tol(torch.float32))
    torch.testing.assert_close(cost.cpu(), ak.cosine_cost(x, y, backend="cpp"),
                               **cuda_tol(torch.float32))


def test_a_failing_kernel_inside_a_graph_capture_raises(monkeypatch):
    """No torch fallback during a capture (it may synchronise): a clear error instead."""
    from aot_kernels.gpu import sinkhorn_kernels as K
    from test_gpu_hardening import OUT_OF_RESOURCES, Failing

    monkeypatch.setenv("AOT_KERNELS_STRICT", "0")
    x, y = torch.randn(2, 16, 32, device="cuda"), torch.randn(2, 24, 32, device="cuda")
    ak.sinkhorn_aggregate(x, y, check_values=False)  # compiled outside the capture
    monkeypatch.setattr(K, "_fold", Failing(K._fold, OUT_OF_RESOURCES))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capture"):
        with torch.cuda.graph(graph):  # no value checks: they would read the device
            ak.sinkhorn_aggregate(x, y, check_values=False)
