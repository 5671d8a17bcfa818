"""The reducer's quota mode never waits for the device (issue 11): the whole reduction runs on
fake CUDA tensors, where any data-dependent op (nonzero, .item(), .tolist(), bool(tensor))
raises, and compiles with torch.compile(fullgraph=True)."""
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.overrides import TorchFunctionMode

from aot_kernels import AOTReducer, gpu, ops, reducers
from aot_kernels.reducers.video import token_budget


def _basic_getitem(x, index):
    """x[index] for ints, slices, None and ... , as select / slice / unsqueeze; or for tensor
    indices mixed with full slices, as aten.index (a boolean mask there raises on fake tensors:
    its size depends on the data)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, torch.Tensor) for i in index):
        if not all(isinstance(i, torch.Tensor) or i == slice(None) for i in index):
            raise NotImplementedError(f"tensor indices with full slices only, got {index!r}")
        return torch.ops.aten.index.Tensor(
            x, [i if isinstance(i, torch.Tensor) else None for i in index])
    if not all(i is None or i is Ellipsis or isinstance(i, slice)
               or (isinstance(i, int) and not isinstance(i, bool)) for i in index):
        raise NotImplementedError(f"only basic indexing is routed, got {index!r}")
    if any(i is Ellipsis for i in index):
        k = next(j for j, i in enumerate(index) if i is Ellipsis)
        named = sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:k] + (slice(None),) * (x.dim() - named) + index[k + 1:]
    dim = 0
    for i in index:
        if i is None:
            x, dim = x.unsqueeze(dim), dim + 1
        elif isinstance(i, slice):
            x, dim = torch.ops.aten.slice.Tensor(x, dim, i.start, i.stop, i.step or 1), dim + 1
        else:
            x = x.select(dim, i)
    return x


class _NoDeviceGuard(TorchFunctionMode):
    """On a CPU-only torch, a few hand-written Tensor methods fail on (fake) CUDA tensors
    before they dispatch: they set a CUDA device guard. Route the ones the reducer uses to
    equivalent ops whose fake kernels need no GPU: basic indexing (x[...] with ints, slices,
    None; tensor indices with full slices), assignment to a basic index, ~x and .contiguous()
    (the Triton launchers)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__:
            return _basic_getitem(*args)
        if func is torch.Tensor.__invert__:
            return torch.bitwise_not(*args)
        if func is torch.Tensor.__setitem__ and not isinstance(args[1], torch.Tensor):
            x, index, value = args
            torch.ops.aten.copy_.default(_basic_getitem(x, index), torch.as_tensor(value))
            return None
        if func is torch.Tensor.contiguous and not kwargs and len(args) == 1:
            x = args[0]
            return x if x.is_contiguous() else torch.ops.aten.clone.default(
                x, memory_format=torch.contiguous_format)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fake_cuda():
    """Fake tensors: shapes, dtypes and devices without data; reading a value raises."""
    with FakeTensorMode(), _NoDeviceGuard():
        yield


SHAPES = [  # (frames, grid, retention, reducer kwargs)
    (8, (14, 14), 0.10, dict()),
    (32, (14, 14), 0.10, dict()),
    (12, (13, 13), 0.15, dict()),
    (11, (4, 4), 0.30, dict(clip_len=4)),  # the last clip is shorter
    (6, (4, 4), 0.25, dict(clip_len=2, marginals="unit")),
]
D = 16
BACKENDS = ["torch", "auto"]  # "auto" on CUDA: torch.ops.aot.* (their fake kernels here)


def fake_video(frames, n, batch=None, device="cuda"):
    lead = () if batch is None else (batch,)
    return (torch.randn(*lead, frames, n, D, device=device),
            torch.rand(*lead, frames, n, device=device),
            torch.rand(*lead, frames, n, device=device))


def check_shapes(out, frames, n, retention, features_dtype=torch.float32, lead=()):
    k = token_budget(frames, n, retention)
    assert out.tokens.shape == (*lead, k, D) and out.tokens.dtype == features_dtype
    for name, dtype in (("frame_ids", torch.int64), ("positions", torch.int64),
                        ("sizes", torch.float32), ("dynamic", torch.bool)):
        t = getattr(out, name)
        assert t.shape == (*lead, k) and t.dtype == dtype, name
        assert t.device.type == "cuda", name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frames,grid,retention,kw", SHAPES)
