"""Shared test inputs, reference results and per-dtype tolerances (also used by benchmarks/)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from reference import ot_reference as R

BACKENDS = ("cpp", "torch")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# A kernel's error against the float64 reference may be at most MULT x the "torch" backend's
# error in the same dtype, plus ATOL (flash-attention's rule). Low precision is judged on
# inputs already rounded to that dtype, so only compute and output rounding count.
MULT = {torch.float64: 4.0, torch.float32: 4.0, torch.float16: 2.0, torch.bfloat16: 2.0}
ATOL = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}

# Compiled CUDA kernels against the C++ CPU backend (tests/test_cuda.py, `make gpu-check`).
# The kernels' exp is ex2.approx (a few ulp in fp32), sqrt is sqrt.approx.ftz, FMA contraction
# is on, and the GEMM sums in another order: every Sinkhorn step differs from the CPU's in its
# last bits. The iteration is a contraction, so the difference stays a small multiple of one
# step's (no growth with max_iter); these bounds allow ~1e3 fp32 ulp of the tokens' scale.
CUDA_TOL = {torch.float32: dict(rtol=1e-3, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=5e-3),
            torch.bfloat16: dict(rtol=5e-2, atol=3e-2)}
# A run that stops at `tol` may stop some iterations earlier or later on the GPU (its error test
# rounds differently): its outputs move by up to about the tolerance left, so atol grows by
# STOP_MARGIN x tol.
STOP_MARGIN = 10.0


def cuda_tol(dtype: torch.dtype, tol: float = 0.0) -> dict:
    """assert_close keywords for CUDA vs CPU in `dtype` for a run stopped at `tol`."""
    bound = dict(CUDA_TOL[dtype])
    bound["atol"] += STOP_MARGIN * tol
    return bound


@dataclass(frozen=True)
class Sample:
    """One batched problem; `pad` zeroes the last source (and anchor) weight of every problem."""
    B: int
    M: int
    N: int
    D: int
    eps: float = 0.1
    tol: float = 0.0
    max_iter: int = 100
    weights: str = "none"  # none | random | pad
    tau: Optional[float] = None
    keep: Optional[int] = None
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self):
        mode = f"tau{self.tau}" if self.tau is not None else (f"keep{self.keep}" if self.keep is not None else "intra")
        return f"B{self.B}M{self.M}N{self.N}D{self.D}-eps{self.eps}-tol{self.tol}-{self.weights}-{mode}"


SAMPLES = [
    Sample(1, 1, 1, 1),
    Sample(2, 1, 5, 3),
    Sample(3, 5, 1, 4),
    Sample(1, 2, 2, 1200),
    Sample(9, 7, 11, 16, weights="random"),
    Sample(4, 40, 17, 64),                      # M > N
    Sample(2, 17, 40, 33, weights="pad"),       # M < N, padding
    Sample(3, 12, 20, 8, eps=0.01),             # exp(-C/eps) underflows in fp32
    Sample(3, 12, 20, 8, eps=1.0),
    Sample(5, 10, 15, 6, tol=1e-6, max_iter=500),
    Sample(4, 9, 14, 5, tau=0.5),
    Sample(4, 9, 14, 5, keep=6, weights="pad"),
    Sample(2, 20, 30, 16, eps=0.01, keep=10),
    Sample(1, 300, 70, 128),
    Sample(1, 126, 300, 32, weights="random"),
]


def features(s: Sample):
    """Clustered features (sources near anchors) so plans are far from uniform; float64."""
    g = torch.Generator().manual_seed(s.seed + 1000 * s.M + s.N)
    x = torch.randn(s.B, s.M, s.D, generator=g, dtype=torch.float64)
    idx = torch.randint(0, s.M, (s.B, s.N), generator=g)
    y = torch.gather(x, 1, idx.unsqueeze(2).expand(-1, -1, s.D))
    y = y + 0.7 * torch.randn(s.B, s.N, s.D, generator=g, dtype=torch.float64)
    return x, y


def weights(s: Sample):
    g = torch.Generator().manual_seed(s.seed + 7)
    if s.weights == "none":
        return None, None
    if s.weights == "random":
        return (torch.rand(s.B, s.M, generator=g, dtype=torch.float64) + 0.1,
                torch.rand(s.B, s.N, generator=g, dtype=torch.float64) + 0.1)
    aw = torch.ones(s.B, s.M, dtype=torch.float64)
    sw = torch.ones(s.B, s.N, dtype=torch.float64)
    if s.M > 1:
        aw[:, -1] = 0
    if s.N > 1:
        sw[:, -1] = 0
    return aw, sw


def inputs(s: Sample, dtype=torch.float64):
    """(anchors, sources, anchor_weight, source_weight) in `dtype`; weights stay float64."""
    x, y = features(s)
    aw, sw = weights(s)
    return x.to(dtype), y.to(dtype), aw, sw


def kwargs(s: Sample):
    return dict(eps=s.eps, max_iter=s.max_iter, tol=s.tol, tau=s.tau, keep=s.keep)


@functools.lru_cache(maxsize=None)
def reference(s: Sample, dtype=torch.float64):
    """Reference results on the inputs rounded to `dtype` (so only compute error is measured)."""
    x, y, aw, sw = inputs(s, dtype)
    as_np = lambda t: None if t is None else t.double().numpy()  # noqa: E731
    return R.batched_sinkhorn_aggregate(as_np(x), as_np(y), as_np(aw), as_np(sw), **kwargs(s))


def stack(results, attr):
    return np.stack([np.asarray(getattr(r, attr), dtype=np.float64) for r in results])


# Sanity bound of the "torch" backend itself (scale-relative error, see max_err).
ABS = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def assert_within_rule(outputs: dict, ref, fields, dtype, sanity: float = 1.0) -> None:
    """outputs: backend -> result (attributes `fields`). Each field of every backend is within
    MULT x the "torch" backend's error + ATOL against the reference results `ref`; the torch
    backend itself within sanity x ABS."""
    for name in fields:
        expected = stack(ref, name)
        baseline = max_err(getattr(outputs["torch"], name), expected)
        assert baseline <= sanity * ABS[dtype], f"torch backend {name}: {baseline:.3g}"
        for be, out in outputs.items():
            value = getattr(out, name)
            assert value.shape == expected.shape, f"{be} {name}: shape {tuple(value.shape)}"
            err = max_err(value, expected)
            assert err <= MULT[dtype] * baseline + ATOL[dtype], f"{be} {name}: {err:.3g} vs {baseline:.3g}"


def saved_bytes(fn) -> int:
    """Bytes autograd saves for backward while fn() runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def max_err(value: torch.Tensor, ref: np.ndarray) -> float:
    """Max abs error relative to max(1, max |ref|), on entries where the reference is finite
    (potentials are -inf on padding); inf if the kernel is not -inf exactly where it is."""
    v = value.detach().double().numpy()
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(v)):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(1.0, float(np.abs(ref[finite]).max()))
    return float(np.abs(v[finite] - ref[finite]).max()) / scale


