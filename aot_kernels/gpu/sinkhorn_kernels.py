"""Triton Sinkhorn (SPEC §2) and cost + Sinkhorn + aggregation (SPEC §3, §5 step).

One contract (the outputs of torch.ops.aot.sinkhorn / sinkhorn_aggregate / clip_aggregate), four
small kernels (clip_aggregate runs them once per clip step, batched over the clips):

  cost    `cost_workspace` (cost_kernels.py): C [B,M,N] into an fp32 workspace, a grid over
          (problem, 64 x 64 tile), so the GEMM uses every SM; tensor cores for fp16/bf16.
  solve   one program per problem runs the whole Sinkhorn loop and stops on its own:
          - "resident" (padded BM x BN <= 64 x 64): the tile sits in registers, ~16 fp32 a thread;
          - "sweep" (BN <= 4096, any M): each iteration is one pass over row chunks of the
            workspace (ROWS x BN = 2048 entries): the row log-sum-exp gives f for the chunk,
            which feeds an online column log-sum-exp, which gives g at the end of the pass. A
            problem's workspace (32 KB at 126 x 70, 64 KB at 126 x 126, 320 KB at 126 x 603) is
            re-read each iteration from L1/L2 (50 MB of L2 on an H100), never from spilled
            registers, whatever the size;
          - "stream" (wider rows, or when asked): a row pass, a bookkeeping pass and a column
            pass per iteration over a grid of tiles, with per-problem `active` flags on the
            device, so the host launches max_iter rounds without synchronising.
  stats   `_column_stats`: per source column sum, confidence q_i and the distance, a grid over
          (problem, column tile); the keep / tau choice is a few torch ops (no host sync).
  fold    `_fold`: tokens_j = (x_j + lam sum_i W_ji y_i) / (1 + lam sum_i W_ji), W_ji = T_ji
          scale_i recomputed from (f, g, C) per tile, a grid over (problem, row tile, D tile).
The plan [B,M,N] never reaches global memory. The error test of iteration k comes for free from
the next row pass: sum_i T_ji = exp(f_j/eps + LSE_i((g_i - C_ji)/eps)).

Resources at the paper's shapes, fp16, from `python -m aot_kernels.gpu.compile_check` (triton
3.9; registers / thread, sm_80 | sm_90; no spill anywhere; shared memory per block):
  126<-70 (D 1152), 126<-126 (keep), clip steps at M 126: solve sweep BN 128, 16 rows, 4 warps,
      96 | 112 regs, 3 KB; cost 60 | 58 regs, 33 KB (operands pipelined through shared memory);
      stats 72 | 72; fold 72 | 110 (clip steps 80 | 113), 29 KB
  108<-61 (D 3584): solve sweep BN 64, 32 rows, 8 warps, 64 | 78 regs
  126<-603 (D 3584, the authors' pipeline): solve sweep BN 1024, 2 rows, 4 warps, 121 | 127 regs
Their loads are 128 bits wide (ld.global.v4.b32, cp.async 16 B): the workspace rows are padded
to 16 bytes and the strides' alignment reaches the compiler as constexprs (cost_kernels.py).
With <= 33 KB of shared memory and <= 255 registers x 128-256 threads, 2-3 solve programs fit on
an SM (register-bound); the grid kernels (cost, stats, fold) have B x tiles programs.
Run to run, the outputs and iteration counts are bit-identical: every sum across programs (the
streaming row error, the distance) is stored as per-tile shares and added in a fixed order,
never with atomics (tests/test_program_order.py). Offsets that can pass 2^31 are int64.
Why this shape: the first design held a whole 128 x 128 problem plus its cost GEMM, the keep
ranking ([BN,BN] comparisons) and the fold's operands in one program: 255 registers and 0.5-3 KB
of spill per thread at every paper shape, 144 KB of shared memory, and ptxas failed at 256 x 256.
Even the Sinkhorn loop alone on a 128 x 128 tile spills at 32 warps (64 registers each), hence
the sweep. Expected bounds (not yet measured on a GPU): the cost and fold are small GEMMs
(32 x 126 x 70 x 1152 is 0.65 GFLOP); the solve does 2 exponentials per padded entry per iteration
on one SM per problem (MUFU: 16 a clock per SM), so a 128 x 128 frame costs ~2K clocks (~1.2 us)
per iteration plus the pass's L1 latency, and 32 frames use 32 of an H100's 132 SMs: the loop's
latency, not bandwidth, bounds the intra-frame step. The clip steps batch over clips.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..ops import composite
from .common import dot_flags, launch, next_pow2
from .cost_kernels import add_spatial_cost, aligned, as_workspace, cost_workspace, row_stride

NEG_INF = tl.constexpr(float("-inf"))  # a constexpr global: the compiler rejects plain ones


@triton.jit
def _lse(z, axis: tl.constexpr):
    """log-sum-exp along `axis` of z (-inf entries drop out; a row is never all -inf)."""
    top = tl.max(z, axis)
    return top + tl.log(tl.sum(tl.exp(z - tl.expand_dims(top, axis)), axis))


@triton.jit
def _solve(scaled, a, s, eps, max_iter, tol, BLOCK_M: tl.constexpr, SCALING: tl.constexpr):
    """Log-domain Sinkhorn (SPEC §2) on a cost held in registers (scaled = C / eps): start g = 0,
    update f then g, stop when the L1 row error < tol or after max_iter. SCALING: stop instead
    when mean_j |exp(f_j/eps) - exp(f_j_prev/eps)| < tol over live rows (SPEC §8.4's rule, on
    the transposed problem). Returns f, g, iterations, error. Zero weights are padding."""
    inv_eps = 1.0 / eps
    live_m = a > 0
    live_n = s > 0
    log_a = tl.where(live_m, tl.log(tl.where(live_m, a, 1.0)), NEG_INF)  # log 0 = -inf, quietly
    log_s = tl.where(live_n, tl.log(tl.where(live_n, s, 1.0)), NEG_INF)
    f = tl.zeros([BLOCK_M], dtype=tl.float32)
    g = tl.where(live_n, 0.0, NEG_INF)
    lse_rows = _lse(tl.where(live_n[None, :], g[None, :] * inv_eps - scaled, NEG_INF), 1)
    err = tl.sum(tl.zeros([BLOCK_M], dtype=tl.float32), 0) + float("inf")
    it = 0
    rows = tl.sum(live_m.to(tl.float32), 0)
    while (it < max_iter) & (err >= tol):
        f_prev = f
        f = tl.where(live_m, eps * (log_a - lse_rows), NEG_INF)
        lse_cols = _lse(tl.where(live_m[:, None], f[:, None] * inv_eps - scaled, NEG_INF), 0)
        g = tl.where(live_n, eps * (log_s - lse_cols), NEG_INF)
        it += 1
        # The next row pass's LSE gives this iterate's row sums: sum_i T_ji = exp(f_j/eps + LSE_j).
        lse_rows = _lse(tl.where(live_n[None, :], g[None, :] * inv_eps - scaled, NEG_INF), 1)
        if SCALING:
            change = tl.abs(tl.exp(f * inv_eps) - tl.exp(f_prev * inv_eps))
            err = tl.sum(tl.where(live_m, change, 0.0), 0) / rows
        else:
            err = tl.sum(tl.where(live_m, tl.abs(tl.exp(f * inv_eps + lse_rows) - a), 0.0), 0)
    return f, g, it, err



@triton.jit
def _sweep(COST, A, FS, g, live_n, ld_n, log_s, rn, cb, ab, f_old, f_new, M, LDC, eps,
           BLOCK_N: tl.constexpr, ROWS: tl.constexpr, SCALING: tl.constexpr):
    """One Sinkhorn iteration over row chunks of the workspace: f_new from g (row LSE), and the
    g that follows from f_new (online column LSE). Also returns the row error of (f_old, g) and
    (SCALING) the summed change |exp(f_new/eps) - exp(f_old/eps)| over live rows. ld_n: the
    padded row (rn < LDC), loaded whole for 128-bit loads; live_n masks its padding out."""
    inv_eps = 1.0 / eps
    top = tl.full([BLOCK_N], NEG_INF, tl.float32)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    err = tl.sum(tl.zeros([ROWS], dtype=tl.float32), 0)
    change = err
    for r0 in range(0, M, ROWS):
        rm = r0 + tl.arange(0, ROWS)
        in_m = rm < M
        a = tl.load(A + ab + rm, mask=in_m, other=0.0)
        live_m = a > 0
        c = tl.load((COST + cb + rm.to(tl.int64) * LDC)[:, None] + rn[None, :],
                    mask=in_m[:, None] & ld_n[None, :], other=0.0)
        lse = _lse(tl.where(live_n[None, :], (g[None, :] - c) * inv_eps, NEG_INF), 1)
        old = tl.load(FS + f_old + rm, mask=in_m, other=0.0)
        err += tl.sum(tl.where(live_m, tl.abs(tl.exp(old * inv_eps + lse) - a), 0.0), 0)
        f = tl.where(live_m, eps * (tl.log(tl.where(live_m, a, 1.0)) - lse), NEG_INF)
        if SCALING:
            moved = tl.abs(tl.exp(f * inv_eps) - tl.exp(old * inv_eps))
            change += tl.sum(tl.where(live_m, moved, 0.0), 0)
        tl.store(FS + f_new + rm, f, mask=in_m)
        top, total = _online_lse(top, total, tl.where(live_m[:, None], (f[:, None] - c) * inv_eps,
                                                      NEG_INF), 0)
    return tl.where(live_n, eps * (log_s - (top + tl.log(total))), NEG_INF), err, change


@triton.jit(do_not_specialize=["M", "N", "LDQ", "fs_len", "max_iter"])
def _solve_kernel(COST, A, S, FS, F, G, ITERS, ERR, M, N, LDQ, fs_len, eps, max_iter, tol,
                  RESIDENT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  ROWS: tl.constexpr, SCALING: tl.constexpr, C_ALIGN: tl.constexpr):
    """Sinkhorn of one problem per program on the fp32 cost C [M,N] (workspace, row stride
    LDQ * C_ALIGN, cost_kernels.py), stopping on its own (SPEC §2; SCALING: on the mean change
    of exp(f/eps), see _solve). Resident: the BLOCK_M x BLOCK_N tile in registers. Sweep: row
    chunks of ROWS x BLOCK_N; FS [2, fs_len] per problem holds f of the current and the next
    iterate (zero-initialised)."""
    LDC = LDQ * C_ALIGN
    b = tl.program_id(0).to(tl.int64)
    rn = tl.arange(0, BLOCK_N)
    in_n = rn < N
    ld_n = rn < LDC
    s = tl.load(S + b * N + rn, mask=in_n, other=0.0)
    live_n = s > 0
    cb = b * M * LDC
    if RESIDENT:
        rm = tl.arange(0, BLOCK_M)
        in_m = rm < M
        a = tl.load(A + b * M + rm, mask=in_m, other=0.0)
        cost = tl.load((COST + cb + rm.to(tl.int64) * LDC)[:, None] + rn[None, :],
                       mask=in_m[:, None] & ld_n[None, :], other=0.0)
        f, g, it, err = _solve(cost * (1.0 / eps), a, s, eps, max_iter, tol, BLOCK_M, SCALING)
        tl.store(F + b * M + rm, f, mask=in_m)
    else:
        log_s = tl.where(live_n, tl.log(tl.where(live_n, s, 1.0)), NEG_INF)
        g = tl.where(live_n, 0.0, NEG_INF)
        here = b * 2 * fs_len  # f of the current iterate; `there` receives the next
        there = here + fs_len
        it = 0
        err = tl.sum(tl.zeros([ROWS], dtype=tl.float32), 0) + float("inf")
        running = 1
        rows = tl.sum(tl.zeros([ROWS], dtype=tl.float32), 0)
        if SCALING:
            for r0 in range(0, M, ROWS):
                rm = r0 + tl.arange(0, ROWS)
                rows += tl.sum((tl.load(A + b * M + rm, mask=rm < M, other=0.0) > 0).to(tl.float32), 0)
        while running != 0:
            g_next, err_cur, change = _sweep(COST, A, FS, g, live_n, ld_n, log_s, rn, cb, b * M,
                                             here, there, M, LDC, eps, BLOCK_N, ROWS, SCALING)
            tl.debug_barrier()  # this pass's f stores before the next pass's loads
            if SCALING:  # the pass is iteration it + 1; its change decides (SPEC §8.4)
                g = g_next
                here, there = there, here
                it += 1
                err = change / rows
                if (err < tol) | (it >= max_iter):
                    running = 0
            elif ((it > 0) & (err_cur < tol)) | (it >= max_iter):
                running = 0
                if it > 0:
                    err = err_cur
            else:
                g = g_next
                here, there = there, here
                it += 1
        for r0 in range(0, M, ROWS):
            rm = r0 + tl.arange(0, ROWS)
            tl.store(F + b * M + rm, tl.load(FS + here + rm, mask=rm < M), mask=rm < M)
    tl.store(G + b * N + rn, g, mask=in_n)
    tl.store(ITERS + b, it.to(tl.int64))
    tl.store(ERR + b, err)


# ---- grid kernels (stream passes, statistics, fold) -------------------------------------------

@triton.jit
def _online_lse(top, total, z, axis: tl.constexpr):
    """One tile of a running log-sum-exp along `axis`: LSE = top + log(total). Entries and running
    maxima of -inf contribute 0 (no inf - inf)."""
    new_top = tl.maximum(top, tl.max(z, axis))
    grown = tl.sum(tl.where(z > NEG_INF, tl.exp(z - tl.expand_dims(new_top, axis)), 0.0), axis)
    return new_top, total * tl.where(top > NEG_INF, tl.exp(top - new_top), 0.0) + grown


@triton.jit(do_not_specialize=["M", "N", "LDQ"])
def _row_pass(COST, A, F, G, LSE, ERRPART, ACTIVE, M, N, LDQ, eps,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALING: tl.constexpr,
              C_ALIGN: tl.constexpr):
    """LSE_i((g_i - C_ji)/eps) for a tile of rows (online over column tiles), and (not SCALING)
    their share of the current potentials' row-marginal error, stored in ERRPART [B, row tiles]
    (summed in a fixed order by _bookkeeping: no atomics, the same bits every run)."""
    LDC = LDQ * C_ALIGN
    b = tl.program_id(0).to(tl.int64)
    if tl.load(ACTIVE + b) != 0:
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        in_m = rm < M
        rows = COST + b * M * LDC + rm.to(tl.int64) * LDC
        inv_eps = 1.0 / eps
        top = tl.full([BLOCK_M], NEG_INF, tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            in_n = rn < N
            c = tl.load(rows[:, None] + rn[None, :], mask=in_m[:, None] & (rn < LDC)[None, :],
                        other=0.0)
            g = tl.load(G + b * N + rn, mask=in_n, other=NEG_INF)
            z = tl.where(in_n[None, :], (g[None, :] - c) * inv_eps, NEG_INF)
            top, total = _online_lse(top, total, z, 1)
        lse = top + tl.log(total)
        tl.store(LSE + b * M + rm, lse, mask=in_m)
        if not SCALING:
            a = tl.load(A + b * M + rm, mask=in_m, other=0.0)
            f = tl.load(F + b * M + rm, mask=in_m, other=0.0)
            share = tl.sum(tl.where(a > 0, tl.abs(tl.exp(f * inv_eps + lse) - a), 0.0), 0)
            tl.store(ERRPART + b * tl.num_programs(1) + tl.program_id(1), share)


@triton.jit(do_not_specialize=["TILES", "max_iter"])
def _bookkeeping(ERRPART, ERR, ITERS, ACTIVE, ROWS, TILES, max_iter, tol,
                 SCALING: tl.constexpr, BLOCK_T: tl.constexpr):
    """Not SCALING, after a row pass: stop a problem whose current potentials meet tol (or that
    has done max_iter iterations); otherwise count the iteration the column pass is about to
    make. SCALING, after a column pass: count it; stop once the mean change of exp(f/eps) over
    the ROWS live rows < tol, or after max_iter. The error is the sum of the pass's ERRPART
    [B, TILES], in one order whatever order the pass's programs ran in."""
    b = tl.program_id(0).to(tl.int64)
    if tl.load(ACTIVE + b) != 0:
        it = tl.load(ITERS + b)
        parts = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, TILES, BLOCK_T):
            rt = t0 + tl.arange(0, BLOCK_T)
            parts += tl.load(ERRPART + b * TILES + rt, mask=rt < TILES, other=0.0)
        err = tl.sum(parts, 0)
        if SCALING:
            it += 1
            err = err / tl.load(ROWS + b)
            tl.store(ITERS + b, it)
            if (err < tol) | (it >= max_iter):
                tl.store(ACTIVE + b, 0)
        elif ((it > 0) & (err < tol)) | (it >= max_iter):
            tl.store(ACTIVE + b, 0)
        else:
            tl.store(ITERS + b, it + 1)
        tl.store(ERR + b, err)


