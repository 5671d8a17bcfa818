"""What a real GPU would expose in the Triton path, proven without one (issue 21):

- every launch runs under its inputs' device (a test double records the device active at each
  launch, on fake cuda:1 tensors), and inputs on two devices are refused by name;
- float64 is computed in float64 (agrees with the float64 reference to 1e-12 even with TF32
  allowed), and TF32 reaches only float32 and only when allowed;
- a kernel failure is remembered (no relaunch, no new warning), an asynchronous CUDA error is
  never served by the fallback, and nothing falls back inside a CUDA-graph capture.

What these cannot see: that torch.cuda.device really selects Triton's stream on a GPU (the
two-GPU test in tests/test_cuda.py does), and real driver error texts (the doubles raise the
texts torch and Triton print).
"""
import contextlib
import warnings

import numpy as np
import pytest
import torch

import aot_kernels as ak
from aot_kernels import gpu
from reference import ot_reference as R
from samples import Sample, inputs

pytestmark = pytest.mark.skipif(not gpu.HAS_TRITON, reason=f"triton unavailable: {gpu.TRITON_ERROR}")

if gpu.HAS_TRITON:
    from aot_kernels.gpu import common
    from aot_kernels.gpu import sinkhorn_kernels as K

DEVICE = torch.device("cuda" if gpu.HAS_TRITON and not gpu.interpreting()
                      and torch.cuda.is_available() else "cpu")


# ---- 1. device and stream ---------------------------------------------------------------------

class DeviceRecorder:
    """Stands in for torch.cuda.device: a stack of the device indices entered."""
    active = []

    def __init__(self, device):
        self.index = torch.device(device).index

    def __enter__(self):
        DeviceRecorder.active.append(self.index)

    def __exit__(self, *exc):
        DeviceRecorder.active.pop()


@pytest.fixture
def recorded_launches(monkeypatch):
    """[(kernel, device index active at the launch)]; kernels are recorded, not run."""
    launches = []
    DeviceRecorder.active = []
    monkeypatch.setattr(torch.cuda, "device", DeviceRecorder)
    monkeypatch.setattr(common, "compile_only", lambda kernel, grid, args, kwargs: launches.append(
        (kernel.fn.__name__, DeviceRecorder.active[-1] if DeviceRecorder.active else None)))
    return launches


def fake_op_calls(device):
    """Each op's CUDA kernel (the launchers as registered) on fake tensors on `device`."""
    x, y = torch.randn(2, 5, 8, device=device), torch.randn(2, 7, 8, device=device)
    frames = torch.randn(2, 3, 5, 8, device=device)
    lengths = torch.full((2,), 3, device=device)
    sizes = torch.ones(2, 3, 5, device=device)
    keep = torch.ones(2, 3, dtype=torch.long, device=device)
    return {
        "cosine_cost": lambda: gpu.cosine_cost(x, y),
        "sinkhorn": lambda: gpu.sinkhorn(torch.rand(2, 5, 7, device=device), None, None, 0.1,
                                         10, 0.0),
        "sinkhorn_aggregate": lambda: gpu.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 10, 0.0,
                                                             None, 3),
        "clip_aggregate": lambda: gpu.clip_aggregate(frames, lengths, sizes, None, 0.1, 1.0, 10,
                                                     0.0, None, keep),
    }


@pytest.mark.parametrize("op", ["cosine_cost", "sinkhorn", "sinkhorn_aggregate",
                                "clip_aggregate"])
def test_every_launch_runs_under_the_inputs_device(op, recorded_launches):
    from test_sync_free import fake_cuda

    with fake_cuda():  # cuda:1 tensors on a CPU-only torch; cuda:0 stays "current"
        fake_op_calls("cuda:1")[op]()
    assert recorded_launches, "no kernel was launched"
    assert all(index == 1 for _, index in recorded_launches), recorded_launches
    assert DeviceRecorder.active == []  # the guard is left on return


def test_cpu_inputs_set_no_cuda_device(recorded_launches):
    gpu.sinkhorn_aggregate(torch.randn(1, 3, 4), torch.randn(1, 5, 4), None, None, 0.1, 1.0, 5,
                           0.0)
    assert recorded_launches and all(index is None for _, index in recorded_launches)


