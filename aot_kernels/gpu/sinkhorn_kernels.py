"""Triton Sinkhorn (SPEC §2) and fused cost + Sinkhorn + aggregation (SPEC §3, §5 step).

Two paths, one contract (the outputs of torch.ops.aot.sinkhorn / sinkhorn_aggregate):
- on chip (BLOCK_M x BLOCK_N <= ONCHIP_MAX, e.g. 256 x 256): one program per problem computes the
  cost with tl.dot, keeps it in registers for every iteration, stops on its own, and writes only
  the aggregated tokens, f, g and per-source statistics; the plan never reaches global memory.
- streaming (larger N, up to thousands): the cost goes to an fp32 workspace once, then each
  iteration is a row pass, a tiny bookkeeping pass and a column pass over tiles with an online
  log-sum-exp. Stopping is decided on the device (an `active` flag per problem), so the host
  launches max_iter rounds without ever synchronising.
Both use the error of the current potentials that the next row pass gives for free:
sum_i T_ji = exp(f_j / eps + LSE_i((g_i - C_ji) / eps)).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import composite
from .common import dot_flags, next_pow2
from .cost_kernels import cosine_cost, cosine_from_dot, dot_tile

ONCHIP_MAX = 256 * 256  # cost entries one program keeps in registers
NEG_INF = float("-inf")
MODE_SINKHORN, MODE_INTRA, MODE_TAU, MODE_KEEP = 0, 1, 2, 3


@triton.jit
def _lse(z, axis: tl.constexpr):
    """log-sum-exp along `axis` of z (-inf entries drop out; a row is never all -inf)."""
    top = tl.max(z, axis)
    return top + tl.log(tl.sum(tl.exp(z - tl.expand_dims(top, axis)), axis))


@triton.jit
def _solve(scaled, a, s, eps, max_iter, tol, BLOCK_M: tl.constexpr):
    """Log-domain Sinkhorn (SPEC §2) on a cost held in registers (scaled = C / eps): start g = 0,
    update f then g, stop when the L1 row error < tol or after max_iter. Returns f, g,
    iterations, error. Zero weights are padding (-inf potentials)."""
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
    while (it < max_iter) & (err >= tol):
        f = tl.where(live_m, eps * (log_a - lse_rows), NEG_INF)
        lse_cols = _lse(tl.where(live_m[:, None], f[:, None] * inv_eps - scaled, NEG_INF), 0)
        g = tl.where(live_n, eps * (log_s - lse_cols), NEG_INF)
        it += 1
        # The next row pass's LSE gives this iterate's row sums: sum_i T_ji = exp(f_j/eps + LSE_j).
        lse_rows = _lse(tl.where(live_n[None, :], g[None, :] * inv_eps - scaled, NEG_INF), 1)
        err = tl.sum(tl.where(live_m, tl.abs(tl.exp(f * inv_eps + lse_rows) - a), 0.0), 0)
    return f, g, it, err


@triton.jit
def _fold_weights(plan, live_n, rn, tau, keep, MODE: tl.constexpr):
    """From the plan [BM,BN]: confidence q_i = max_j T_ji / sum_j T_ji, the kept (dynamic)
    sources, and the folding weights W: T (intra, MODE 1), or p_ij on the stable sources
    (MODE 2: q < tau dynamic; MODE 3: the `keep` lowest q, ties to the lower index)."""
    column = tl.sum(plan, 0)
    ok = live_n & (column > 0)
    inv_col = tl.where(ok, 1.0 / tl.where(ok, column, 1.0), 0.0)
    confidence = tl.max(plan, 0) * inv_col
    if MODE == 1:
        weight = plan
        kept = rn < 0
    else:
        if MODE == 2:
            kept = live_n & (confidence < tau)
        else:
            qi = confidence[:, None]
            qk = confidence[None, :]
            before = ((qk < qi) | ((qk == qi) & (rn[None, :] < rn[:, None]))) & live_n[None, :]
            kept = live_n & (tl.sum(before.to(tl.int32), 1) < keep)
        weight = plan * tl.where(kept, 0.0, inv_col)[None, :]
    return weight, kept, confidence


@triton.jit
def _fused_kernel(X, Y, COST, A, S,
                  TOK, MASS, CONF, KEPT, DIST, ITERS, F, G, ERR,
                  M, N, D, eps, lam, max_iter, tol, tau, keep,
                  HAS_COST: tl.constexpr, MODE: tl.constexpr, NATIVE_DOT: tl.constexpr,
                  TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    in_m = rm < M
    in_n = rn < N
    # Marginals (fp32, already balanced by the launcher); zero weight = padding.
    a = tl.load(A + b * M + rm, mask=in_m, other=0.0)
    s = tl.load(S + b * N + rn, mask=in_n, other=0.0)
    live_m = a > 0
    live_n = s > 0
    if HAS_COST:
        cost = tl.load(COST + b * M * N + rm[:, None] * N + rn[None, :],
                       mask=in_m[:, None] & in_n[None, :], other=0.0).to(tl.float32)
    else:
        acc, xn, yn = dot_tile(X, Y, M, N, D, rm, rn, b * M * D, b * N * D,
                               NATIVE_DOT, TF32, BLOCK_M, BLOCK_N, BLOCK_D)
        cost = cosine_from_dot(acc, xn, yn)
    inv_eps = 1.0 / eps
    scaled = cost * inv_eps
    f, g, it, err = _solve(scaled, a, s, eps, max_iter, tol, BLOCK_M)
    tl.store(F + b * M + rm, f, mask=in_m)
    tl.store(G + b * N + rn, g, mask=in_n)
    tl.store(ITERS + b, it.to(tl.int64))
    tl.store(ERR + b, err)

    if MODE != 0:
        live = live_m[:, None] & live_n[None, :]
        plan = tl.where(live, tl.exp((f[:, None] + g[None, :]) * inv_eps - scaled), 0.0)
        tl.store(DIST + b, tl.sum(tl.sum(plan * cost, 1), 0))
        weight, kept, confidence = _fold_weights(plan, live_n, rn, tau, keep, MODE)
        tl.store(CONF + b * N + rn, confidence, mask=in_n)
        tl.store(KEPT + b * N + rn, kept.to(tl.int8), mask=in_n)
        mass = tl.sum(weight, 1)
        tl.store(MASS + b * M + rm, mass, mask=in_m)
        _fold_tokens(X, Y, TOK, b * M * D, b * N * D, b * M * D, weight, 1.0 + lam * mass, lam,
                     rm, rn, M, N, D, TF32, BLOCK_D)


@triton.jit
def _fold_tokens(X, Y, OUT, xb, yb, ob, weight, denom, lam, rm, rn, M, N, D,
                 TF32: tl.constexpr, BLOCK_D: tl.constexpr):
    """out_j = (x_j + lam sum_i W_ji y_i) / denom_j over D in tiles (OUT may be X: each tile is
    read before it is written)."""
    in_m = rm < M
    in_n = rn < N
    for d0 in range(0, D, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        in_d = rd < D
        yt = tl.load(Y + yb + rn[:, None] * D + rd[None, :],
                     mask=in_n[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        xt = tl.load(X + xb + rm[:, None] * D + rd[None, :],
                     mask=in_m[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        if TF32:
            folded = tl.dot(weight, yt, input_precision="tf32")
        else:
            folded = tl.dot(weight, yt, input_precision="ieee")
        out = (xt + lam * folded) / denom[:, None]
        tl.store(OUT + ob + rm[:, None] * D + rd[None, :], out.to(OUT.dtype.element_ty),
                 mask=in_m[:, None] & in_d[None, :])


@triton.jit
def _clip_kernel(FRAMES, SIZES, ANCH, ASIZE, LENGTHS, KEEP, AW, KEPT, CONF,
                 L, M, D, eps, lam, max_iter, tol, tau,
                 HAS_AW: tl.constexpr, MODE: tl.constexpr, NATIVE_DOT: tl.constexpr,
                 TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """One clip per program (SPEC §5): its anchors (ANCH, initialised to the first frame) absorb
    frames 1..length-1 in order, each step a fused cost + Sinkhorn + fold on chip. ANCH is
    updated in place; a barrier orders one step's stores before the next step's loads."""
    c = tl.program_id(0).to(tl.int64)
    rm = tl.arange(0, BLOCK_M)
    in_m = rm < M
    if HAS_AW:
        a = tl.load(AW + c * M + rm, mask=in_m, other=0.0)
    else:
        a = tl.where(in_m, 1.0 / M, 0.0)
    s = tl.where(in_m, tl.sum(a, 0) / M, 0.0)  # uniform sources, balanced to the anchors' total
    live = (a > 0)[:, None] & (s > 0)[None, :]
    inv_eps = 1.0 / eps
    sizes = tl.load(ASIZE + c * M + rm, mask=in_m, other=0.0)
    length = tl.load(LENGTHS + c)
    for step in range(1, L):
        if step < length:
            fb = (c * L + step) * M * D
            acc, xn, yn = dot_tile(ANCH, FRAMES, M, M, D, rm, rm, c * M * D, fb,
                                   NATIVE_DOT, TF32, BLOCK_M, BLOCK_M, BLOCK_D)
            cost = cosine_from_dot(acc, xn, yn)
            scaled = cost * inv_eps
            f, g, it, err = _solve(scaled, a, s, eps, max_iter, tol, BLOCK_M)
            plan = tl.where(live, tl.exp((f[:, None] + g[None, :]) * inv_eps - scaled), 0.0)
            if MODE == 3:
                count = tl.load(KEEP + c * L + step)
            else:
                count = 0
            weight, kept, confidence = _fold_weights(plan, s > 0, rm, tau, count, MODE)
            tl.store(KEPT + (c * L + step) * M + rm, kept.to(tl.int8), mask=in_m)
            tl.store(CONF + (c * L + step) * M + rm, confidence, mask=in_m)
            source_sizes = tl.load(SIZES + (c * L + step) * M + rm, mask=in_m, other=0.0)
            sizes += tl.sum(weight * source_sizes[None, :], 1)
            mass = tl.sum(weight, 1)
            _fold_tokens(ANCH, FRAMES, ANCH, c * M * D, fb, c * M * D, weight, 1.0 + lam * mass,
                         lam, rm, rm, M, M, D, TF32, BLOCK_D)
            tl.debug_barrier()
    tl.store(ASIZE + c * M + rm, sizes, mask=in_m)


# ---- streaming path ---------------------------------------------------------------------------

@triton.jit
def _online_lse(top, total, z, axis: tl.constexpr):
    """One tile of a running log-sum-exp along `axis`: LSE = top + log(total). Entries and running
    maxima of -inf contribute 0 (no inf - inf)."""
    new_top = tl.maximum(top, tl.max(z, axis))
    grown = tl.sum(tl.where(z > NEG_INF, tl.exp(z - tl.expand_dims(new_top, axis)), 0.0), axis)
    return new_top, total * tl.where(top > NEG_INF, tl.exp(top - new_top), 0.0) + grown


@triton.jit
def _row_pass(COST, A, F, G, LSE, ERRACC, ACTIVE, M, N, eps,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """LSE_i((g_i - C_ji)/eps) for a tile of rows (online over column tiles), and their share of
    the current potentials' row-marginal error."""
    b = tl.program_id(0).to(tl.int64)
    if tl.load(ACTIVE + b) != 0:
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        in_m = rm < M
        inv_eps = 1.0 / eps
        top = tl.full([BLOCK_M], NEG_INF, tl.float32)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            in_n = rn < N
            c = tl.load(COST + b * M * N + rm[:, None] * N + rn[None, :],
                        mask=in_m[:, None] & in_n[None, :], other=0.0)
            g = tl.load(G + b * N + rn, mask=in_n, other=NEG_INF)
            z = tl.where(in_n[None, :], (g[None, :] - c) * inv_eps, NEG_INF)
            top, total = _online_lse(top, total, z, 1)
        lse = top + tl.log(total)
        tl.store(LSE + b * M + rm, lse, mask=in_m)
        a = tl.load(A + b * M + rm, mask=in_m, other=0.0)
        f = tl.load(F + b * M + rm, mask=in_m, other=0.0)
        share = tl.sum(tl.where(a > 0, tl.abs(tl.exp(f * inv_eps + lse) - a), 0.0), 0)
        tl.atomic_add(ERRACC + b, share)


