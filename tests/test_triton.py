"""Triton kernels against the float64 reference and the C++ backend, on CPU through the Triton
interpreter (TRITON_INTERPRET=1 is set in conftest.py before triton is imported). Every solve path
runs: resident (one program, registers), sweep (one program, row chunks; chunks shrunk here so
that small problems span several) and stream (a grid per pass). Shapes are small: the interpreter
runs programs one by one in NumPy.

On a machine with a GPU, `TRITON_INTERPRET=0 pytest tests/test_triton.py` runs the same tests with
the kernels compiled for CUDA tensors (outputs are compared on the CPU)."""
import numpy as np
import pytest
import torch

import aot_kernels as ak
from aot_kernels import gpu
from reference import ot_reference as R
from samples import (ABS, ATOL, CLIP_SAMPLES, MULT, Sample, clip_inputs, clip_reference, inputs,
                     kwargs, max_err, reference, stack)
from test_spec8_ops import SAMPLES as SPEC8_SAMPLES
from test_spec8_ops import make as spec8_inputs
from test_spec8_ops import name as spec8_name
from test_spec8_ops import reference as spec8_reference

pytestmark = pytest.mark.skipif(not gpu.HAS_TRITON, reason=f"triton unavailable: {gpu.TRITON_ERROR}")

if gpu.HAS_TRITON:
    from aot_kernels.gpu import sinkhorn_kernels as K

DEVICE = torch.device("cuda" if gpu.HAS_TRITON and not gpu.interpreting()
                      and torch.cuda.is_available() else "cpu")


def on(*tensors):
    """Inputs on the kernels' device (CPU under the interpreter)."""
    return [None if t is None else t.to(DEVICE) for t in tensors]


def cpu(outputs):
    return [o.cpu() if isinstance(o, torch.Tensor) else o for o in outputs]


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PATHS = ("resident", "sweep", "stream")


@pytest.fixture(autouse=True)
def small_sweep_chunks(monkeypatch):
    """64-entry row chunks: the sweep path's chunk loop runs several times on test sizes."""
    if gpu.HAS_TRITON:
        monkeypatch.setattr(K, "SWEEP_ELEMS", 64)
SAMPLES = [
    Sample(2, 5, 7, 12),                                  # odd sizes
    Sample(2, 17, 9, 70, eps=0.01, max_iter=50),          # M > N, D over two tiles, eps 0.01
    Sample(2, 9, 14, 20, weights="pad", keep=4),          # padding, keep-count mode
    Sample(3, 6, 10, 8, tol=1e-5, max_iter=300),          # per-problem early stop
    Sample(2, 9, 14, 5, tau=0.5, weights="random"),       # threshold mode, uneven weights
]
FIELDS = ("tokens", "mass", "confidence", "distance", "f", "g")


def run(sample, dtype, path):
    x, y, aw, sw = on(*inputs(sample, dtype))
    out = K.sinkhorn_aggregate(x, y, aw, sw, sample.eps, 1.0, sample.max_iter, sample.tol,
                               sample.tau, sample.keep, path=path)
    return ak.AggregateResult(*cpu(out), None)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_fused_kernel_matches_reference(sample, dtype, path):
    ref = reference(sample, dtype)
    x, y, aw, sw = inputs(sample, dtype)
    torch_out = ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, backend="torch",
                                      **kwargs(sample))
    cpp_out = ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, backend="cpp",
                                    **kwargs(sample))
    out = run(sample, dtype, path)
    for name in FIELDS:
        expected = stack(ref, name)
        baseline = max_err(getattr(torch_out, name), expected)
        assert baseline <= ABS[dtype]
        value = getattr(out, name)
        assert value.dtype == dtype and value.shape == expected.shape, name
        err = max_err(value, expected)
        assert err <= MULT[dtype] * baseline + ATOL[dtype], f"{name}: {err:.3g} vs torch {baseline:.3g}"
        # and against the C++ kernel, on the same rule
        assert max_err(value, getattr(cpp_out, name).double().numpy()) <= 2 * (
            MULT[dtype] * baseline + ATOL[dtype]), name
    assert out.kept.dtype == torch.bool and out.iterations.dtype == torch.int64
    if sample.keep is not None:
        assert (out.kept.sum(1) == sample.keep).all()
        if dtype == torch.float32:
            assert np.array_equal(out.kept.numpy(), stack(ref, "kept").astype(bool))
    if sample.tau is not None and dtype == torch.float32:
        assert np.array_equal(out.kept.numpy(), stack(ref, "kept").astype(bool))
    ref_iters = np.array([r.iterations for r in ref])
    if sample.tol == 0:
        assert (out.iterations == sample.max_iter).all()
    else:  # the stopping test sees fp32 rounding: within one iteration of the reference
        assert np.abs(out.iterations.numpy() - ref_iters).max() <= 1
        assert (out.error.float() < sample.tol * 1.01).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sample", [SAMPLES[0], SAMPLES[2], SAMPLES[3]], ids=lambda s: s.name)
