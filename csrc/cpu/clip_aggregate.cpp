// The inter-frame scan of whole clips (SPEC §5) on CPU: at step l the anchors of every clip still
// running absorb its frame l. Each step is the batched sinkhorn_aggregate pipeline over those
// clips (one GEMM for the costs, the Sinkhorn solves in parallel, plan_to_weights, one GEMM for
// the fold), so the hot loops are the same; the sizes merged into the anchors (SPEC §9) come out
// of the same pass over the plan (no second plan).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../aot_ops.h"
#include "common.h"
#include "solve.h"

namespace aot {

namespace {

// An integer tensor of the given shape, as contiguous int64 (CPU op: reading it is free).
at::Tensor counts(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK_TYPE(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), name,
                   " must be an integer tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  return t.to(at::kLong).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
clip_aggregate_cpu(const at::Tensor& frames, const at::Tensor& lengths, const at::Tensor& sizes,
                   const std::optional<at::Tensor>& anchor_weight, double eps, double lam,
                   int64_t max_iter, double tol, std::optional<double> tau,
                   const std::optional<at::Tensor>& keep) {
  TORCH_CHECK_TYPE(at::isFloatingType(frames.scalar_type()),
                   "frames must be a floating tensor, got ", frames.scalar_type());
  TORCH_CHECK_VALUE(frames.dim() == 4, "frames must have shape [C, L, M, D], got ", frames.sizes());
  const int64_t C = frames.size(0), L = frames.size(1), M = frames.size(2);
  TORCH_CHECK_VALUE(frames.numel() > 0, "frames is empty: shape ", frames.sizes());
  check_solver_args(eps, max_iter, tol);
  TORCH_CHECK_VALUE(lam >= 0 && std::isfinite(lam), "lam must be a finite number >= 0, got ", lam);
  TORCH_CHECK_VALUE(!(tau.has_value() && keep.has_value()), "give tau or keep, not both");
  if (tau.has_value())
    TORCH_CHECK_VALUE(*tau >= 0 && *tau <= 1, "tau must be in [0, 1], got ", *tau);
  TORCH_CHECK_TYPE(at::isFloatingType(sizes.scalar_type()), "sizes must be a floating tensor, got ",
                   sizes.scalar_type());
  TORCH_CHECK_VALUE(sizes.sizes() == at::IntArrayRef({C, L, M}), "sizes must have shape [", C,
                    ", ", L, ", ", M, "], got ", sizes.sizes());
  const auto len = counts(lengths, "lengths", {C});
  const int64_t* steps = len.const_data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK_VALUE(steps[c] >= 1 && steps[c] <= L, "lengths must be in [1, L=", L, "], got ",
                      steps[c]);
  at::Tensor quota;
  if (keep.has_value()) {
    quota = counts(*keep, "keep", {C, L});
    const int64_t* q = quota.const_data_ptr<int64_t>();
    for (int64_t k = 0; k < C * L; ++k)
      TORCH_CHECK_VALUE(q[k] >= 0 && q[k] <= M, "keep counts must be in [0, M=", M, "], got ", q[k]);
  }

  const auto dt = compute_dtype(frames.scalar_type());
  const auto acc = at::promote_types(dt, sizes.scalar_type());  // sizes carried in >= their dtype
  const auto opts = frames.options().dtype(dt);
  auto x = frames.to(dt).contiguous();
  auto [a, s] = marginals(anchor_weight, std::nullopt, C, M, M, dt, frames.device());
  auto anchors = x.select(1, 0).clone();
  auto anchor_sizes = sizes.select(1, 0).to(acc).clone();
  auto kept = at::zeros({C, L, M}, opts.dtype(at::kBool));
  auto confidence = at::zeros({C, L, M}, opts);
  auto f = at::zeros({C, L, M}, opts);
  auto g = at::zeros({C, L, M}, opts);
  auto iterations = at::zeros({C, L}, opts.dtype(at::kLong));
  auto error = at::zeros({C, L}, opts);
  const int64_t longest = *std::max_element(steps, steps + C);

  for (int64_t step = 1; step < longest; ++step) {
    std::vector<int64_t> live;
    for (int64_t c = 0; c < C; ++c)
      if (step < steps[c]) live.push_back(c);
    const int64_t B = static_cast<int64_t>(live.size());
    const bool all = B == C;  // the common case: no gathers
    const auto idx = all ? at::Tensor() : at::tensor(live, opts.dtype(at::kLong));
    auto pick = [&](const at::Tensor& t) { return all ? t : t.index_select(0, idx); };
    auto X = pick(anchors).contiguous();
    auto Y = pick(x.select(1, step));  // a strided view: the GEMMs read it in place
    auto a_b = pick(a).contiguous();
    auto s_b = pick(s).contiguous();
    auto source_sizes = pick(sizes.select(1, step)).to(dt).contiguous();

    auto cost = cosine_cost_compute(X, Y);  // GEMM 1 of 2
    auto W = at::empty({B, M, M}, opts);
    auto r = solve_batch(cost, a_b, s_b, eps, max_iter, tol, W);
    auto conf_b = at::empty({B, M}, opts);
    auto kept_b = at::empty({B, M}, opts.dtype(at::kBool));
    auto distance = at::empty({B}, opts);
    auto mass = at::empty({B, M}, opts);
    auto anchor_scale = at::empty({B, M, 1}, opts);
    auto carried = at::empty({B, M}, opts);
    const int64_t* q = quota.defined() ? quota.const_data_ptr<int64_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES(dt, "aot_clip_step", [&] {
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          // Inter mode always: a threshold, or this frame's keep count (0: merge every token).
          const std::optional<int64_t> count =
              tau.has_value() ? std::nullopt : std::optional<int64_t>(q ? q[live[b] * L + step] : 0);
          plan_to_weights<scalar_t>(
              W.data_ptr<scalar_t>() + b * M * M, cost.const_data_ptr<scalar_t>() + b * M * M,
              s_b.const_data_ptr<scalar_t>() + b * M, M, M, static_cast<scalar_t>(lam), tau, count,
              std::nullopt,
              conf_b.data_ptr<scalar_t>() + b * M, kept_b.data_ptr<bool>() + b * M,
              distance.data_ptr<scalar_t>() + b, mass.data_ptr<scalar_t>() + b * M,
              anchor_scale.data_ptr<scalar_t>() + b * M,
              source_sizes.const_data_ptr<scalar_t>() + b * M, carried.data_ptr<scalar_t>() + b * M);
        }
      });
    });
    auto tokens = X * anchor_scale;
    tokens.baddbmm_(W, Y);  // GEMM 2 of 2
    // Sizes (SPEC §9): Eq. 16 weighs the anchor as one merged token of their average size
    // Sbar_j = carried_j / P_j (P_j = mass_j = sum_i p_ij), so S_j' = Sbar_j (1 + lam P_j);
    // an anchor nothing merged into (P_j = 0, or lam = 0: its features stay) keeps its size.
    auto P = mass.to(acc), Q = carried.to(acc);
    auto merged = lam > 0 ? P.gt(0) : at::zeros_like(P, P.options().dtype(at::kBool));
    auto grown = at::where(merged, Q / at::where(merged, P, at::ones_like(P)) + lam * Q,
                           pick(anchor_sizes));
    if (all) {
      anchors = tokens;
      anchor_sizes = grown;
    } else {
      anchors.index_copy_(0, idx, tokens);
      anchor_sizes.index_copy_(0, idx, grown);
    }
    // Per-step outputs of the clips that ran; the others keep their zeros.
    auto put = [&](const at::Tensor& out, const at::Tensor& value) {
      auto view = out.select(1, step);
      if (all) view.copy_(value);
      else view.index_copy_(0, idx, value);
    };
    put(kept, kept_b);
    put(confidence, conf_b);
    put(f, r.f);
    put(g, r.g);
    put(iterations, r.iterations);
    put(error, r.error);
  }
  const auto out = frames.scalar_type();
  return {anchors.to(out), anchor_sizes.to(sizes.scalar_type()), kept, confidence.to(out),
          f.to(out), g.to(out), iterations, error.to(out)};
}

TORCH_LIBRARY_IMPL(aot, CPU, m) { m.impl("clip_aggregate", &clip_aggregate_cpu); }

}  // namespace aot