@pytest.mark.parametrize("op, call", [
    ("sinkhorn_aggregate", lambda a, b: gpu.sinkhorn_aggregate(a, b, None, None, 0.1, 1.0, 5, 0.0)),
    ("cosine_cost", lambda a, b: gpu.cosine_cost(a, b)),
])
def test_inputs_on_two_devices_are_refused_by_name(op, call):
    from test_sync_free import fake_cuda

    with fake_cuda():
        a, b = torch.randn(1, 3, 4, device="cuda:0"), torch.randn(1, 5, 4, device="cuda:1")
        first, second = ("anchors", "sources") if op == "sinkhorn_aggregate" else ("x", "y")
        with pytest.raises(ValueError, match=f"aot::{op}: {first} is on cuda:0 but {second} "
                                             "is on cuda:1"):
            call(a, b)


def test_a_weight_on_another_device_is_refused_by_name():
    from test_sync_free import fake_cuda

    with fake_cuda():
        x, y = torch.randn(1, 3, 4, device="cuda:1"), torch.randn(1, 5, 4, device="cuda:1")
        with pytest.raises(ValueError, match="anchors is on cuda:1 but anchor_weight is on cpu"):
            gpu.sinkhorn_aggregate(x, y, torch.ones(1, 3), None, 0.1, 1.0, 5, 0.0)


# ---- 2. float64 -------------------------------------------------------------------------------

@contextlib.contextmanager
def tf32(allowed: bool):
    # a property of torch.backends.cuda.matmul, not an attribute monkeypatch can restore
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture
def tf32_allowed():
    with tf32(True):
        yield


def f64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_float64_cost_is_float64(tf32_allowed):
    x, y = f64(2, 9, 40), f64(2, 13, 40, seed=1)
    got = ak.cosine_cost(x.to(DEVICE), y.to(DEVICE), backend="triton").cpu()
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), R.batched_cosine_cost(x.numpy(), y.numpy()),
                               rtol=0, atol=1e-12)