def test_sinkhorn_on_a_given_cost_matches_reference(sample, path):
    x, y, aw, sw = inputs(sample)
    cost64 = R.batched_cosine_cost(x.numpy(), y.numpy())
    ref = R.batched_sinkhorn(cost64, None if aw is None else aw.numpy(),
                             None if sw is None else sw.numpy(), eps=sample.eps,
                             max_iter=sample.max_iter, tol=sample.tol)
    cost = torch.from_numpy(cost64).float()
    f, g, iterations, error = cpu(K.sinkhorn(*on(cost, aw, sw), sample.eps, sample.max_iter,
                                             sample.tol, path=path))
    assert max_err(f, stack(ref, "f")) < 2e-5 and max_err(g, stack(ref, "g")) < 2e-5
    assert np.abs(iterations.numpy() - np.array([r.iterations for r in ref])).max() <= 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cosine_cost_matches_reference(dtype):
    x, y, _, _ = inputs(Sample(2, 19, 37, 70), dtype)
    ref = R.batched_cosine_cost(x.double().numpy(), y.double().numpy())
    out = ak.cosine_cost(*on(x, y), backend="triton").cpu()
    base = max_err(ak.cosine_cost(x, y, backend="torch"), ref)
    assert out.dtype == dtype and max_err(out, ref) <= MULT[dtype] * base + ATOL[dtype]
    zero = ak.cosine_cost(*on(torch.zeros(1, 1, 4), torch.ones(1, 2, 4)), backend="triton")
    assert torch.equal(zero.cpu(), torch.ones(1, 1, 2))  # a zero vector has cost 1 (SPEC §1)


def test_padding_is_inert_and_problems_stop_independently():
    s = Sample(3, 6, 10, 8, tol=1e-5, max_iter=300)
    x, y, _, _ = inputs(s, torch.float32)
    aw = torch.full((3, 8), 1 / 6)  # the default probabilities on the real rows, 0 on padding
    aw[:, 6:] = 0
    sw = torch.full((3, 13), 1 / 10)
    sw[:, 10:] = 0
    xp = torch.cat([x, torch.randn(3, 2, 8)], 1)
    yp = torch.cat([y, torch.randn(3, 3, 8)], 1)
    for path in PATHS:
        plain = cpu(K.sinkhorn_aggregate(*on(x, y), None, None, s.eps, 1.0, s.max_iter, s.tol,
                                         path=path))
        padded = cpu(K.sinkhorn_aggregate(*on(xp, yp, aw, sw), s.eps, 1.0, s.max_iter, s.tol,
                                          path=path))
        torch.testing.assert_close(padded[0][:, :6], plain[0], rtol=0, atol=2e-6)
        assert torch.isinf(padded[6][:, 6:]).all() and torch.isinf(padded[7][:, 10:]).all()
        assert torch.equal(padded[5], plain[5]) and len(set(plain[5].tolist())) > 1