@triton.jit(do_not_specialize=["M", "N", "LDQ"])
def _col_pass(COST, A, S, LSE, F, G, ERRPART, ACTIVE, M, N, LDQ, eps,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALING: tl.constexpr,
              C_ALIGN: tl.constexpr):
    """f_j = eps log a_j - eps LSE_j (from the row pass), then g for a tile of columns. The first
    column tile also writes f (and, SCALING, sum_j |exp(f_j/eps) - exp(f_old_j/eps)| to
    ERRPART [B, 1])."""
    LDC = LDQ * C_ALIGN
    b = tl.program_id(0).to(tl.int64)
    if tl.load(ACTIVE + b) != 0:
        pn = tl.program_id(1)
        rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = rn < N
        inv_eps = 1.0 / eps
        top = tl.full([BLOCK_N], NEG_INF, tl.float32)
        total = tl.zeros([BLOCK_N], dtype=tl.float32)
        change = tl.sum(total, 0)
        for m0 in range(0, M, BLOCK_M):
            rm = m0 + tl.arange(0, BLOCK_M)
            in_m = rm < M
            a = tl.load(A + b * M + rm, mask=in_m, other=0.0)
            lse = tl.load(LSE + b * M + rm, mask=in_m, other=0.0)
            f = tl.where(a > 0, eps * (tl.log(tl.where(a > 0, a, 1.0)) - lse), NEG_INF)
            if pn == 0:
                if SCALING:
                    old = tl.load(F + b * M + rm, mask=in_m, other=0.0)
                    moved = tl.abs(tl.exp(f * inv_eps) - tl.exp(old * inv_eps))
                    change += tl.sum(tl.where(a > 0, moved, 0.0), 0)
                tl.store(F + b * M + rm, f, mask=in_m)
            c = tl.load((COST + b * M * LDC + rm.to(tl.int64) * LDC)[:, None] + rn[None, :],
                        mask=in_m[:, None] & (rn < LDC)[None, :], other=0.0)
            z = tl.where((a > 0)[:, None], (f[:, None] - c) * inv_eps, NEG_INF)
            top, total = _online_lse(top, total, z, 0)
        s = tl.load(S + b * N + rn, mask=in_n, other=0.0)
        g = tl.where(s > 0, eps * (tl.log(tl.where(s > 0, s, 1.0)) - (top + tl.log(total))), NEG_INF)
        tl.store(G + b * N + rn, g, mask=in_n)
        if SCALING:
            if pn == 0:
                tl.store(ERRPART + b, change)


