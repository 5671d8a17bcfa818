"""Every input a user can get wrong: a ValueError/TypeError that names the argument."""
import pytest
import torch

import aot_kernels as ak

BACKENDS = ("cpp", "torch")


def good(B=2, M=3, N=4, D=5):
    return torch.randn(B, M, D), torch.randn(B, N, D)


def aggregate(backend, **over):
    x, y = good()
    kw = dict(anchors=x, sources=y)
    kw.update(over)
    return ak.sinkhorn_aggregate(kw.pop("anchors"), kw.pop("sources"), backend=backend, **kw)


def nan_at(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


CASES = {
    "anchors rank": (ValueError, "anchors", dict(anchors=torch.randn(3, 5))),
    "sources rank": (ValueError, "sources", dict(sources=torch.randn(2, 4, 5, 1))),
    "batch mismatch": (ValueError, "batch", dict(sources=torch.randn(3, 4, 5))),
    "feature mismatch": (ValueError, "feature", dict(sources=torch.randn(2, 4, 6))),
    "integer anchors": (TypeError, "anchors", dict(anchors=torch.ones(2, 3, 5, dtype=torch.int64))),
    "complex sources": (TypeError, "sources", dict(sources=torch.randn(2, 4, 5, dtype=torch.complex64))),
    "not a tensor": (TypeError, "anchors", dict(anchors=[[1.0]])),
    "dtype mismatch": (TypeError, "dtype", dict(sources=torch.randn(2, 4, 5, dtype=torch.float64))),
    "nan anchors": (ValueError, "anchors", dict(anchors=nan_at(torch.randn(2, 3, 5)))),
    "inf sources": (ValueError, "sources", dict(sources=torch.randn(2, 4, 5).index_fill(1, torch.tensor([0]), float("inf")))),
    "nan weight": (ValueError, "anchor_weight", dict(anchor_weight=nan_at(torch.ones(2, 3)))),
    "negative weight": (ValueError, "source_weight", dict(source_weight=torch.tensor([[1.0, -1, 1, 1], [1, 1, 1, 1]]))),
    "all-zero weight": (ValueError, "anchor_weight", dict(anchor_weight=torch.tensor([[0.0, 0, 0], [1, 1, 1]]))),
    "weight shape": (ValueError, "source_weight", dict(source_weight=torch.ones(2, 5))),
    "eps zero": (ValueError, "eps", dict(eps=0.0)),
    "eps negative": (ValueError, "eps", dict(eps=-0.1)),
    "max_iter zero": (ValueError, "max_iter", dict(max_iter=0)),
    "max_iter float": (TypeError, "max_iter", dict(max_iter=2.5)),
    "tol negative": (ValueError, "tol", dict(tol=-1e-3)),
    "lam negative": (ValueError, "lam", dict(lam=-1.0)),
    "M zero": (ValueError, "M == 0", dict(anchors=torch.randn(2, 0, 5))),
    "N zero": (ValueError, "N == 0", dict(sources=torch.randn(2, 0, 5))),
    "tau and keep": (ValueError, "tau.*keep", dict(tau=0.5, keep=1)),
    "keep above N": (ValueError, "keep", dict(keep=5)),
    "keep negative": (ValueError, "keep", dict(keep=-1)),
    "keep above padded N": (ValueError, "keep", dict(keep=4, source_weight=torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]]))),
    "tau out of range": (ValueError, "tau", dict(tau=1.5)),
    "unknown backend": (ValueError, "backend", dict(backend_override="cuda-magic")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_aggregate_input(case, backend):
    exc, match, over = CASES[case]
    over = dict(over)
    if "backend_override" in over:
        backend = over.pop("backend_override")
    with pytest.raises(exc, match=match):
        aggregate(backend, **over)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_sinkhorn_input(backend):
    with pytest.raises(ValueError, match="cost"):
        ak.sinkhorn(torch.rand(3, 4), backend=backend)
    with pytest.raises(ValueError, match="cost"):
        ak.sinkhorn(torch.rand(1, 0, 4), backend=backend)
    with pytest.raises(ValueError, match="cost"):
        ak.sinkhorn(nan_at(torch.rand(1, 3, 4)), backend=backend)
    with pytest.raises(TypeError, match="cost"):
        ak.sinkhorn(torch.ones(1, 3, 4, dtype=torch.int32), backend=backend)
    with pytest.raises(ValueError, match="eps"):
        ak.sinkhorn(torch.rand(1, 3, 4), eps=float("inf"), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_cosine_cost_input(backend):
    with pytest.raises(ValueError, match="feature"):
        ak.cosine_cost(torch.randn(1, 2, 3), torch.randn(1, 2, 4), backend=backend)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_devices_differ():
    with pytest.raises(ValueError, match="device"):
        ak.sinkhorn_aggregate(torch.randn(1, 2, 3), torch.randn(1, 2, 3, device="cuda"))


def test_devices_differ_meta():
    """Same check without a GPU: a meta tensor is another device."""
    with pytest.raises(ValueError, match="device"):
        ak.sinkhorn_aggregate(torch.randn(1, 2, 3), torch.randn(1, 2, 3, device="meta"))


def test_cpp_backend_rejects_other_devices():
    with pytest.raises(ValueError, match="backend='cpp'"):
        ak.cosine_cost(torch.randn(1, 2, 3, device="meta"), torch.randn(1, 2, 3, device="meta"),
                       backend="cpp")


def test_direct_op_call_raises_value_error():
    """The C++ kernels check too: torch.ops.aot.* called directly does not crash."""
    x, y = good()
    with pytest.raises(ValueError, match="eps"):
        torch.ops.aot.sinkhorn_aggregate(x, y, None, None, -1.0, 1.0, 10, 0.0, None, None)
    with pytest.raises(ValueError, match="feature"):
        torch.ops.aot.cosine_cost(x, torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match="source_weight"):
        torch.ops.aot.sinkhorn(torch.rand(2, 3, 4), None, -torch.ones(2, 4), 0.1, 10, 0.0)


def test_clip_aggregate_bad_inputs_are_named():
    frames = torch.randn(2, 3, 4, 5)
    cases = [
        (dict(frames=frames[0]), ValueError, "frames"),
        (dict(lengths=[1, 4]), ValueError, "lengths"),
        (dict(lengths=[1.0, 2.0]), TypeError, "lengths"),
        (dict(lengths=torch.tensor([0, 2])), ValueError, "lengths must be in"),
        (dict(lengths=torch.tensor([1.0, 2.0])), TypeError, "lengths"),
        (dict(sizes=torch.full((2, 3, 4), float("-inf"))), ValueError, "sizes contains NaN or inf"),
        (dict(sizes=torch.ones(2, 3, 5)), ValueError, "sizes"),
        (dict(sizes=-torch.ones(2, 3, 4)), ValueError, "sizes has negative entries"),
        (dict(keep=[[0, 1, 1]]), ValueError, "keep"),
        (dict(keep=[[0, 1, 5], [0, 0, 0]]), ValueError, "keep must be in"),
        (dict(keep=torch.tensor([[0, 1, 5], [0, 0, 0]])), ValueError, "keep must be in"),
        (dict(keep=torch.ones(2, 3)), TypeError, "keep"),
        (dict(keep=[[0, 1, 1], [0, 0, 0]], tau=0.5), ValueError, "not both"),
        (dict(tau=2.0), ValueError, "tau"),
        (dict(anchor_weight=-torch.ones(2, 4)), ValueError, "negative"),
        (dict(eps=0.0), ValueError, "eps"),
    ]
    for kw, exc, match in cases:
        kw = dict(kw)
        x = kw.pop("frames", frames)
        with pytest.raises(exc, match=match):
            ak.clip_aggregate(x, **kw)
    nan = frames.clone()
    nan[1, 2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frames contains NaN"):
        ak.clip_aggregate(nan)


def test_the_op_checks_its_arguments_without_the_python_layer():
    frames, lengths, sizes = torch.randn(2, 3, 4, 5), torch.tensor([3, 2]), torch.ones(2, 3, 4)
    op = torch.ops.aot.clip_aggregate
    with pytest.raises(ValueError, match="lengths must be in"):
        op(frames, torch.tensor([3, 4]), sizes)
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        op(frames, lengths.float(), sizes)
    with pytest.raises(ValueError, match="keep counts must be in"):
        op(frames, lengths, sizes, keep=torch.full((2, 3), 5))
    with pytest.raises(ValueError, match="sizes must have shape"):
        op(frames, lengths, sizes[:, :2])
    with pytest.raises(ValueError, match="not both"):
        op(frames, lengths, sizes, tau=0.5, keep=torch.zeros(2, 3, dtype=torch.long))


def test_check_values_false_reads_no_values():
    """check_values=False skips the data checks (one host sync) but never the shape checks."""
    x = torch.randn(2, 4, 6)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="anchors contains NaN"):
        ak.sinkhorn_aggregate(x, x.clone().nan_to_num())
    out = ak.sinkhorn_aggregate(x, x.clone().nan_to_num(), check_values=False, backend="torch")
    assert out.tokens[0].isnan().any()  # garbage in, garbage out: the caller opted out
    with pytest.raises(ValueError, match="feature sizes differ"):
        ak.sinkhorn_aggregate(x, torch.randn(2, 4, 5), check_values=False)
    with pytest.raises(ValueError, match="cost contains NaN"):
        ak.sinkhorn(x)
    ak.sinkhorn(x, check_values=False, backend="torch")
    with pytest.raises(ValueError, match="source_weight has negative"):
        ak.sinkhorn(torch.rand(2, 4, 6), source_weight=-torch.ones(2, 6))
    frames = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="keep must be in"):
        ak.clip_aggregate(frames, keep=torch.full((2, 3), 9))
    with pytest.raises(ValueError, match="keep must have shape"):
        ak.clip_aggregate(frames, keep=torch.zeros(3, 3, dtype=torch.long), check_values=False)


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the ways Python reads a tensor's values (each one a host sync on CUDA)."""
    READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__,
             torch.Tensor.__float__, torch.Tensor.__index__}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