def test_api_backend_triton_and_reducer():
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    got = ak.sinkhorn_aggregate(*on(x, y), backend="triton")
    want = ak.sinkhorn_aggregate(x, y, backend="cpp")
    torch.testing.assert_close(got.tokens.cpu(), want.tokens, rtol=0, atol=2e-6)
    g = torch.Generator().manual_seed(0)
    feats, scores = torch.randn(5, 16, 8, generator=g), torch.rand(5, 16, generator=g)
    a = ak.AOTReducer(0.3, clip_len=3, max_iter=30, backend="triton")(*on(feats, scores))
    b = ak.AOTReducer(0.3, clip_len=3, max_iter=30, backend="cpp")(feats, scores)
    assert torch.equal(a.positions.cpu(), b.positions)
    torch.testing.assert_close(a.tokens.cpu(), b.tokens, rtol=0, atol=1e-5)


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        ak.sinkhorn_aggregate(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="triton")


def test_float64_is_served_exactly_by_the_torch_path():
    s = Sample(2, 5, 7, 12)
    from aot_kernels import gpu
    out = cpu(gpu.sinkhorn_aggregate(*on(*inputs(s)), s.eps, 1.0, s.max_iter, s.tol))
    assert out[0].dtype == torch.float64
    assert max_err(out[0], stack(reference(s), "tokens")) < 1e-9


