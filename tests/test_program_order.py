"""Program order as a standing test: every op on the Triton path gives bit-identical outputs and
iteration counts whether the interpreter runs each grid's programs in natural, reversed or
shuffled order.

On a GPU the programs of a launch run in any order, concurrently. The kernels make results
independent of that by construction: no program reads what another program of the same launch
writes, and a sum across programs (the streaming row error, the distance) is written as
per-tile shares that the next kernel or one torch reduction adds in a fixed order; fp32
atomics would add them in arrival order, which changes the last bits and, through the error,
the streaming path's stop. Shapes here span at least four tiles of each such sum, so an
order-dependent sum shows up as a bit difference. The interpreter runs one program at a time:
it reorders programs but cannot race them, so a data race inside one ordering is beyond it.
"""
import contextlib

import numpy as np
import pytest
import torch

from aot_kernels import gpu

pytestmark = pytest.mark.skipif(not (gpu.HAS_TRITON and gpu.interpreting()),
                                reason="needs triton's interpreter (TRITON_INTERPRET=1)")

if gpu.HAS_TRITON:
    import triton
    import triton.language as tl
    from triton.runtime import interpreter

    from aot_kernels.gpu import cost_kernels as CK
    from aot_kernels.gpu import sinkhorn_kernels as K

ORDERS = ("reversed", "shuffled")


@contextlib.contextmanager
def program_order(order: str, seed: int = 0):
    """The interpreter's grid loop visits programs in `order` ("natural", "reversed",
    "shuffled"): a test double for GridExecutor's loop, which sets the grid's size and then each
    program's index (x, y, z) in lexicographic order; the k-th program to run gets the k-th
    index of the permutation instead."""
    builder = interpreter.interpreter_builder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    rng = np.random.default_rng(seed)
    state = {}

    def grid_dim(nx, ny, nz):
        set_dim(nx, ny, nz)
        total = nx * ny * nz
        perm = np.arange(total)
        if order == "reversed":
            perm = perm[::-1]
        elif order == "shuffled":
            perm = rng.permutation(total)
        state["dims"], state["perm"] = (ny, nz), perm

    def grid_idx(x, y, z):
        ny, nz = state["dims"]
        k = int(state["perm"][(x * ny + y) * nz + z])
        set_idx(k // (ny * nz), (k // nz) % ny, k % nz)

    builder.set_grid_dim, builder.set_grid_idx = grid_dim, grid_idx
    try:
        yield
    finally:
        del builder.set_grid_dim, builder.set_grid_idx  # the class's methods again


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "__dataclass_fields__"):
        out = [getattr(out, f) for f in out.__dataclass_fields__]
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


def assert_order_independent(op):
    """op() under natural, reversed and shuffled program order: bit-identical tensors. Returns
    the natural order's tensors."""
    with program_order("natural"):
        want = _flat(op())
    assert want
    for order in ORDERS:
        with program_order(order, seed=len(order)):
            got = _flat(op())
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and g.shape == w.shape, (order, i)
            diff = (g.double() - w.double()).abs().max()
            assert torch.equal(g, w), f"{order} order changed output {i}: max diff {diff}"
    return want


if gpu.HAS_TRITON:
    @triton.jit
    def _ticket(COUNTER, ORDER):
        """ORDER[program] = how many programs ran before it."""
        pid = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) \
            + tl.program_id(2)
        tl.store(ORDER + pid, tl.atomic_add(COUNTER, 1))


@pytest.mark.parametrize("order", ("natural",) + ORDERS)
def test_the_double_reorders_the_interpreters_programs(order):
    """The double still drives the interpreter's loop (a Triton upgrade that changed the loop
    would otherwise make every test below vacuous)."""
    counter = torch.zeros(1, dtype=torch.int32)
    seen = torch.full((24,), -1, dtype=torch.int32)
    with program_order(order, seed=3):
        _ticket[(2, 3, 4)](counter, seen)
    assert sorted(seen.tolist()) == list(range(24))  # each program ran once
    natural = list(range(24))
    if order == "natural":
        assert seen.tolist() == natural
    elif order == "reversed":
        assert seen.tolist() == natural[::-1]
    else:
        assert seen.tolist() != natural and seen.tolist() != natural[::-1]


def _data(b, m, n, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, m, d, generator=g)
    y = x[:, torch.randint(0, m, (n,), generator=g)] + 0.7 * torch.randn(b, n, d, generator=g)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_cosine_cost(dtype):
    x, y = _data(2, 70, 130, 24, dtype)  # 2 x 2 x 3 tiles; D 24: fp16 takes the unaligned variant
    assert_order_independent(lambda: CK.cosine_cost(x, y))
    assert_order_independent(lambda: CK.cost_workspace(x, y))


