"""Triton cosine cost (SPEC §1): C [B,M,N] = 1 - <x_j, y_i> / (|x_j| |y_i|), tiles of tl.dot over D
with the norms accumulated on the fly, fp32 accumulation."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dot_flags, launch


@triton.jit
def dot_tile(X, Y, M, N, D, rm, rn, xb, yb,
             NATIVE_DOT: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """<x_j, y_i> [BLOCK_M, BLOCK_N] and the squared norms of the rows, fp32, over D in tiles.
    xb / yb: offsets of this problem's x [M,D] and y [N,D] (contiguous)."""
    in_m = rm < M
    in_n = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    xn = tl.zeros([BLOCK_M], dtype=tl.float32)
    yn = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        in_d = rd < D
        xt = tl.load(X + xb + rm[:, None] * D + rd[None, :], mask=in_m[:, None] & in_d[None, :], other=0.0)
        yt = tl.load(Y + yb + rn[:, None] * D + rd[None, :], mask=in_n[:, None] & in_d[None, :], other=0.0)
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


@triton.jit(do_not_specialize=["M", "N", "D"])
def _cosine_cost_kernel(X, Y, OUT, M, N, D,
                        NATIVE_DOT: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc, xn, yn = dot_tile(X, Y, M, N, D, rm, rn, b * M * D, b * N * D,
                           NATIVE_DOT, TF32, BLOCK_M, BLOCK_N, BLOCK_D)
    cost = cosine_from_dot(acc, xn, yn)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(OUT + b * M * N + rm[:, None] * N + rn[None, :], cost.to(OUT.dtype.element_ty), mask=mask)


def cosine_cost(x: torch.Tensor, y: torch.Tensor, out_dtype=None) -> torch.Tensor:
    """x [B,M,D], y [B,N,D] (validated) -> C [B,M,N] in out_dtype (default: x's dtype)."""
    x, y = x.contiguous(), y.contiguous()
    b, m, d = x.shape
    n = y.shape[1]
    out = torch.empty(b, m, n, dtype=out_dtype or x.dtype, device=x.device)
    native, tf32 = dot_flags(x.dtype)
    # One compiled tile per dtype, whatever the shape (masks cover the rest); 8 warps and, for
    # fp32 operands (twice the registers of fp16), a thinner D slice keep it unspilled.
    bm = bn = 64
    bd, warps = (64, 8) if native else (16, 8)
    grid = (b, triton.cdiv(m, bm), triton.cdiv(n, bn))
    launch(_cosine_cost_kernel, grid, x, y, out, m, n, d, NATIVE_DOT=native, TF32=tf32,
           BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps)
    return out


@triton.jit(do_not_specialize=["M", "N", "P"])
def _spatial_cost_kernel(COST, XP, YP, M, N, P, weight,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """COST [B,M,N] (fp32 workspace) += weight * |xp_j - yp_i|_2 in place, positions [B,M,P] and
    [B,N,P] (SPEC §8.4): a tile's distances from 2 P loads, never a [B,M,N] bias in memory."""
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_m = rm < M
    in_n = rn < N
    d2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, P):
        xp = tl.load(XP + b * M * P + rm * P + k, mask=in_m, other=0.0)
        yp = tl.load(YP + b * N * P + rn * P + k, mask=in_n, other=0.0)
        diff = xp[:, None] - yp[None, :]
        d2 += diff * diff
    at = COST + b * M * N + rm[:, None] * N + rn[None, :]
    mask = in_m[:, None] & in_n[None, :]
    tl.store(at, tl.load(at, mask=mask, other=0.0) + weight * tl.sqrt(d2), mask=mask)


def add_spatial_cost(cost32: torch.Tensor, x_pos: torch.Tensor, y_pos: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """cost32 [B,M,N] fp32 += weight * |x_pos_j - y_pos_i| (positions validated), in place."""
    b, m, n = cost32.shape
    xp, yp = x_pos.float().contiguous(), y_pos.float().contiguous()
    launch(_spatial_cost_kernel, (b, triton.cdiv(m, 64), triton.cdiv(n, 64)), cost32, xp, yp, m, n,
           xp.shape[2], float(weight), BLOCK_M=64, BLOCK_N=64, num_warps=4)
    return cost32


def cost_with_spatial(x, y, x_pos=None, y_pos=None, spatial=0.0):
    """The contract of aot::cosine_cost (spatial term included) on the kernels."""
    if not spatial:
        return cosine_cost(x, y)
    cost = add_spatial_cost(cosine_cost(x, y, out_dtype=torch.float32), x_pos, y_pos, spatial)
    return cost.to(x.dtype)