CLIP_MODES = [dict(keep=[[0, 2, 1, 3], [0, 1, 0, 0], [0, 0, 4, 2]]), dict(tau=0.3), dict()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", CLIP_MODES, ids=["keep", "tau", "merge-all"])
@pytest.mark.parametrize("unit", [False, True], ids=["probability", "unit"])
def test_clip_kernels_match_the_cpu_op(mode, unit, dtype):
    """The batched Triton steps == the C++ op, with clips of different lengths (padding frames
    are never read)."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 1, 7, 12, generator=g)
    frames = (base + 0.6 * torch.randn(3, 4, 7, 12, generator=g)).to(dtype)
    frames[1, 2:] = float("nan")  # beyond clip 1's length: must not be read
    sizes = 1 + torch.rand(3, 4, 7, generator=g)
    kw = dict(mode, anchor_weight=torch.ones(3, 7) if unit else None, max_iter=60,
              lengths=[4, 2, 3], sizes=sizes)
    clean = frames.nan_to_num(0.0)
    dev_kw = dict(kw, sizes=on(sizes)[0], anchor_weight=on(kw["anchor_weight"])[0])
    got = ak.ClipResult(*cpu(ak.clip_aggregate(on(clean)[0], backend="triton", **dev_kw)))
    # The kernel itself never reads past a clip's length (the public API rejects NaN anywhere).
    keep = None if "keep" not in mode else torch.tensor(mode["keep"])
    counts = keep if keep is not None or "tau" in mode else torch.zeros(3, 4, dtype=torch.long)
    raw = cpu(K.clip_aggregate(*on(frames, torch.tensor([4, 2, 3]), sizes, kw["anchor_weight"]),
                               0.1, 1.0, 60, 0.0, mode.get("tau"), on(counts)[0]))
    assert torch.equal(raw[0], got.anchors) and torch.equal(raw[2], got.kept)
    want = ak.clip_aggregate(clean, backend="cpp", **kw)
    tol = dict(rtol=0, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.anchors.float(), want.anchors.float(), **tol)
    torch.testing.assert_close(got.sizes.float(), want.sizes.float(), rtol=tol["rtol"],
                               atol=10 * tol["atol"])
    if dtype == torch.float32:
        assert torch.equal(got.kept, want.kept)
        torch.testing.assert_close(got.confidence, want.confidence, rtol=0, atol=1e-5)
    assert not got.kept[1, 2:].any() and not got.kept[:, 0].any()
    if "keep" in mode:
        counts = torch.tensor(mode["keep"])
        counts[1, 2:] = 0
        counts[2, 3:] = 0
        assert torch.equal(got.kept.sum(2), counts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sample", CLIP_SAMPLES[1:4], ids=lambda s: s.name)
def test_clip_aggregate_matches_reference(sample, dtype):
    """The clip scan against the float64 reference, under the per-dtype rule of the other ops
    (the kernels keep the anchors in the frames' dtype between steps, like the op's output)."""
    frames, lengths, sizes, kw = clip_inputs(sample, dtype)
    ref = clip_reference(sample, dtype)
    want = ak.clip_aggregate(frames, lengths, sizes, backend="torch", **kw)
    kw = dict(kw, anchor_weight=on(kw["anchor_weight"])[0])
    if "keep" in kw:
        kw["keep"] = on(kw["keep"])[0]
    got = ak.ClipResult(*cpu(ak.clip_aggregate(*on(frames, lengths, sizes), backend="triton", **kw)))
    for name in ("anchors", "sizes", "confidence", "f", "g"):
        expected = stack(ref, name)
        baseline = max_err(getattr(want, name), expected)
        err = max_err(getattr(got, name), expected)
        # bf16: rounding the anchors at every step adds up to one bf16 ulp per step.
        slack = 0.0 if dtype == torch.float32 else (sample.L - 1) * 2 ** -8
        assert err <= MULT[dtype] * baseline + ATOL[dtype] + slack, f"{name}: {err:.3g} vs {baseline:.3g}"
    assert got.iterations.dtype == torch.int64 and got.kept.dtype == torch.bool
    if dtype == torch.float32:
        assert torch.equal(got.kept, want.kept)
        assert torch.equal(got.iterations, want.iterations)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sample", SPEC8_SAMPLES, ids=spec8_name)
def test_spec8_options_match_reference(sample, path):
    """SPEC §8's options on the kernels (spatial kernel, transposed solve with the scaling stop,
    quantile, shift, blend) against the float64 reference, at the torch backend's fp32 error."""
    x, y, aw, sw, pa, ps, kw = spec8_inputs(sample, torch.float32)
    ref = spec8_reference(sample, torch.float32)
    want = ak.sinkhorn_aggregate(x, y, anchor_weight=aw, source_weight=sw, anchor_pos=pa,
                                 source_pos=ps, backend="torch", **kw)
    opts = dict(kw)
    solver = {k: opts.pop(k) for k in ("eps", "max_iter", "tol") if k in opts}
    pos = [None if p is None else p.float() for p in (pa, ps)]
    raw = K.sinkhorn_aggregate(*on(x, y, aw, sw), solver.get("eps", 0.1), 1.0,
                               solver.get("max_iter", 100), solver.get("tol", 0.0),
                               opts.get("tau"), opts.get("keep"), *on(*pos),
                               opts.get("spatial", 0.0), opts.get("stop", "marginal"),
                               opts.get("nn_blend", 0.0), opts.get("keep_quantile"),
                               opts.get("shift_min", False), path=path)
    got = ak.AggregateResult(*cpu(raw), None)
    for name in ("tokens", "mass", "confidence", "distance", "f", "g"):
        expected = stack(ref, name)
        baseline = max_err(getattr(want, name), expected)
        err = max_err(getattr(got, name), expected)
        assert err <= MULT[torch.float32] * baseline + ATOL[torch.float32], f"{name}: {err:.3g} vs {baseline:.3g}"
    assert torch.equal(got.iterations, want.iterations) and torch.equal(got.kept, want.kept)


def test_authors_reducer_on_the_kernels_matches_reference():
    """AuthorsAOTReducer(backend="triton") == reference/authors_reference.py (SPEC §8)."""
    from reference import authors_reference as A

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(1, 36, 5)) + 0.5 * rng.normal(size=(4, 36, 5))
    g, l = rng.random((4, 36)), rng.random((4, 36))
    kw = dict(grid=(6, 6), anchors=20, keep_ratio=0.3, clip_len=2)
    ref = A.reduce_video(feats, g, l, **kw)
    x, gs, ls = on(*(torch.from_numpy(v).float() for v in (feats, g, l)))
    out = ak.AuthorsAOTReducer(backend="triton", **kw)(x, gs, ls)
    assert out.positions.cpu().tolist() == ref.positions.tolist()
    np.testing.assert_allclose(out.tokens.cpu().double().numpy(), ref.tokens, rtol=0, atol=2e-5)


