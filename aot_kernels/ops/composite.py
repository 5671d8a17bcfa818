"""The "torch" backend: SPEC §1-3 and §5 in plain, batched PyTorch ops (log domain).

It is the fallback where the compiled extension is missing, the baseline of the benchmarks and a
second opinion in the tests. It differentiates by unrolling the iterations (autograd keeps every
iterate, so memory grows with max_iter); the compiled ops use implicit differentiation instead
(see implicit_grad.py). Inputs are assumed validated (validate.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_FLOOR = 1e-12  # F.normalize convention (SPEC §1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 are computed in fp32; fp32 and fp64 natively."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cosine_cost(x: torch.Tensor, y: torch.Tensor, x_pos=None, y_pos=None,
                spatial: float = 0.0) -> torch.Tensor:
    """C [B,M,N] = 1 - cos(x_j, y_i) for x [B,M,D], y [B,N,D], in the compute dtype, plus
    `spatial_cost` when spatial != 0."""
    cd = compute_dtype(x.dtype)
    xu = F.normalize(x.to(cd), dim=-1, eps=NORM_FLOOR)
    yu = F.normalize(y.to(cd), dim=-1, eps=NORM_FLOOR)
    cost = 1.0 - torch.bmm(xu, yu.transpose(1, 2))
    return cost if not spatial else cost + spatial_cost(x_pos, y_pos, spatial, cd)


def cosine_cost_op(x, y, x_pos=None, y_pos=None, spatial: float = 0.0) -> torch.Tensor:
    """Same contract as torch.ops.aot.cosine_cost, in plain torch: the cost in x's dtype."""
    return cosine_cost(x, y, x_pos, y_pos, spatial).to(x.dtype)


def spatial_cost(x_pos, y_pos, spatial: float, dtype) -> torch.Tensor:
    """spatial * |p_j - p_i|_2 [B,M,N] for positions [B,M,P], [B,N,P] (SPEC §8.4). Direct
    differences (cdist's matmul shortcut loses digits near 0)."""
    return spatial * torch.cdist(x_pos.to(dtype), y_pos.to(dtype),
                                 compute_mode="donot_use_mm_for_euclid_dist")


def nearest_anchor(semantic, a) -> torch.Tensor:
    """nn(i) [B,N]: the real anchor of lowest semantic cost (highest cosine) to source i, ties to
    the lower index (SPEC §8.5)."""
    key = torch.where((a > 0).unsqueeze(2), semantic, float("inf"))
    return key.argmin(dim=1)  # argmin returns the first of equal values


def anchor_average(x, y, nearest, s):
    """x_NN [B,M,D] = (x_j + sum_{nn(i)=j} y_i) / (1 + #{i: nn(i)=j}) over real sources i."""
    member = torch.zeros(x.shape[0], x.shape[1], y.shape[1], dtype=x.dtype, device=x.device)
    member.scatter_(1, nearest.unsqueeze(1), 1.0)
    member = member * (s > 0).unsqueeze(1)
    return (x + torch.bmm(member, y)) / (1.0 + member.sum(2)).unsqueeze(2)


def nearest_anchor_average(x, y, semantic, a, s):
    """x_NN of SPEC §8.5 from the semantic (cosine) cost: `anchor_average` at `nearest_anchor`."""
    return anchor_average(x, y, nearest_anchor(semantic, a), s)


def marginals(anchor_weight, source_weight, batch: int, m: int, n: int, dtype, device):
    """SPEC §2 marginals (a [B,M], s [B,N]): uniform probabilities when absent, sources rescaled
    to the anchors' total. Zero entries are padding."""
    a = (torch.full((batch, m), 1.0 / m, dtype=dtype, device=device)
         if anchor_weight is None else anchor_weight.to(dtype))
    s = (torch.full((batch, n), 1.0 / n, dtype=dtype, device=device)
         if source_weight is None else source_weight.to(dtype))
    return a, s * (a.sum(1, keepdim=True) / s.sum(1, keepdim=True))