@triton.jit(do_not_specialize=["M", "N", "LDQ"])
def _column_stats(COST, F, G, COLUMN, CONF, DIST, M, N, LDQ, eps,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, C_ALIGN: tl.constexpr):
    """Per source: plan column sum and confidence q_i = max_j T_ji / sum_j T_ji; and the
    tile's share of the distance sum T*C in DIST [B, column tiles] (the launcher sums them in a
    fixed order: no atomics)."""
    LDC = LDQ * C_ALIGN
    b = tl.program_id(0).to(tl.int64)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = rn < N
    g = tl.load(G + b * N + rn, mask=in_n, other=NEG_INF)
    inv_eps = 1.0 / eps
    column = tl.zeros([BLOCK_N], dtype=tl.float32)
    best = tl.zeros([BLOCK_N], dtype=tl.float32)
    dist = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        in_m = rm < M
        f = tl.load(F + b * M + rm, mask=in_m, other=NEG_INF)
        c = tl.load((COST + b * M * LDC + rm.to(tl.int64) * LDC)[:, None] + rn[None, :],
                    mask=in_m[:, None] & (rn < LDC)[None, :], other=0.0)
        live = (f > NEG_INF)[:, None] & (g > NEG_INF)[None, :]
        plan = tl.where(live, tl.exp((f[:, None] + g[None, :] - c) * inv_eps), 0.0)
        column += tl.sum(plan, 0)
        best = tl.maximum(best, tl.max(plan, 0))
        dist += tl.sum(plan * c, 0)
    ok = (g > NEG_INF) & (column > 0)
    tl.store(COLUMN + b * N + rn, column, mask=in_n)
    tl.store(CONF + b * N + rn, tl.where(ok, best / tl.where(ok, column, 1.0), 0.0), mask=in_n)
    tl.store(DIST + b * tl.num_programs(1) + tl.program_id(1), tl.sum(dist, 0))