def test_launchers_are_the_ops_cuda_kernels():
    """On CUDA tensors torch.ops.aot.* dispatch to Triton (autograd and fake kernels are the
    device-independent ones of ops/library.py)."""
    assert gpu.register()
    for op in ("cosine_cost", "sinkhorn", "sinkhorn_aggregate", "clip_aggregate"):
        assert "\nCUDA: registered" in torch._C._dispatch_dump(f"aot::{op}"), op


@pytest.mark.parametrize("sample,path", [
    (Sample(1, 40, 150, 70, max_iter=30), "stream"),
    (Sample(2, 37, 70, 20, max_iter=30, keep=9, weights="pad"), "stream"),
    (Sample(2, 37, 70, 20, max_iter=30, keep=9, weights="pad"), "sweep"),
    (Sample(1, 126, 70, 64, max_iter=20), "sweep"),  # the paper's frame: rows of 128
    (Sample(1, 60, 50, 40, max_iter=20), "resident"),  # the largest resident tile, 64 x 64
], ids=lambda v: v.name if isinstance(v, Sample) else v)
def test_larger_problems_match_reference(sample, path):
    """Streaming: rows over two tiles of 32, sources over several tiles of 64, D over two tiles
    (the online log-sum-exp and the summed error shares must see every tile once). Sweep:
    one-row chunks of 128-wide rows, the paper's frame among them. Resident: a 64 x 64 tile."""
    ref = reference(sample, torch.float32)
    out = run(sample, torch.float32, path)
    torch_out = ak.sinkhorn_aggregate(*inputs(sample, torch.float32)[:2],
                                      anchor_weight=inputs(sample)[2], source_weight=inputs(sample)[3],
                                      backend="torch", **kwargs(sample))
    for name in FIELDS:
        expected = stack(ref, name)
        baseline = max_err(getattr(torch_out, name), expected)
        assert max_err(getattr(out, name), expected) <= MULT[torch.float32] * baseline + ATOL[torch.float32], name
    assert np.array_equal(out.kept.numpy(), stack(ref, "kept").astype(bool))


class _Broken:
    """Stands in for a Triton kernel whose launch fails (as on an unsupported GPU)."""

    def __init__(self, kernel):
        self.fn = kernel.fn

    def __getitem__(self, grid):
        def fail(*args, **kwargs):
            raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
        return fail


def test_a_failing_kernel_falls_back_to_torch_with_one_warning(monkeypatch):
    monkeypatch.delenv("AOT_KERNELS_STRICT")
    monkeypatch.setattr(K, "_fold", _Broken(K._fold))
    monkeypatch.setattr(gpu, "_warned", set())
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    with pytest.warns(RuntimeWarning, match=r"Triton kernel _fold failed: RuntimeError: out of "
                                            r"resource.*torch backend.*AOT_KERNELS_STRICT=1"):
        got = ak.sinkhorn_aggregate(*on(x, y), keep=2, backend="triton")
    want = ak.sinkhorn_aggregate(x, y, keep=2, backend="torch")
    for name in FIELDS + ("kept", "iterations"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=0, atol=0)
    import warnings
    with warnings.catch_warnings():  # warned once: the next call is quiet
        warnings.simplefilter("error")
        ak.sinkhorn_aggregate(*on(x, y), backend="triton")
        frames = torch.randn(2, 3, 5, 8)
        clip = ak.clip_aggregate(*on(frames), keep=torch.ones(2, 3, dtype=torch.long),
                                 backend="triton")
    want = ak.clip_aggregate(frames, keep=torch.ones(2, 3, dtype=torch.long), backend="torch")
    for got_field, want_field in zip(clip, want):
        torch.testing.assert_close(got_field.cpu(), want_field, rtol=0, atol=0)


def test_strict_mode_raises_the_kernel_failure(monkeypatch):
    monkeypatch.setenv("AOT_KERNELS_STRICT", "1")
    monkeypatch.setattr(K, "_solve_kernel", _Broken(K._solve_kernel))
    x, y, _, _ = inputs(Sample(2, 5, 7, 12), torch.float32)
    with pytest.raises(gpu.KernelError, match="_solve_kernel failed: RuntimeError: out of resource"):
        ak.sinkhorn_aggregate(*on(x, y), backend="triton")


