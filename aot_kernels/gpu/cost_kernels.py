"""Triton cosine cost (SPEC §1): C [B,M,N] = 1 - <x_j, y_i> / (|x_j| |y_i|), tiles of tl.dot over D
with the norms accumulated on the fly, fp32 accumulation.

Shared with sinkhorn_kernels.py:
- Offsets that a product of an index and a shape can push past 2^31 (row * stride, problem *
  size) are int64: M, N, D arrive as int32 (do_not_specialize), and M x N > 2^31 fits an H200.
  The compile gate fails on any int32 product of two runtime values.
- A row stride travels as (stride / ALIGN, ALIGN), ALIGN a constexpr: the elements of 16 bytes
  when they divide it, else 1 (`aligned`). The kernel's ALIGN * quotient carries the
  divisibility that do_not_specialize hides, so one compile serves every aligned shape with
  128-bit loads; an unaligned one takes the ALIGN = 1 variant. Masks use the aligned extents
  (the padded row), so they are constant over a vector.
- The fp32 workspace [B,M,N] is a view of [B,M,LD], LD = N rounded up to 4 (`workspace`): its
  rows start 16-byte aligned. Its padding columns hold finite values that no result reads.
The interpreter sees neither defect: it ignores alignment, and an int32 offset wraps only past
2^31 elements, more than CI can allocate. The compile gate reads the IR and PTX instead.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dot_flags, launch


def aligned(stride: int, itemsize: int, most: int = 16):
    """(stride // q, q), q = the elements of 16 bytes (at most `most`) when they divide stride,
    else (stride, 1). Past int32 the quotient times q would overflow in the kernel: q = 1 there
    (the argument is then int64 anyway)."""
    q = min(16 // itemsize, most)
    if stride % q or stride >= 2 ** 31:
        return stride, 1
    return stride // q, q


def padded_width(n: int) -> int:
    return -(-n // 4) * 4


def workspace(b: int, m: int, n: int, device) -> torch.Tensor:
    """An fp32 [B,M,N] view with 16-byte aligned rows (row stride N rounded up to 4), its
    padding left to the writer."""
    return torch.empty(b, m, padded_width(n), dtype=torch.float32, device=device)[:, :, :n]


def as_workspace(cost: torch.Tensor) -> torch.Tensor:
    """cost [B,M,N] as an fp32 workspace: itself when it is one already, else a copy padded
    with zeros."""
    b, m, n = cost.shape
    if (cost.dtype == torch.float32 and cost.stride(2) == 1 and cost.stride(1) % 4 == 0
            and cost.stride(1) >= n and cost.stride(0) == m * cost.stride(1)):
        return cost
    pad = padded_width(n) - n
    return torch.nn.functional.pad(cost.float(), (0, pad)).contiguous()[:, :, :n]


def row_stride(cost: torch.Tensor):
    """(quotient, ALIGN) of a workspace's row stride (see `aligned`)."""
    return aligned(cost.stride(1), 4)


@triton.jit
def dot_tile(X, Y, M, N, D, rm, rn, xb, yb,
             NATIVE_DOT: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """<x_j, y_i> [BLOCK_M, BLOCK_N] and the squared norms of the rows, fp32, over D in tiles.
    xb / yb: offsets of this problem's x [M,D] and y [N,D] (contiguous, int64)."""
    in_m = rm < M
    in_n = rn < N
    x_rows = X + xb + rm.to(tl.int64) * D
    y_rows = Y + yb + rn.to(tl.int64) * D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    xn = tl.zeros([BLOCK_M], dtype=tl.float32)
    yn = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        in_d = rd < D
        xt = tl.load(x_rows[:, None] + rd[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
        yt = tl.load(y_rows[:, None] + rd[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
        xf = xt.to(tl.float32)
        yf = yt.to(tl.float32)
        xn += tl.sum(xf * xf, 1)
        yn += tl.sum(yf * yf, 1)
        if NATIVE_DOT:  # fp16/bf16 products are exact in fp32: tensor cores, fp32 accumulation
            acc = tl.dot(xt, tl.trans(yt), acc)
        elif TF32:
            acc = tl.dot(xf, tl.trans(yf), acc, input_precision="tf32")
        else:
            acc = tl.dot(xf, tl.trans(yf), acc, input_precision="ieee")
    return acc, xn, yn


@triton.jit
def cosine_from_dot(acc, xn, yn):
    """1 - dot / (max(|x|, 1e-12) max(|y|, 1e-12)) (the F.normalize convention)."""
    inv_x = 1.0 / tl.maximum(tl.sqrt(xn), 1e-12)
    inv_y = 1.0 / tl.maximum(tl.sqrt(yn), 1e-12)
    return 1.0 - acc * inv_x[:, None] * inv_y[None, :]


@triton.jit(do_not_specialize=["M", "N", "DQ", "LDQ"])
def _cosine_cost_kernel(X, Y, OUT, M, N, DQ, LDQ,
                        NATIVE_DOT: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_ALIGN: tl.constexpr,
                        O_ALIGN: tl.constexpr):
    """OUT [B,M,LD] (row stride LD = LDQ * O_ALIGN >= N; columns N..LD get the cost of a zero
    source, 1) from x [B,M,D], y [B,N,D], D = DQ * D_ALIGN (module docstring)."""
    D = DQ * D_ALIGN
    LD = LDQ * O_ALIGN
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc, xn, yn = dot_tile(X, Y, M, N, D, rm, rn, b * M * D, b * N * D,
                           NATIVE_DOT, TF32, BLOCK_M, BLOCK_N, BLOCK_D)
    cost = cosine_from_dot(acc, xn, yn)
    mask = (rm < M)[:, None] & (rn < LD)[None, :]
    rows = OUT + b * M * LD + rm.to(tl.int64) * LD
    tl.store(rows[:, None] + rn[None, :], cost.to(OUT.dtype.element_ty), mask=mask)


def cosine_cost(x: torch.Tensor, y: torch.Tensor, out_dtype=None) -> torch.Tensor:
    """x [B,M,D], y [B,N,D] (validated) -> C [B,M,N] (contiguous) in out_dtype (default: x's)."""
    b, m, _ = x.shape
    out = torch.empty(b, m, y.shape[1], dtype=out_dtype or x.dtype, device=x.device)
    return _cost_into(x, y, out)


def cost_workspace(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fp32 cost as a workspace (16-byte aligned rows, see `workspace`)."""
    return _cost_into(x, y, workspace(x.shape[0], x.shape[1], y.shape[1], x.device))


def _cost_into(x, y, out):
    x, y = x.contiguous(), y.contiguous()
    b, m, d = x.shape
    n = y.shape[1]
    native, tf32 = dot_flags(x.dtype)
    # One compiled tile per dtype, whatever the shape (masks cover the rest); 8 warps and, for
    # fp32 operands (twice the registers of fp16), a thinner D slice keep it unspilled.
    bm = bn = 64
    bd, warps = (64, 8) if native else (16, 8)
    dq, d_align = aligned(d, x.element_size())
    ldq, o_align = aligned(out.stride(1), out.element_size())
    grid = (b, triton.cdiv(m, bm), triton.cdiv(n, bn))
    launch(_cosine_cost_kernel, grid, x, y, out, m, n, dq, ldq, NATIVE_DOT=native, TF32=tf32,
           BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, D_ALIGN=d_align, O_ALIGN=o_align, num_warps=warps)
    return out


@triton.jit(do_not_specialize=["M", "N", "P", "LDC"])
def _spatial_cost_kernel(COST, XP, YP, M, N, P, LDC, weight,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """COST [B,M,N] (fp32 workspace, row stride LDC) += weight * |xp_j - yp_i|_2 in place,
    positions [B,M,P] and [B,N,P] (SPEC §8.4): a tile's distances from 2 P loads, never a
    [B,M,N] bias in memory."""
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_m = rm < M
    in_n = rn < N
    xo = b * M * P + rm.to(tl.int64) * P
    yo = b * N * P + rn.to(tl.int64) * P
    d2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, P):
        xp = tl.load(XP + (xo + k), mask=in_m, other=0.0)
        yp = tl.load(YP + (yo + k), mask=in_n, other=0.0)
        diff = xp[:, None] - yp[None, :]
        d2 += diff * diff
    at = (COST + b * M * LDC + rm.to(tl.int64) * LDC)[:, None] + rn[None, :]
    mask = in_m[:, None] & in_n[None, :]
    tl.store(at, tl.load(at, mask=mask, other=0.0) + weight * tl.sqrt(d2), mask=mask)


def add_spatial_cost(cost32: torch.Tensor, x_pos: torch.Tensor, y_pos: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """cost32 [B,M,N] fp32 workspace += weight * |x_pos_j - y_pos_i| (positions validated), in
    place."""
    b, m, n = cost32.shape
    xp, yp = x_pos.float().contiguous(), y_pos.float().contiguous()
    launch(_spatial_cost_kernel, (b, triton.cdiv(m, 64), triton.cdiv(n, 64)), cost32, xp, yp, m, n,
           xp.shape[2], cost32.stride(1), float(weight), BLOCK_M=64, BLOCK_N=64, num_warps=8)
    return cost32


def cost_with_spatial(x, y, x_pos=None, y_pos=None, spatial=0.0):
    """The contract of aot::cosine_cost (spatial term included) on the kernels."""
    if not spatial:
        return cosine_cost(x, y)
    cost = add_spatial_cost(cost_workspace(x, y), x_pos, y_pos, spatial)
    return cost.to(x.dtype).contiguous()