def plan(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """T [B,M,N] = exp((f_j + g_i - C_ji)/eps); exactly 0 on padded rows/columns (f or g = -inf)."""
    return torch.exp((f.unsqueeze(2) + g.unsqueeze(1) - cost) / eps)


def row_error(transport: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """L1 row-marginal violation per problem (SPEC §2 stopping rule) -> [B]."""
    return (transport.sum(2) - a).abs().sum(1)


STOPS = ("marginal", "scaling")


def scaling_change(g_new, g_old, s, eps: float) -> torch.Tensor:
    """mean_i |r_i - r_i_prev| over real sources (s > 0), r = exp(g / eps): SPEC §8.4's test."""
    live = s > 0
    diff = torch.where(live, torch.exp(g_new / eps) - torch.exp(g_old / eps), 0.0).abs()
    return diff.sum(1) / live.sum(1)


def sinkhorn(cost, a, s, eps: float, max_iter: int, tol: float, stop: str = "marginal"):
    """Batched log-domain Sinkhorn with per-problem stopping.

    cost [B,M,N] (compute dtype), marginals a [B,M], s [B,N]. stop="marginal" (SPEC §2): f then
    g, stop once the L1 row error < tol. stop="scaling" (SPEC §8.4): g then f, stop once the
    source scaling vector exp(g/eps) changes by < tol on average (`scaling_change`). Returns
    f [B,M], g [B,N], iterations [B] (int64), error [B] (row error, or the last change). A
    stopped problem's potentials are frozen.
    """
    batch = cost.shape[0]
    log_a, log_s = a.log(), s.log()  # log 0 = -inf marks padding
    f = torch.where(a > 0, 0.0, float("-inf")).to(cost.dtype)
    g = torch.where(s > 0, 0.0, float("-inf")).to(cost.dtype)
    active = torch.ones(batch, dtype=torch.bool, device=cost.device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=cost.device)
    error = torch.full((batch,), float("inf"), dtype=cost.dtype, device=cost.device)
    f_step = lambda g_: eps * log_a - eps * torch.logsumexp((g_.unsqueeze(1) - cost) / eps, dim=2)  # noqa: E731
    g_step = lambda f_: eps * log_s - eps * torch.logsumexp((f_.unsqueeze(2) - cost) / eps, dim=1)  # noqa: E731
    for it in range(max_iter):
        if stop == "marginal":
            f_new = f_step(g)
            g_new = g_step(f_new)
        else:
            g_new = g_step(f)
            f_new = f_step(g_new)
        measure = tol > 0 or it == max_iter - 1
        if measure and stop == "scaling":
            err_new = scaling_change(g_new, g, s, eps).detach()
        f = torch.where(active.unsqueeze(1), f_new, f)
        g = torch.where(active.unsqueeze(1), g_new, g)
        iterations = iterations + active.to(torch.int64)
        if measure:
            if stop == "marginal":
                err_new = row_error(plan(cost, f, g, eps), a).detach()
            error = torch.where(active, err_new, error)
            active = active & ~(err_new < tol)
            if tol > 0 and not bool(active.any()):  # early exit only matters when stopping
                break
    return f, g, iterations, error


def sinkhorn_op(cost, anchor_weight, source_weight, eps: float, max_iter: int, tol: float,
                stop: str = "marginal"):
    """Same contract and outputs as torch.ops.aot.sinkhorn (weights, not marginals), in plain
    torch: f, g, error in the cost's dtype."""
    b, m, n = cost.shape
    cd = compute_dtype(cost.dtype)
    a, s = marginals(anchor_weight, source_weight, b, m, n, cd, cost.device)
    f, g, iterations, error = sinkhorn(cost.to(cd), a, s, eps, max_iter, tol, stop)
    return f.to(cost.dtype), g.to(cost.dtype), iterations, error.to(cost.dtype)


def confidence_of(transport: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """q_i = max_j p_ij with p_ij = T_ji / sum_j' T_j'i (SPEC §5); 0 on padded sources."""
    column = transport.sum(1)
    live = (s > 0) & (column > 0)
    return torch.where(live, transport.amax(1) / torch.where(live, column, 1.0), 0.0)


def select_kept(confidence, s, tau=None, keep=None, quantile=None) -> torch.Tensor:
    """Dynamic sources [B,N] bool: q < tau, or the `keep` lowest q (ties to the lower index), or
    q < the linear `quantile` of the real sources' q (numpy's default; SPEC §8.7). keep: one
    count, or a count per problem ([B] int tensor: fixed shapes, no host sync)."""
    valid = s > 0
    if tau is not None:
        return valid & (confidence < tau)
    if quantile is not None:
        ordered = torch.sort(torch.where(valid, confidence.detach(), float("inf")), dim=1).values
        count = valid.sum(1, keepdim=True).clamp_min(1)
        pos = (count - 1).to(ordered.dtype) * quantile
        lo = pos.floor().long()
        hi = torch.minimum(lo + 1, count - 1)
        low = ordered.gather(1, lo)
        cut = low + (ordered.gather(1, hi) - low) * (pos - lo)
        return valid & (confidence < cut)
    kept = torch.zeros_like(valid)
    per_problem = isinstance(keep, torch.Tensor)
    if not (per_problem or keep):
        return kept
    key = torch.where(valid, confidence.detach(), float("inf"))
    order = torch.sort(key, dim=1, stable=True).indices
    if per_problem:  # rank r is kept where r < keep[b]
        ranks = torch.arange(key.shape[1], device=key.device)
        return kept.scatter(1, order, ranks < keep.view(-1, 1))
    return kept.scatter(1, order[:, :keep], True)


def merge_scale(column, s, kept):
    """scale_i = 1 / sum_j T_ji on stable sources (so W = T scale holds p_ij, SPEC §5), 0 on
    kept and padded sources. column [B,N]: the plan's column sums."""
    stable = (s > 0) & ~kept & (column > 0)
    return torch.where(stable, 1.0 / torch.where(stable, column, 1.0), 0.0)


def merge_weights(transport, s, kept=None):
    """Aggregation weights W [B,M,N]: the plan itself in intra mode (kept None, Eq. 11); in
    inter mode (Eq. 15-16) W_ji = p_ij on stable sources, 0 on kept ones."""
    if kept is None:
        return transport
    return transport * merge_scale(transport.sum(1), s, kept).unsqueeze(1)


def fold(x, y, weight, lam: float):
    """tokens [B,M,D] = (x + lam W y) / (1 + lam W 1) and the received mass W 1 [B,M]."""
    mass = weight.sum(2)
    tokens = (x + lam * torch.bmm(weight, y)) / (1.0 + lam * mass).unsqueeze(2)
    return tokens, mass


def aggregate(x, y, transport, s, lam: float, kept=None):
    """Mass-normalised aggregation (`merge_weights`, then `fold`) -> tokens [B,M,D], mass [B,M]."""
    return fold(x, y, merge_weights(transport, s, kept), lam)


def aggregate_cost(x, y, a, s, anchor_pos=None, source_pos=None, spatial=0.0, shift_min=False):
    """(semantic, cost) [B,M,N] of sinkhorn_aggregate: the cosine cost, plus the spatial term,
    minus (shift_min) its minimum over real (anchor, source) pairs (SPEC §8.4, §8.7)."""
    semantic = cosine_cost(x, y)
    cost = semantic if not spatial else semantic + spatial_cost(anchor_pos, source_pos, spatial,
                                                                semantic.dtype)
    return semantic, (cost - cost_minimum(cost, a, s) if shift_min else cost)


def cost_minimum(cost, a, s) -> torch.Tensor:
    """[B,1,1]: each problem's smallest cost over real (anchor, source) pairs (SPEC §8.7)."""
    live = (a > 0).unsqueeze(2) & (s > 0).unsqueeze(1)
    return torch.where(live, cost, float("inf")).amin((1, 2), keepdim=True)


def sinkhorn_aggregate(anchors, sources, anchor_weight, source_weight, eps, lam, max_iter, tol,
                       tau=None, keep=None, anchor_pos=None, source_pos=None, spatial=0.0,
                       stop="marginal", nn_blend=0.0, keep_quantile=None, shift_min=False):
    """Same contract and outputs as torch.ops.aot.sinkhorn_aggregate, in plain torch."""
    cd = compute_dtype(anchors.dtype)
    x, y = anchors.to(cd), sources.to(cd)
    batch, m, n = x.shape[0], x.shape[1], y.shape[1]
    a, s = marginals(anchor_weight, source_weight, batch, m, n, cd, x.device)
    semantic, cost = aggregate_cost(x, y, a, s, anchor_pos, source_pos, spatial, shift_min)
    f, g, iterations, error = sinkhorn(cost, a, s, eps, max_iter, tol, stop)
    transport = plan(cost, f, g, eps)
    confidence = confidence_of(transport, s)
    inter = tau is not None or keep is not None or keep_quantile is not None
    kept = (select_kept(confidence, s, tau, keep, keep_quantile) if inter
            else torch.zeros_like(s, dtype=torch.bool))
    tokens, mass = aggregate(x, y, transport, s, lam, kept if inter else None)
    if nn_blend:  # intra mode only (validated)
        tokens = (1.0 - nn_blend) * tokens + nn_blend * nearest_anchor_average(x, y, semantic, a, s)
    distance = (transport * cost).sum((1, 2))
    out = anchors.dtype
    return (tokens.to(out), mass.to(out), confidence.to(out), kept, distance.to(out), iterations,
            f.to(out), g.to(out), error.to(out))


def merged_sizes(sizes: torch.Tensor, mass: torch.Tensor, carried: torch.Tensor, lam: float
                 ) -> torch.Tensor:
    """Anchor sizes after one inter-frame step, Eq. 16 (SPEC §5, §9).

    Eq. 16, a_j' = (a_j + lam sum_i p_ij s_i) / (1 + lam P_j) over the merged (stable) tokens i,
    P_j = sum_i p_ij, weighs the anchor as one fully folded incoming token, whatever its size:
    its history counts as one incoming token of the incoming tokens' average size
    Sbar_j = sum_i p_ij S_i / P_j. So a_j' is the weighted mean with per-original weights
    (Sbar_j / S_a) W_a + sum_i lam p_ij (Sbar_j / S_i) W_i (W: each token's weights over the
    originals, summing to its size), of total S_j' = Sbar_j (1 + lam P_j) = Sbar_j + lam
    sum_i p_ij S_i. Where nothing merged into j (P_j = 0, or lam = 0: a' = a) its size stays.
    sizes [B,M]: S_a; mass [B,M]: P_j; carried [B,M]: sum_i p_ij S_i -> [B,M]."""
    merged = (mass > 0) & (lam > 0)
    average = carried / torch.where(merged, mass, torch.ones_like(mass))  # no 0/0, even in grads
    return torch.where(merged, average + lam * carried, sizes.to(average.dtype))


def clip_aggregate(frames, lengths, sizes, anchor_weight, eps, lam, max_iter, tol, tau=None,
                   keep=None, replay=None, trace=None):
    """Same contract and outputs as torch.ops.aot.clip_aggregate, in plain torch: one batched
    step over all clips per frame index; a clip past its length gets its anchors as sources
    and zero weights, so no step reads padding and nothing depends on values on the host
    (tol > 0 aside: the solver's early exit reads the errors).

    replay=(potentials, kept): instead of solving, step l takes its potentials from
    potentials(l, cost) -> (f, g) and its dynamic tokens from kept [C,L,M] (the op's backward
    replays a solved scan this way, with implicit gradients). trace: a list that receives each
    step's merge weights [C,M,M] (p_ij on the merged tokens, 0 on finished clips; reducers
    record a reduction's operator this way).
    """
    c, length, m, _ = frames.shape
    dev = frames.device
    cd = compute_dtype(frames.dtype)
    acc = torch.promote_types(cd, sizes.dtype)  # sizes are carried in at least their dtype
    x = frames.to(cd)
    a, s = marginals(anchor_weight, None, c, m, m, cd, dev)
    # Copies: with L = 1 no step runs, and outputs must not alias the inputs (op contract).
    anchors, anchor_sizes = x[:, 0].clone(), sizes[:, 0].to(acc).clone()
    zero = torch.zeros(c, m, dtype=cd, device=dev)
    kept = [torch.zeros(c, m, dtype=torch.bool, device=dev)]
    confidence, f_all, g_all = [zero], [zero], [zero]
    iterations = [torch.zeros(c, dtype=torch.int64, device=dev)]
    error = [zero[:, 0]]
    for step in range(1, length):
        live = (step < lengths).view(c, 1)
        y = torch.where(live.unsqueeze(2), x[:, step], anchors)
        # A finished clip solves a zero cost (plan a_j s_i, far from underflow): its masked
        # results stay finite, and so do their gradients (a 0 * inf here would be NaN there).
        cost = torch.where(live.unsqueeze(2), cosine_cost(anchors, y), 0.0)
        if replay is None:
            f, g, it, err = sinkhorn(cost, a, s, eps, max_iter, tol)
        else:
            (f, g), it, err = replay[0](step, cost), iterations[0], error[0]
        transport = plan(cost, f, g, eps)
        q = confidence_of(transport, s)
        if replay is not None:
            chosen = replay[1][:, step]
        elif tau is not None:
            chosen = select_kept(q, s, tau=tau)
        else:
            count = torch.zeros(c, dtype=torch.int64, device=dev) if keep is None else keep[:, step]
            chosen = select_kept(q, s, keep=count)
        chosen = chosen & live
        weight = merge_weights(transport, s, chosen) * live.unsqueeze(2)
        if trace is not None:
            trace.append(weight)
        tokens, mass = fold(anchors, y, weight, lam)
        anchors = torch.where(live.unsqueeze(2), tokens, anchors)
        merged = torch.where(live, sizes[:, step], 0.0).to(acc)  # padding may hold anything
        carried = torch.bmm(weight.to(acc), merged.unsqueeze(2)).squeeze(2)
        anchor_sizes = merged_sizes(anchor_sizes, mass.to(acc), carried, lam)  # SPEC §9
        kept.append(chosen)
        confidence.append(torch.where(live, q, 0.0))
        f_all.append(torch.where(live, f, 0.0))
        g_all.append(torch.where(live, g, 0.0))
        iterations.append(torch.where(live.view(c), it, 0))
        error.append(torch.where(live.view(c), err, 0.0))
    out = frames.dtype
    stack = lambda ts, dt: torch.stack(ts, 1).to(dt)  # noqa: E731
    return (anchors.to(out), anchor_sizes.to(sizes.dtype), stack(kept, torch.bool),
            stack(confidence, out), stack(f_all, out), stack(g_all, out),
            stack(iterations, torch.int64), stack(error, out))