def test_solve_path_routes_by_size_and_checks_forced_paths():
    assert K.solve_path(17, 40) == "resident"  # 32 x 64 padded
    assert K.solve_path(126, 70) == "sweep" and K.solve_path(126, 603) == "sweep"
    assert K.solve_path(17, 8192) == "stream"
    with pytest.raises(ValueError, match="path='resident' holds at most"):
        K.solve_path(126, 126, "resident")
    with pytest.raises(ValueError, match="path='sweep' holds rows of at most"):
        K.solve_path(2, 5000, "sweep")
    with pytest.raises(ValueError, match="path must be one of"):
        K.solve_path(2, 2, "onchip")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_alignment_constexprs_follow_the_tensors(monkeypatch, dtype):
    """The *_ALIGN constexprs promise the compiler that a stride divides by them: 128-bit loads
    on a GPU, and misaligned accesses if a promise were wrong, which the interpreter (it ignores
    alignment) cannot show. So: every promise holds for the tensors actually passed; D 1152 and
    the padded fp32 workspace get one, D 1150 does not; a user cost with rows of 7 is copied to
    a padded workspace, one with rows of 8 is used as it is; public outputs stay contiguous."""
    from aot_kernels.gpu import common
    from aot_kernels.gpu import cost_kernels as CK

    launches = []
    monkeypatch.setattr(common, "compile_only", lambda kernel, grid, args, kwargs: launches.append(
        (kernel.fn.__name__, dict(zip(kernel.arg_names, args)), kwargs)))
    per_dtype = 16 // torch.tensor([], dtype=dtype).element_size()
    for d, cost_align, fold_align in ((1152, per_dtype, 4), (1150, 1, 1)):
        launches.clear()
        x, y = torch.zeros(2, 5, d, dtype=dtype), torch.zeros(2, 7, d, dtype=dtype)
        K.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 1, 0.0, path="stream")
        K.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 1, 0.0, path="sweep")
        assert {name for name, _, kw in launches if "C_ALIGN" in kw} == {
            "_row_pass", "_col_pass", "_solve_kernel", "_column_stats", "_fold"}
        assert {name for name, _, kw in launches if "D_ALIGN" in kw} == {"_cosine_cost_kernel", "_fold"}
        for name, args, kw in launches:
            if "D_ALIGN" in kw:
                assert kw["D_ALIGN"] == (cost_align if name == "_cosine_cost_kernel" else fold_align)
                assert args["DQ"] * kw["D_ALIGN"] == d
            if "C_ALIGN" in kw:  # the fp32 workspace: rows padded to 16 bytes
                cost = args["COST"]
                assert kw["C_ALIGN"] == 4 and args["LDQ"] * 4 == cost.stride(1) == 8
                assert cost.shape[2] == 7 and cost.stride(0) == cost.shape[1] * cost.stride(1)
            if "O_ALIGN" in kw:
                assert args["LDQ"] * kw["O_ALIGN"] == args["OUT"].stride(1) == 8
    for n, copied in ((7, True), (8, False)):
        launches.clear()
        cost = torch.zeros(2, 5, n)
        K.sinkhorn(cost, None, None, 0.1, 1, 0.0, path="sweep")
        (name, args, kw), = launches
        assert (args["COST"].data_ptr() != cost.data_ptr()) == copied
        assert args["COST"].stride(1) == 8 and kw["C_ALIGN"] == 4
    x, y = torch.zeros(1, 5, 12, dtype=dtype), torch.zeros(1, 7, 12, dtype=dtype)
    assert CK.cosine_cost(x, y).is_contiguous() and CK.cosine_cost(x, y).shape == (1, 5, 7)
    pos = torch.zeros(1, 5, 2), torch.zeros(1, 7, 2)
    assert CK.cost_with_spatial(x, y, *pos, 0.5).is_contiguous()