@triton.jit
def _bookkeeping(ERRACC, ERR, ITERS, ACTIVE, max_iter, tol):
    """After a row pass: stop a problem whose current potentials meet tol (or that has done
    max_iter iterations); otherwise count the iteration the column pass is about to make."""
    b = tl.program_id(0)
    if tl.load(ACTIVE + b) != 0:
        it = tl.load(ITERS + b)
        err = tl.load(ERRACC + b)
        tl.store(ERR + b, err)
        if ((it > 0) & (err < tol)) | (it >= max_iter):
            tl.store(ACTIVE + b, 0)
        else:
            tl.store(ITERS + b, it + 1)
        tl.store(ERRACC + b, 0.0)


@triton.jit
def _col_pass(COST, A, S, LSE, F, G, ACTIVE, M, N, eps,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """f_j = eps log a_j - eps LSE_j (from the row pass), then g for a tile of columns. The first
    column tile also writes f."""
    b = tl.program_id(0).to(tl.int64)
    if tl.load(ACTIVE + b) != 0:
        pn = tl.program_id(1)
        rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
        in_n = rn < N
        inv_eps = 1.0 / eps
        top = tl.full([BLOCK_N], NEG_INF, tl.float32)
        total = tl.zeros([BLOCK_N], dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            rm = m0 + tl.arange(0, BLOCK_M)
            in_m = rm < M
            a = tl.load(A + b * M + rm, mask=in_m, other=0.0)
            lse = tl.load(LSE + b * M + rm, mask=in_m, other=0.0)
            f = tl.where(a > 0, eps * (tl.log(tl.where(a > 0, a, 1.0)) - lse), NEG_INF)
            if pn == 0:
                tl.store(F + b * M + rm, f, mask=in_m)
            c = tl.load(COST + b * M * N + rm[:, None] * N + rn[None, :],
                        mask=in_m[:, None] & in_n[None, :], other=0.0)
            z = tl.where((a > 0)[:, None], (f[:, None] - c) * inv_eps, NEG_INF)
            top, total = _online_lse(top, total, z, 0)
        s = tl.load(S + b * N + rn, mask=in_n, other=0.0)
        g = tl.where(s > 0, eps * (tl.log(tl.where(s > 0, s, 1.0)) - (top + tl.log(total))), NEG_INF)
        tl.store(G + b * N + rn, g, mask=in_n)


@triton.jit
def _column_stats(COST, F, G, COLUMN, CONF, DIST, M, N, eps,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per source: plan column sum and confidence q_i = max_j T_ji / sum_j T_ji; and the
    distance sum T*C (atomically, over column tiles)."""
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
        c = tl.load(COST + b * M * N + rm[:, None] * N + rn[None, :],
                    mask=in_m[:, None] & in_n[None, :], other=0.0)
        live = (f > NEG_INF)[:, None] & (g > NEG_INF)[None, :]
        plan = tl.where(live, tl.exp((f[:, None] + g[None, :] - c) * inv_eps), 0.0)
        column += tl.sum(plan, 0)
        best = tl.maximum(best, tl.max(plan, 0))
        dist += tl.sum(plan * c, 0)
    ok = (g > NEG_INF) & (column > 0)
    tl.store(COLUMN + b * N + rn, column, mask=in_n)
    tl.store(CONF + b * N + rn, tl.where(ok, best / tl.where(ok, column, 1.0), 0.0), mask=in_n)
    tl.atomic_add(DIST + b, tl.sum(dist, 0))


@triton.jit
def _fold(X, Y, COST, F, G, SCALE, TOK, MASS, M, N, D, eps, lam,
          TF32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """tokens_j = (x_j + lam sum_i W_ji y_i) / (1 + lam sum_i W_ji), W_ji = T_ji * scale_i, for a
    tile of anchors and of features, streaming over sources."""
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_m = rm < M
    in_d = rd < D
    inv_eps = 1.0 / eps
    f = tl.load(F + b * M + rm, mask=in_m, other=NEG_INF)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mass = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        in_n = rn < N
        g = tl.load(G + b * N + rn, mask=in_n, other=NEG_INF)
        scale = tl.load(SCALE + b * N + rn, mask=in_n, other=0.0)
        c = tl.load(COST + b * M * N + rm[:, None] * N + rn[None, :],
                    mask=in_m[:, None] & in_n[None, :], other=0.0)
        live = (f > NEG_INF)[:, None] & (g > NEG_INF)[None, :]
        weight = tl.where(live, tl.exp((f[:, None] + g[None, :] - c) * inv_eps), 0.0) * scale[None, :]
        mass += tl.sum(weight, 1)
        yt = tl.load(Y + b * N * D + rn[:, None] * D + rd[None, :],
                     mask=in_n[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        if TF32:
            acc = tl.dot(weight, yt, acc, input_precision="tf32")
        else:
            acc = tl.dot(weight, yt, acc, input_precision="ieee")
    xt = tl.load(X + b * M * D + rm[:, None] * D + rd[None, :],
                 mask=in_m[:, None] & in_d[None, :], other=0.0).to(tl.float32)
    out = (xt + lam * acc) / (1.0 + lam * mass)[:, None]
    tl.store(TOK + b * M * D + rm[:, None] * D + rd[None, :], out.to(TOK.dtype.element_ty),
             mask=in_m[:, None] & in_d[None, :])
    if tl.program_id(2) == 0:
        tl.store(MASS + b * M + rm, mass, mask=in_m)


# ---- launchers ---------------------------------------------------------------------------------

STREAM_M, STREAM_N, STREAM_D = 32, 64, 64


def _warps(elements: int) -> int:
    return 4 if elements <= 64 * 64 else 8 if elements <= 128 * 128 else 16


def _fits_on_chip(m: int, n: int, onchip_max: int) -> bool:
    return next_pow2(m) * next_pow2(n) <= onchip_max


def _balanced(anchor_weight, source_weight, b, m, n, device):
    a, s = composite.marginals(anchor_weight, source_weight, b, m, n, torch.float32, device)
    return a.contiguous(), s.contiguous()


def _solve_streaming(cost32, a, s, eps, max_iter, tol):
    """cost32 [B,M,N] fp32 workspace -> f, g, iterations, error (fp32), no host sync."""
    b, m, n = cost32.shape
    dev = cost32.device
    f = torch.zeros(b, m, dtype=torch.float32, device=dev)
    g = torch.where(s > 0, 0.0, NEG_INF).to(torch.float32).contiguous()
    lse = torch.empty(b, m, dtype=torch.float32, device=dev)
    err_acc = torch.zeros(b, dtype=torch.float32, device=dev)
    error = torch.full((b,), float("inf"), dtype=torch.float32, device=dev)
    iterations = torch.zeros(b, dtype=torch.int64, device=dev)
    active = torch.ones(b, dtype=torch.int32, device=dev)
    rows, cols = (b, triton.cdiv(m, STREAM_M)), (b, triton.cdiv(n, STREAM_N))
    for k in range(max_iter + 1):
        _row_pass[rows](cost32, a, f, g, lse, err_acc, active, m, n, float(eps),
                        BLOCK_M=STREAM_M, BLOCK_N=STREAM_N, num_warps=4)
        _bookkeeping[(b,)](err_acc, error, iterations, active, int(max_iter), float(tol), num_warps=1)
        if k < max_iter:
            _col_pass[cols](cost32, a, s, lse, f, g, active, m, n, float(eps),
                            BLOCK_M=STREAM_M, BLOCK_N=STREAM_N, num_warps=4)
    return f, g, iterations, error


def sinkhorn(cost, anchor_weight, source_weight, eps, max_iter, tol, onchip_max=ONCHIP_MAX):
    """Same contract and outputs as torch.ops.aot.sinkhorn (inputs validated)."""
    if cost.dtype == torch.float64:  # fp64 stays exact on the torch path
        cd = torch.float64
        a, s = composite.marginals(anchor_weight, source_weight, *cost.shape, cd, cost.device)
        return composite.sinkhorn(cost, a, s, eps, max_iter, tol)
    b, m, n = cost.shape
    a, s = _balanced(anchor_weight, source_weight, b, m, n, cost.device)
    if _fits_on_chip(m, n, onchip_max):
        f = torch.empty(b, m, dtype=torch.float32, device=cost.device)
        g = torch.empty(b, n, dtype=torch.float32, device=cost.device)
        iterations = torch.empty(b, dtype=torch.int64, device=cost.device)
        error = torch.empty(b, dtype=torch.float32, device=cost.device)
        bm, bn = next_pow2(m), next_pow2(n)
        _fused_kernel[(b,)](cost, cost, cost.contiguous(), a, s, f, f, f, f, f, iterations, f, g,
                            error, m, n, 1, float(eps), 0.0, int(max_iter), float(tol), 0.0, 0,
                            HAS_COST=True, MODE=MODE_SINKHORN, NATIVE_DOT=False, TF32=False,
                            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=16, num_warps=_warps(bm * bn))
    else:
        f, g, iterations, error = _solve_streaming(cost.float().contiguous(), a, s, eps, max_iter, tol)
    out = cost.dtype
    return f.to(out), g.to(out), iterations, error.to(out)


def sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps, lam, max_iter, tol,
                       tau=None, keep=None, onchip_max=ONCHIP_MAX):
    """Same contract and outputs as torch.ops.aot.sinkhorn_aggregate (inputs validated)."""
    if anchors.dtype == torch.float64:
        return composite.sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps,
                                            lam, max_iter, tol, tau, keep)
    x, y = anchors.contiguous(), sources.contiguous()
    b, m, d = x.shape
    n = y.shape[1]
    dev = x.device
    a, s = _balanced(anchor_weight, source_weight, b, m, n, dev)
    mode = MODE_INTRA if tau is None and keep is None else MODE_TAU if tau is not None else MODE_KEEP
    native, tf32 = dot_flags(x.dtype)
    tokens = torch.empty_like(x)
    mass = torch.empty(b, m, dtype=torch.float32, device=dev)
    confidence = torch.empty(b, n, dtype=torch.float32, device=dev)
    distance = torch.zeros(b, dtype=torch.float32, device=dev)
    if _fits_on_chip(m, n, onchip_max):
        f = torch.empty(b, m, dtype=torch.float32, device=dev)
        g = torch.empty(b, n, dtype=torch.float32, device=dev)
        iterations = torch.empty(b, dtype=torch.int64, device=dev)
        error = torch.empty(b, dtype=torch.float32, device=dev)
        kept8 = torch.empty(b, n, dtype=torch.int8, device=dev)
        bm, bn = next_pow2(m), next_pow2(n)
        _fused_kernel[(b,)](x, y, x, a, s, tokens, mass, confidence, kept8, distance, iterations,
                            f, g, error, m, n, d, float(eps), float(lam), int(max_iter),
                            float(tol), 0.0 if tau is None else float(tau),
                            0 if keep is None else int(keep), HAS_COST=False, MODE=mode,
                            NATIVE_DOT=native, TF32=tf32, BLOCK_M=bm, BLOCK_N=bn,
                            BLOCK_D=min(64, next_pow2(d)), num_warps=_warps(bm * bn))
        kept = kept8.bool()
    else:
        cost32 = cosine_cost(x, y, out_dtype=torch.float32)
        f, g, iterations, error = _solve_streaming(cost32, a, s, eps, max_iter, tol)
        column = torch.empty(b, n, dtype=torch.float32, device=dev)
        _column_stats[(b, triton.cdiv(n, STREAM_N))](cost32, f, g, column, confidence, distance,
                                                     m, n, float(eps), BLOCK_M=STREAM_M,
                                                     BLOCK_N=STREAM_N, num_warps=4)
        if mode == MODE_INTRA:
            kept = torch.zeros(b, n, dtype=torch.bool, device=dev)
            scale = torch.ones(b, n, dtype=torch.float32, device=dev)
        else:
            kept = composite.select_kept(confidence, s, tau, keep)
            stable = (s > 0) & ~kept & (column > 0)
            scale = torch.where(stable, 1.0 / torch.where(stable, column, 1.0), 0.0)
        grid = (b, triton.cdiv(m, STREAM_M), triton.cdiv(d, STREAM_D))
        _fold[grid](x, y, cost32, f, g, scale.contiguous(), tokens, mass, m, n, d, float(eps),
                    float(lam), TF32=tf32, BLOCK_M=STREAM_M, BLOCK_N=STREAM_N, BLOCK_D=STREAM_D,
                    num_warps=4)
    out = x.dtype
    return (tokens, mass.to(out), confidence.to(out), kept, distance.to(out), iterations,
            f.to(out), g.to(out), error.to(out))


def clip_aggregate(frames, lengths, sizes, anchor_weight, eps, lam, max_iter, tol, tau, keep):
    """All clips at once, frames in order (see api.clip_aggregate; inputs validated, keep a
    [C,L] int64 tensor or None). fp64 is served by the step loop of the caller."""
    c, length, m, d = frames.shape
    frames = frames.contiguous()
    anchors = frames[:, 0].clone()
    out_sizes = sizes[:, 0].float().contiguous().clone()
    kept8 = torch.zeros(c, length, m, dtype=torch.int8, device=frames.device)
    confidence = torch.zeros(c, length, m, dtype=torch.float32, device=frames.device)
    native, tf32 = dot_flags(frames.dtype)
    bm = next_pow2(m)
    aw = None if anchor_weight is None else anchor_weight.float().contiguous()
    _clip_kernel[(c,)](frames, sizes.float().contiguous(), anchors, out_sizes,
                       lengths.to(torch.int64).contiguous(),
                       kept8 if keep is None else keep.to(torch.int64).contiguous(),
                       frames if aw is None else aw, kept8, confidence,
                       length, m, d, float(eps), float(lam), int(max_iter), float(tol),
                       0.0 if tau is None else float(tau), HAS_AW=aw is not None,
                       MODE=MODE_TAU if tau is not None else MODE_KEEP, NATIVE_DOT=native,
                       TF32=tf32, BLOCK_M=bm, BLOCK_D=min(64, next_pow2(d)),
                       num_warps=_warps(bm * bm))
    return anchors, out_sizes, kept8.bool(), confidence