def test_quota_mode_runs_on_fake_cuda_tensors(frames, grid, retention, kw, backend):
    n = grid[0] * grid[1]
    reducer = AOTReducer(retention, grid=grid, max_iter=3, backend=backend, check_values=False, **kw)
    with fake_cuda():
        feats, scores, local = fake_video(frames, n)
        check_shapes(reducer(feats, scores), frames, n, retention)
        check_shapes(reducer(feats, scores, local), frames, n, retention)
        check_shapes(reducer(feats.half(), scores), frames, n, retention, torch.float16)
        feats, scores, local = fake_video(frames, n, batch=3)
        check_shapes(reducer(feats, scores, local), frames, n, retention, lead=(3,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_of_videos_runs_on_fake_cuda_tensors(backend):
    reducer = AOTReducer(0.1, grid=(14, 14), max_iter=3, backend=backend, check_values=False)
    frames = (8, 32, 12)  # 8 and 32 share M = 125 (one batched pass), 12 has M = 94
    with fake_cuda():
        videos = [fake_video(f, 196) for f in frames]
        outs = reducer([v[0] for v in videos], [v[1] for v in videos], [v[2] for v in videos])
        for out, f in zip(outs, frames):
            check_shapes(out, f, 196, 0.1)


def test_value_checks_and_threshold_mode_read_values():
    """The negative control: what does read values raises on fake tensors, so the tests above
    would catch a host synchronisation."""
    with fake_cuda():
        feats, scores, _ = fake_video(8, 16)
        with pytest.raises(DataDependentOutputException):  # check_values=True
            AOTReducer(0.25, max_iter=3, backend="torch")(feats, scores)
        with pytest.raises(DataDependentOutputException):
            AOTReducer(0.25, max_iter=3, tau=0.5, backend="torch", check_values=False)(feats, scores)


def test_check_values_flag():
    feats, scores = torch.randn(6, 16, 8), torch.rand(6, 16)
    bad = scores.clone()
    bad[2, 3] = float("nan")
    for name in reducers.NAMES:
        with pytest.raises(ValueError, match="NaN"):
            reducers.build(name, retention=0.3, max_iter=3)(feats, bad)
        reducers.build(name, retention=0.3, max_iter=3, check_values=False)(feats, scores)
    with pytest.raises(ValueError, match=r"features\[1\] contains NaN"):
        AOTReducer(0.3)([feats, feats.masked_fill(feats > 2, float("nan"))], [scores, scores])
    with pytest.raises(ValueError, match="local_scores contains NaN"):
        AOTReducer(0.3)(feats[None], scores[None], bad[None])
    with pytest.raises(ValueError, match="features"):  # shapes are always checked
        AOTReducer(0.3, check_values=False)(feats[0], scores)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_warmed_up_call_builds_no_tensor_from_host_data(backend, monkeypatch):
    """What a CUDA graph capture needs: after the first call of a shape, every index tensor
    comes from the cache (no torch.tensor / as_tensor of Python lists: host-to-device copies)."""
    feats, scores = torch.randn(2, 8, 16, 8), torch.rand(2, 8, 16)
    reducer = AOTReducer(0.25, clip_len=3, max_iter=3, backend=backend, check_values=False)
    want = reducer(feats, scores)

    def copy(*args, **kwargs):
        raise AssertionError("a tensor built from host data in a warmed-up call")

    monkeypatch.setattr(torch, "tensor", copy)
    monkeypatch.setattr(torch, "as_tensor", copy)
    got = reducer(feats, scores)
    for name in ("tokens", "positions", "sizes", "frame_ids", "dynamic"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def test_cached_index_tensors_are_reused_and_not_handed_out():
    feats, scores = torch.randn(8, 16, 8, dtype=torch.float64), torch.rand(8, 16, dtype=torch.float64)
    reducer = AOTReducer(0.25, clip_len=3)
    first = reducer(feats, scores)
    cached = dict(reducer._cache._entries)
    first.frame_ids.zero_()  # the caller's own tensors
    first.dynamic.zero_()
    again = reducer(feats, scores)
    assert all(reducer._cache._entries[k] is v for k, v in cached.items())
    assert reducer._cache._entries.keys() == cached.keys()
    assert bool(again.dynamic.any()) and torch.equal(again.frame_ids, again.positions // 16)
    with torch.inference_mode():  # entries built in inference mode serve autograd later
        fresh = AOTReducer(0.25, clip_len=3, lam_inter=0.5)
        fresh(feats, scores)
    fresh(feats.requires_grad_(), scores).tokens.sum().backward()
    assert feats.grad is not None


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    not ops.HAS_EXTENSION, reason="needs the compiled extension"))])
def test_compiles_with_fullgraph(backend):
    torch._dynamo.reset()
    reducer = AOTReducer(0.25, clip_len=3, max_iter=4, backend=backend, check_values=False)
    feats, scores = torch.randn(7, 16, 8), torch.rand(7, 16)
    eager = reducer(feats, scores)

    def reduce(feats, scores):
        out = reducer(feats, scores)
        return out.tokens, out.positions, out.sizes, out.frame_ids, out.dynamic

    compiled = torch.compile(reduce, fullgraph=True, dynamic=False)
    for got, want in zip(compiled(feats, scores), (eager.tokens, eager.positions, eager.sizes,
                                                   eager.frame_ids, eager.dynamic)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not (torch.cuda.is_available() and gpu.HAS_TRITON and not gpu.interpreting()),
                    reason="needs a CUDA device and compiled Triton (TRITON_INTERPRET=0)")
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_warmed_up_reducer_replays_as_a_cuda_graph(backend):
    g = torch.Generator().manual_seed(0)
    feats, scores = torch.randn(16, 196, 128, generator=g), torch.rand(16, 196, generator=g)
    feats, scores = feats.cuda(), scores.cuda()
    reducer = AOTReducer(0.1, backend=backend, max_iter=20, check_values=False)
    side = torch.cuda.Stream()  # warm up (index tensors, kernel compilation) off the capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        reducer(feats, scores)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # raises on any host synchronisation
        out = reducer(feats, scores)
    feats.copy_(torch.randn(16, 196, 128, generator=g))
    scores.copy_(torch.rand(16, 196, generator=g))
    graph.replay()
    want = reducer(feats.clone(), scores.clone())
    assert torch.equal(out.positions, want.positions)
    torch.testing.assert_close(out.tokens, want.tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.sizes, want.sizes, rtol=0, atol=1e-5)