@pytest.mark.parametrize("stop", ("marginal", "scaling"))
@pytest.mark.parametrize("path,shape", [("resident", (3, 20, 40)), ("sweep", (3, 20, 40)),
                                        ("stream", (3, 130, 150))], ids=("resident", "sweep", "stream"))
def test_sinkhorn_every_path(path, shape, stop):
    """Stream: 5 row tiles of error shares (marginal stop) and a tolerance met before max_iter,
    so a changed sum would show in the error and could move the stop."""
    b, m, n = shape
    x, y = _data(b, m, n, 8, seed=1)
    cost = CK.cosine_cost(x, y)
    w = torch.rand(b, n, generator=torch.Generator().manual_seed(2)) + 0.1
    out = assert_order_independent(
        lambda: K.sinkhorn(cost, None, w, 0.2, 40, 1e-4, stop=stop, path=path))
    assert (out[2] < 40).all()  # the tolerance stopped every problem


def test_streaming_row_error_is_summed_in_one_order():
    """Early iterates (tol 0, 3 iterations) of 10 row tiles with uneven anchor weights: shares
    with all 24 bits in use, whose fp32 sum depends on the order they are added in (atomics in
    program order gave other last bits here). At convergence the shares are short multiples of
    an ulp of a and add exactly in any order, which is why the tests above cannot tell."""
    x, y = _data(4, 300, 64, 8, seed=1)
    cost = CK.cosine_cost(x, y)
    aw = torch.rand(4, 300, generator=torch.Generator().manual_seed(3)) + 0.1
    assert_order_independent(lambda: K.sinkhorn(cost, aw, None, 0.1, 3, 0.0, path="stream"))


def test_distance_is_summed_in_one_order():
    """10 column tiles of distance shares per problem (atomics gave other last bits here)."""
    x, y = _data(4, 8, 600, 12, seed=4)
    assert_order_independent(lambda: K.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 10, 0.0))


def test_sinkhorn_aggregate_intra_streaming():
    """N 200: 4 column tiles of distance shares; M 100: 4 row tiles of error shares."""
    x, y = _data(2, 100, 200, 12, seed=4)
    out = assert_order_independent(lambda: K.sinkhorn_aggregate(
        x, y, None, None, 0.2, 1.0, 15, 1e-4, path="stream"))
    assert (out[5] < 15).all()


@pytest.mark.parametrize("mode", [dict(keep=5), dict(tau=0.4), dict(keep_quantile=0.3)],
                         ids=("keep", "tau", "quantile"))
def test_sinkhorn_aggregate_inter_modes(mode):
    x, y = _data(2, 20, 40, 12, seed=4)
    assert_order_independent(lambda: K.sinkhorn_aggregate(
        x, y, None, None, 0.1, 1.0, 30, 1e-5, mode.get("tau"), mode.get("keep"),
        keep_quantile=mode.get("keep_quantile")))


def test_sinkhorn_aggregate_spec8_options():
    """Spatial kernel (2 x 2 x 3 tiles), shifted cost, the scaling stop on the transposed
    workspace, the nearest-anchor blend."""
    x, y = _data(2, 70, 130, 12, torch.bfloat16, seed=5)
    g = torch.Generator().manual_seed(6)
    pa, ps = torch.rand(2, 70, 2, generator=g), torch.rand(2, 130, 2, generator=g)
    assert_order_independent(lambda: K.sinkhorn_aggregate(
        x, y, torch.ones(2, 70), None, 0.1, 1.0, 8, 1e-3, None, 6, pa, ps, 0.5, "scaling", 0.2,
        None, True, path="sweep"))


@pytest.mark.parametrize("mode,m,path", [(dict(keep=True), 20, "auto"), (dict(tau=0.3), 70, "stream")],
                         ids=("keep", "tau-stream"))
def test_clip_aggregate(mode, m, path):
    g = torch.Generator().manual_seed(7)
    frames = torch.randn(3, 1, m, 12, generator=g) + 0.5 * torch.randn(3, 3, m, 12, generator=g)
    keep = torch.randint(0, 10, (3, 3), generator=g) if mode.get("keep") else None
    sizes = 1 + torch.rand(3, 3, m, generator=g)
    assert_order_independent(lambda: K.clip_aggregate(
        frames, torch.tensor([3, 2, 3]), sizes, None, 0.2, 1.0, 8, 1e-5, mode.get("tau"), keep,
        path=path))