@triton.jit(do_not_specialize=["M", "N", "DQ", "LDQ"])
def _fold(X, Y, COST, F, G, SCALE, TOK, MASS, SIZES, CARRIED, M, N, DQ, LDQ, eps, lam,
          HAS_SIZES: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D_ALIGN: tl.constexpr,
          C_ALIGN: tl.constexpr):
    """tokens_j = (x_j + lam sum_i W_ji y_i) / (1 + lam sum_i W_ji), W_ji = T_ji * scale_i, for a
    tile of anchors and of features, streaming over sources. TOK may be X (each program reads
    its tile before writing it). HAS_SIZES: also CARRIED_j = sum_i W_ji SIZES_i (clip steps).
    D = DQ * D_ALIGN, the workspace's row stride LDQ * C_ALIGN (cost_kernels.py)."""
    D = DQ * D_ALIGN
    LDC = LDQ * C_ALIGN
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_m = rm < M
    in_d = rd < D
    inv_eps = 1.0 / eps
    f = tl.load(F + b * M + rm, mask=in_m, other=NEG_INF)
    c_rows = COST + b * M * LDC + rm.to(tl.int64) * LDC
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    carried = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        in_n = rn < N
        g = tl.load(G + b * N + rn, mask=in_n, other=NEG_INF)
        scale = tl.load(SCALE + b * N + rn, mask=in_n, other=0.0)
        c = tl.load(c_rows[:, None] + rn[None, :], mask=in_m[:, None] & (rn < LDC)[None, :],
                    other=0.0)
        live = (f > NEG_INF)[:, None] & (g > NEG_INF)[None, :]
        weight = tl.where(live, tl.exp((f[:, None] + g[None, :] - c) * inv_eps), 0.0) * scale[None, :]
        mass += tl.sum(weight, 1)
        if HAS_SIZES:
            size = tl.load(SIZES + b * N + rn, mask=in_n, other=0.0)
            carried += tl.sum(weight * size[None, :], 1)
        yt = tl.load((Y + b * N * D + rn.to(tl.int64) * D)[:, None] + rd[None, :],
                     mask=in_n[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        if TF32:
            acc = tl.dot(weight, yt, acc, input_precision="tf32")
        else:
            acc = tl.dot(weight, yt, acc, input_precision="ieee")
    x_at = (b * M * D + rm.to(tl.int64) * D)[:, None] + rd[None, :]
    xt = tl.load(X + x_at, mask=in_m[:, None] & in_d[None, :], other=0.0).to(tl.float32)
    out = (xt + lam * acc) / (1.0 + lam * mass)[:, None]
    tl.store(TOK + x_at, out.to(TOK.dtype.element_ty), mask=in_m[:, None] & in_d[None, :])
    if tl.program_id(2) == 0:
        tl.store(MASS + b * M + rm, mass, mask=in_m)
        if HAS_SIZES:
            tl.store(CARRIED + b * M + rm, carried, mask=in_m)


# ---- launchers ---------------------------------------------------------------------------------

STREAM_M, STREAM_N, STREAM_D = 32, 64, 64
BOOKKEEPING_TILES = 128  # error shares summed per step of _bookkeeping's fixed-order loop
FOLD_N = 32  # sources per fold step: fp32 weights and features [32 x 64] stay unspilled
RESIDENT_MAX = 64 * 64   # padded entries held in registers by one program (8 warps)
SWEEP_ELEMS = 2048        # entries of one row chunk of the sweep (8-16 per thread)
SWEEP_MAX_N = 4096        # widest padded row the sweep holds (its column LSE state in registers)
# Warps of the sweep per padded row width, chosen with the compile gate: ptxas caps registers
# unevenly by width (4 warps spill at 256 and 4096 wide on sm_90; with 128-bit loads, 4 warps
# spill at 64 wide on sm_90 with Triton 3.6 and get an outlined shuffle's stack frame at 16).
SWEEP_WARPS = {16: 8, 64: 8, 256: 8, 4096: 8}
# Resident tiles whose 4 warps get that outlined shuffle (sm_80, 128-bit loads; gate).
RESIDENT_WARPS = {(16, 128): 8}
PATHS = ("auto", "resident", "sweep", "stream")


def solve_path(m: int, n: int, path: str = "auto") -> str:
    """Which solve kernel serves an M x N problem: "resident" (one program, registers),
    "sweep" (one program, row chunks of the workspace) or "stream" (a grid per pass)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    bm, bn = next_pow2(m), next_pow2(n)
    if path == "resident" and bm * bn > RESIDENT_MAX:
        raise ValueError(f"path='resident' holds at most {RESIDENT_MAX} padded entries, got {bm} x {bn}")
    if path == "sweep" and bn > SWEEP_MAX_N:
        raise ValueError(f"path='sweep' holds rows of at most {SWEEP_MAX_N} sources, got {bn}")
    if path != "auto":
        return path
    if bm * bn <= RESIDENT_MAX:
        return "resident"
    return "sweep" if bn <= SWEEP_MAX_N else "stream"


def _solve_streaming(cost32, a, s, eps, max_iter, tol, scaling=False):
    """cost32 [B,M,N] fp32 workspace -> f, g, iterations, error (fp32), no host sync.
    scaling: stop on the mean change of exp(f/eps) (see _solve)."""
    b, m, n = cost32.shape
    dev = cost32.device
    ldq, c_align = row_stride(cost32)
    f = torch.zeros(b, m, dtype=torch.float32, device=dev)
    g = torch.where(s > 0, 0.0, float("-inf")).to(torch.float32).contiguous()
    lse = torch.empty(b, m, dtype=torch.float32, device=dev)
    # The pass's per-tile error shares (the row tiles', or SCALING the one column pass's).
    tiles = 1 if scaling else triton.cdiv(m, STREAM_M)
    err_part = torch.zeros(b, tiles, dtype=torch.float32, device=dev)
    error = torch.full((b,), float("inf"), dtype=torch.float32, device=dev)
    iterations = torch.zeros(b, dtype=torch.int64, device=dev)
    active = torch.ones(b, dtype=torch.int32, device=dev)
    live_rows = (a > 0).sum(1).to(torch.float32)
    rows, cols = (b, triton.cdiv(m, STREAM_M)), (b, triton.cdiv(n, STREAM_N))
    row_pass = functools.partial(launch, _row_pass, rows, cost32, a, f, g, lse, err_part, active,
                                 m, n, ldq, float(eps), BLOCK_M=STREAM_M, BLOCK_N=STREAM_N,
                                 SCALING=scaling, C_ALIGN=c_align, num_warps=4)
    col_pass = functools.partial(launch, _col_pass, cols, cost32, a, s, lse, f, g, err_part,
                                 active, m, n, ldq, float(eps), BLOCK_M=STREAM_M,
                                 BLOCK_N=STREAM_N, SCALING=scaling, C_ALIGN=c_align, num_warps=4)
    bookkeeping = functools.partial(launch, _bookkeeping, (b,), err_part, error, iterations,
                                    active, live_rows, tiles, int(max_iter), float(tol),
                                    SCALING=scaling, BLOCK_T=BOOKKEEPING_TILES, num_warps=1)
    for k in range(max_iter + (0 if scaling else 1)):
        row_pass()
        if scaling:  # the iteration completes with the column pass, which measures the change
            col_pass()
            bookkeeping()
        else:  # the row pass measures the previous iterate's row error
            bookkeeping()
            if k < max_iter:
                col_pass()
    return f, g, iterations, error


def _solve_problems(cost32, a, s, eps, max_iter, tol, path="auto", stop="marginal"):
    """f, g, iterations, error (fp32) of the problems on the fp32 cost workspace [B,M,N].

    stop="scaling" (SPEC §8.4: g then f, stop on the mean change of exp(g/eps)) is the
    marginal-order iteration of the transposed problem (anchors and sources swapped, starting
    from f = 0 on the anchors), stopped on its rows' change: one transposed copy of the
    workspace, the same kernels."""
    if stop == "scaling":
        g, f, iterations, error = _solve_rows(as_workspace(cost32.transpose(1, 2)), s, a, eps,
                                              max_iter, tol, path, scaling=True)
        return f, g, iterations, error
    return _solve_rows(cost32, a, s, eps, max_iter, tol, path, scaling=False)


def _solve_rows(cost32, a, s, eps, max_iter, tol, path, scaling):
    """The solve kernels on the workspace [B,M,N], f (rows) then g each iteration; stopped on the
    row error, or (scaling) on the rows' mean change of exp(f/eps)."""
    b, m, n = cost32.shape
    route = solve_path(m, n, path)
    if route == "stream":
        return _solve_streaming(cost32, a, s, eps, max_iter, tol, scaling)
    dev = cost32.device
    bm, bn = next_pow2(m), next_pow2(n)
    f = torch.empty(b, m, dtype=torch.float32, device=dev)
    g = torch.empty(b, n, dtype=torch.float32, device=dev)
    iterations = torch.empty(b, dtype=torch.int64, device=dev)
    error = torch.empty(b, dtype=torch.float32, device=dev)
    if route == "resident":  # ~16 fp32 of the tile per thread (8 warps at 64 x 64)
        workspace, rows, warps = f, 1, RESIDENT_WARPS.get((bm, bn), max(4, bm * bn // 512))
        if scaling and bm * bn == RESIDENT_MAX and bm > bn:
            warps *= 2  # the previous f it keeps spills tall tiles at 8 warps on sm_80 (gate)
    else:  # BLOCK_M unused: one compiled sweep per row width
        workspace = torch.zeros(b, 2, m, dtype=torch.float32, device=dev)
        rows, warps, bm = max(1, SWEEP_ELEMS // bn), SWEEP_WARPS.get(bn, 4), 16
    ldq, c_align = row_stride(cost32)
    launch(_solve_kernel, (b,), cost32, a, s, workspace, f, g, iterations, error, m, n, ldq, m,
           float(eps), int(max_iter), float(tol), RESIDENT=route == "resident", BLOCK_M=bm,
           BLOCK_N=bn, ROWS=rows, SCALING=scaling, C_ALIGN=c_align, num_warps=warps)
    return f, g, iterations, error


def _statistics(cost32, f, g, eps):
    """Per source: plan column sum and confidence; per problem: distance sum T*C (fp32), the
    column tiles' shares summed by one torch reduction (a fixed order, unlike atomics)."""
    b, m, n = cost32.shape
    column = torch.empty(b, n, dtype=torch.float32, device=f.device)
    confidence = torch.empty(b, n, dtype=torch.float32, device=f.device)
    tiles = triton.cdiv(n, STREAM_N)
    shares = torch.empty(b, tiles, dtype=torch.float32, device=f.device)
    ldq, c_align = row_stride(cost32)
    launch(_column_stats, (b, tiles), cost32, f, g, column, confidence, shares, m, n, ldq,
           float(eps), BLOCK_M=STREAM_M, BLOCK_N=STREAM_N, C_ALIGN=c_align, num_warps=4)
    return column, confidence, shares.sum(1)


def _fold_into(x, y, cost32, f, g, scale, out, eps, lam, sizes=None):
    """out = (x + lam W y) / (1 + lam W 1), W = T scale (out may be x); returns mass [B,M] fp32
    and, with sizes [B,N], the carried sizes W sizes [B,M]."""
    b, m, d = x.shape
    n = y.shape[1]
    mass = torch.empty(b, m, dtype=torch.float32, device=x.device)
    carried = torch.empty(b, m, dtype=torch.float32, device=x.device) if sizes is not None else mass
    _, tf32 = dot_flags(x.dtype)
    grid = (b, triton.cdiv(m, STREAM_M), triton.cdiv(d, STREAM_D))
    # x, y and out: one dtype, rows of d, aligned to 4 elements at most: 16-byte fp16 rows make
    # ptxas spill the fold with Triton 3.6 (gate); its fp32 cost tiles still load 128 bits.
    dq, d_align = aligned(d, x.element_size(), most=4)
    ldq, c_align = row_stride(cost32)
    launch(_fold, grid, x, y, cost32, f, g, scale.contiguous(), out, mass,
           mass if sizes is None else sizes, carried, m, n, dq, ldq, float(eps), float(lam),
           HAS_SIZES=sizes is not None, TF32=tf32, BLOCK_M=STREAM_M, BLOCK_N=FOLD_N,
           BLOCK_D=STREAM_D, D_ALIGN=d_align, C_ALIGN=c_align, num_warps=4)
    return mass, carried


def sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol, stop="marginal",
             path="auto"):
    """Same contract and outputs as torch.ops.aot.sinkhorn (inputs validated; fp16, bf16 or fp32:
    aot_kernels.gpu._guarded hands float64 to the torch backend)."""
    b, m, n = cost.shape
    a, s = composite.marginals(anchor_weight, source_weight, b, m, n, torch.float32, cost.device)
    f, g, iterations, error = _solve_problems(as_workspace(cost), a.contiguous(),
                                              s.contiguous(), eps, max_iter, tol, path, stop)
    out = cost.dtype
    return f.to(out), g.to(out), iterations, error.to(out)


def sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps, lam, max_iter, tol,
                       tau=None, keep=None, anchor_pos=None, source_pos=None, spatial=0.0,
                       stop="marginal", nn_blend=0.0, keep_quantile=None, shift_min=False,
                       path="auto"):
    """Same contract and outputs as torch.ops.aot.sinkhorn_aggregate (inputs validated). SPEC
    §8's options: the spatial term is added to the fp32 workspace by its own kernel, the shift
    and the nearest anchors are reductions over it, stop="scaling" solves the transposed
    workspace, the blend is one scatter and one batched product after the fold."""
    x, y = anchors.contiguous(), sources.contiguous()
    b, m, _ = x.shape
    n = y.shape[1]
    a, s = composite.marginals(anchor_weight, source_weight, b, m, n, torch.float32, x.device)
    a, s = a.contiguous(), s.contiguous()
    cost32 = cost_workspace(x, y)
    nearest = composite.nearest_anchor(cost32, a) if nn_blend else None  # cosine part only
    if spatial:
        add_spatial_cost(cost32, anchor_pos, source_pos, spatial)
    if shift_min:
        cost32 -= composite.cost_minimum(cost32, a, s)
    f, g, iterations, error = _solve_problems(cost32, a, s, eps, max_iter, tol, path, stop)
    column, confidence, distance = _statistics(cost32, f, g, eps)
    if tau is None and keep is None and keep_quantile is None:  # intra (Eq. 11): W = T
        kept = torch.zeros(b, n, dtype=torch.bool, device=x.device)
        scale = torch.where(s > 0, 1.0, 0.0)
    else:
        kept = composite.select_kept(confidence, s, tau, keep, keep_quantile)
        scale = composite.merge_scale(column, s, kept)
    tokens = torch.empty_like(x)
    mass, _ = _fold_into(x, y, cost32, f, g, scale, tokens, eps, lam)
    if nn_blend:
        average = composite.anchor_average(x.float(), y.float(), nearest, s)
        tokens = ((1.0 - nn_blend) * tokens.float() + nn_blend * average).to(x.dtype)
    out = x.dtype
    return (tokens, mass.to(out), confidence.to(out), kept, distance.to(out), iterations,
            f.to(out), g.to(out), error.to(out))


def clip_aggregate(frames, lengths, sizes, anchor_weight, eps, lam, max_iter, tol, tau=None,
                   keep=None, path="auto"):
    """Same contract and outputs as torch.ops.aot.clip_aggregate (inputs validated). Step l is
    one batched cost / solve / statistics / fold over the clips, the anchors folded in place
    (in the frames' dtype, like every op output); a clip past its length gets zero weights, so
    its anchors and sizes stay as they are and its padding frames never reach the result. No
    host synchronisation."""
    c, length, m, _ = frames.shape
    dev = frames.device
    anchors = frames[:, 0].contiguous().clone()
    out_sizes = sizes[:, 0].float().contiguous().clone()
    kept = torch.zeros(c, length, m, dtype=torch.bool, device=dev)
    per_step = torch.zeros(4, c, length, m, dtype=torch.float32, device=dev)  # q, f, g, error
    confidence, f_all, g_all = per_step[0], per_step[1], per_step[2]
    error = per_step[3, :, :, 0]
    iterations = torch.zeros(c, length, dtype=torch.int64, device=dev)
    # Anchors: their weights (or uniform probabilities); sources uniform, balanced to them.
    a, s = composite.marginals(anchor_weight, None, c, m, m, torch.float32, dev)
    a, s = a.contiguous(), s.contiguous()
    lengths = lengths.to(dev)
    no_keep = torch.zeros(c, dtype=torch.int64, device=dev)
    for step in range(1, length):
        live = (step < lengths).view(c, 1)
        source = torch.where(live.view(c, 1, 1), frames[:, step], anchors).contiguous()
        cost32 = cost_workspace(anchors, source)
        f, g, it, err = _solve_problems(cost32, a, s, eps, max_iter, tol, path)
        column, conf, _ = _statistics(cost32, f, g, eps)
        if tau is not None:
            chosen = composite.select_kept(conf, s, tau=tau)
        else:
            chosen = composite.select_kept(conf, s, keep=no_keep if keep is None else keep[:, step])
        chosen &= live
        scale = torch.where(live, composite.merge_scale(column, s, chosen), 0.0)
        merged = torch.where(live, sizes[:, step].float(), 0.0).contiguous()  # padding: anything
        mass, carried = _fold_into(anchors, source, cost32, f, g, scale, anchors, eps, lam,
                                   merged)
        out_sizes = composite.merged_sizes(out_sizes, mass, carried, lam)  # Eq. 16 (SPEC §9)
        kept[:, step] = chosen
        confidence[:, step] = torch.where(live, conf, 0.0)
        f_all[:, step] = torch.where(live, f, 0.0)
        g_all[:, step] = torch.where(live, g, 0.0)
        iterations[:, step] = torch.where(live.view(c), it, 0)
        error[:, step] = torch.where(live.view(c), err, 0.0)
    out = frames.dtype
    return (anchors, out_sizes.to(sizes.dtype), kept, confidence.to(out), f_all.to(out),
            g_all.to(out), iterations, error.to(out))