def test_float64_sinkhorn_and_aggregate_are_float64(tf32_allowed):
    x, y = f64(2, 6, 12), f64(2, 11, 12, seed=1)
    cost = R.batched_cosine_cost(x.numpy(), y.numpy())
    got = ak.sinkhorn(torch.from_numpy(cost).to(DEVICE), eps=0.05, max_iter=300, backend="triton")
    want = R.batched_sinkhorn(cost, eps=0.05, max_iter=300)
    for b in range(2):
        np.testing.assert_allclose(got.f[b].cpu().numpy(), want[b].f, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.g[b].cpu().numpy(), want[b].g, rtol=0, atol=1e-12)
    out = ak.sinkhorn_aggregate(x.to(DEVICE), y.to(DEVICE), eps=0.05, max_iter=300, keep=3,
                                backend="triton")
    ref = R.batched_sinkhorn_aggregate(x.numpy(), y.numpy(), eps=0.05, max_iter=300, keep=3)
    for b in range(2):
        np.testing.assert_allclose(out.tokens[b].cpu().numpy(), ref[b].tokens, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(out.kept[b].cpu().numpy(), ref[b].kept)


def test_float64_clip_aggregate_is_float64(tf32_allowed):
    frames = f64(2, 4, 5, 8)
    keep = torch.tensor([[0, 1, 2, 1], [0, 2, 0, 1]])
    out = ak.clip_aggregate(frames.to(DEVICE), keep=keep.to(DEVICE), eps=0.05, max_iter=300,
                            backend="triton")
    for c in range(2):
        ref = R.clip_aggregate(frames[c].numpy(), eps=0.05, max_iter=300, keep=keep[c].tolist())
        np.testing.assert_allclose(out.anchors[c].cpu().numpy(), ref.anchors, rtol=0, atol=1e-12)


def test_tf32_only_for_float32_and_only_when_allowed(monkeypatch):
    monkeypatch.setattr(common, "interpreting", lambda: False)  # the flags of a compiled kernel
    for allowed in (False, True):
        with tf32(allowed):
            assert common.dot_flags(torch.float32) == (False, allowed)
            assert common.dot_flags(torch.float16) == (True, False)
            assert common.dot_flags(torch.bfloat16) == (True, False)


# ---- 4. a fallback that helps -----------------------------------------------------------------

class Failing:
    """Stands in for a Triton kernel whose launch raises `error`; counts the launches."""

    def __init__(self, kernel, error):
        self.fn, self.error, self.launches = kernel.fn, error, 0

    def __getitem__(self, grid):
        def fail(*args, **kwargs):
            self.launches += 1
            raise self.error
        return fail


OUT_OF_RESOURCES = RuntimeError("out of resource: shared memory, Required: 300000, "
                                "Hardware limit: 232448")
ILLEGAL_ADDRESS = RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")


@pytest.fixture
def fallback_allowed(monkeypatch):
    monkeypatch.setenv("AOT_KERNELS_STRICT", "0")
    monkeypatch.setattr(gpu, "_warned", set())


def call(x, y, **kw):
    return ak.sinkhorn_aggregate(x.to(DEVICE), y.to(DEVICE), backend="triton", **kw)


def test_a_failed_configuration_is_remembered(monkeypatch, fallback_allowed):
    broken = Failing(K._solve_kernel, OUT_OF_RESOURCES)
    monkeypatch.setattr(K, "_solve_kernel", broken)
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    with pytest.warns(RuntimeWarning, match="_solve_kernel failed"):
        first = call(x, y)
    want = ak.sinkhorn_aggregate(x, y, backend="torch")
    torch.testing.assert_close(first.tokens.cpu(), want.tokens, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no new warning
        call(x, y)  # the same call: straight to the fallback
        x2, y2, _, _ = inputs(Sample(3, 6, 9, 12), torch.float32)
        again = call(x2, y2)  # another shape, the same kernel configuration: not relaunched
    assert broken.launches == 1
    torch.testing.assert_close(again.tokens.cpu(), ak.sinkhorn_aggregate(x2, y2, backend="torch")
                               .tokens, rtol=0, atol=0)


@pytest.mark.parametrize("strict", ["0", "1"])
def test_an_asynchronous_cuda_error_is_never_a_fallback(monkeypatch, fallback_allowed, strict):
    monkeypatch.setenv("AOT_KERNELS_STRICT", strict)
    broken = Failing(K._fold, ILLEGAL_ADDRESS)
    monkeypatch.setattr(K, "_fold", broken)
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    for _ in range(2):  # not remembered either: every call says so
        with pytest.raises(gpu.CudaContextError, match="CUDA context is unusable"):
            call(x, y)
    assert broken.launches == 2 and not common._failed and not gpu._failed_calls


def test_a_sticky_error_from_torch_inside_the_launcher_is_reported_as_such(monkeypatch,
                                                                         fallback_allowed):
    def poisoned(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel "
                           "errors might be asynchronously reported at some other API call")

    monkeypatch.setattr(K, "_statistics", poisoned)
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    with pytest.raises(gpu.CudaContextError, match="aot::sinkhorn_aggregate.*illegal memory"):
        call(x, y)


def test_no_fallback_inside_a_cuda_graph_capture(monkeypatch, fallback_allowed):
    broken = Failing(K._fold, OUT_OF_RESOURCES)
    monkeypatch.setattr(K, "_fold", broken)
    ran_torch = []
    real = gpu.composite.sinkhorn_aggregate
    monkeypatch.setattr(gpu.composite, "sinkhorn_aggregate",
                        lambda *a: ran_torch.append(1) or real(*a))
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    monkeypatch.setattr(gpu, "capturing", lambda: True)
    with pytest.raises(RuntimeError, match="inside a CUDA-graph capture.*_fold failed"):
        call(x, y)
    assert ran_torch == []
    monkeypatch.setattr(gpu, "capturing", lambda: False)
    with pytest.warns(RuntimeWarning):
        call(x, y)  # outside: the fallback serves it, and the failure is remembered
    assert ran_torch == [1]
    monkeypatch.setattr(gpu, "capturing", lambda: True)
    with pytest.raises(RuntimeError, match="inside a CUDA-graph capture"):
        call(x, y)  # a remembered failure does not fall back inside a capture either
    assert ran_torch == [1]


def test_the_memory_is_per_configuration(monkeypatch, fallback_allowed):
    """A failure of one dtype's configuration leaves the others on the kernels."""
    broken = Failing(K._fold, OUT_OF_RESOURCES)
    monkeypatch.setattr(K, "_fold", broken)
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    with pytest.warns(RuntimeWarning):
        call(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per (kernel, cause), as before
        got = call(x.bfloat16(), y.bfloat16())  # another configuration: launched, fails
    assert broken.launches == 2
    want = ak.sinkhorn_aggregate(x.bfloat16(), y.bfloat16(), backend="torch")
    torch.testing.assert_close(got.tokens.cpu(), want.tokens, rtol=0, atol=0)


def test_device_guard_is_a_no_op_off_cuda():
    with common.device_guard(torch.device("cpu")):
        pass
    assert isinstance(common.device_guard(torch.device("cpu")), contextlib.nullcontext)