# ---- clip_aggregate (SPEC §5 over whole clips) -----------------------------------------------

@dataclass(frozen=True)
class ClipSample:
    """C clips of up to L frames of M tokens; clip c uses its first lengths[c] frames."""
    C: int
    L: int
    M: int
    D: int
    lengths: tuple
    mode: str = "keep"  # keep (random counts) | tau | merge (neither: every token merged)
    unit: bool = False  # anchor_weight = ones (unit demand) instead of uniform probabilities
    eps: float = 0.1
    tol: float = 0.0
    max_iter: int = 100
    seed: int = 0

    @property
    def name(self):
        unit = "-unit" if self.unit else ""
        return (f"C{self.C}L{self.L}M{self.M}D{self.D}-len{'.'.join(map(str, self.lengths))}-"
                f"{self.mode}{unit}-eps{self.eps}-tol{self.tol}")


CLIP_SAMPLES = [
    ClipSample(1, 1, 3, 4, (1,), "merge"),  # one frame: nothing to absorb
    ClipSample(3, 4, 7, 12, (4, 2, 3), "keep"),
    ClipSample(3, 4, 7, 12, (4, 2, 3), "tau", unit=True),
    ClipSample(2, 3, 5, 8, (3, 3), "merge", eps=0.01),  # exp(-C/eps) underflows in fp32
    ClipSample(2, 5, 9, 16, (5, 4), "keep", tol=1e-6, max_iter=400),
    ClipSample(2, 3, 40, 64, (3, 2), "keep", unit=True),
]


def clip_inputs(s: ClipSample, dtype=torch.float64):
    """frames [C,L,M,D] in `dtype` (each frame a noisy copy of a clip base, so plans are far from
    uniform), lengths [C], sizes [C,L,M] >= 1 (float64), and the clip_aggregate keywords."""
    g = torch.Generator().manual_seed(s.seed + 100 * s.M + s.L)
    base = torch.randn(s.C, 1, s.M, s.D, generator=g, dtype=torch.float64)
    frames = base + 0.6 * torch.randn(s.C, s.L, s.M, s.D, generator=g, dtype=torch.float64)
    sizes = 1 + torch.rand(s.C, s.L, s.M, generator=g, dtype=torch.float64)
    kw = dict(eps=s.eps, max_iter=s.max_iter, tol=s.tol,
              anchor_weight=torch.ones(s.C, s.M, dtype=torch.float64) if s.unit else None)
    if s.mode == "keep":
        kw["keep"] = torch.randint(0, s.M + 1, (s.C, s.L), generator=g)
    elif s.mode == "tau":
        kw["tau"] = 0.5
    return frames.to(dtype), torch.tensor(s.lengths), sizes, kw


@functools.lru_cache(maxsize=None)
def clip_reference(s: ClipSample, dtype=torch.float64):
    """R.clip_aggregate of every clip, on the frames rounded to `dtype`."""
    frames, lengths, sizes, kw = clip_inputs(s, dtype)
    kw = dict(kw)
    aw, keep = kw.pop("anchor_weight"), kw.pop("keep", None)
    return [R.clip_aggregate(frames[c].double().numpy(), int(lengths[c]), sizes[c].numpy(),
                             None if aw is None else aw[c].numpy(),
                             keep=None if keep is None else keep[c].numpy(), **kw)
            for c in range(s.C)]