def test_value_checks_are_one_host_read_per_call():
    x, y = torch.randn(3, 4, 6), torch.randn(3, 5, 6)
    w = torch.ones(3, 5)
    w[:, -1] = 0
    frames = torch.randn(2, 3, 4, 6)
    calls = {
        "sinkhorn_aggregate": lambda cv: ak.sinkhorn_aggregate(
            x, y, anchor_weight=torch.ones(3, 4), source_weight=w, keep=2, backend="torch",
            check_values=cv),
        "sinkhorn": lambda cv: ak.sinkhorn(torch.rand(3, 4, 5), source_weight=w, backend="torch",
                                           check_values=cv),
        "clip_aggregate": lambda cv: ak.clip_aggregate(
            frames, torch.tensor([3, 2]), keep=torch.ones(2, 3, dtype=torch.long),
            anchor_weight=torch.ones(2, 4), backend="torch", check_values=cv),
    }
    for name, call in calls.items():
        for check_values, reads in ((True, 1), (False, 0)):
            with _HostReads() as mode:
                call(check_values)
            assert mode.count == reads, (name, check_values, mode.count)
    with pytest.raises(ValueError, match="source_weight has fewer than keep=5 non-padded"):
        ak.sinkhorn_aggregate(x, y, source_weight=w, keep=5)
