// The batched pieces of the CPU ops (csrc/cpu/sinkhorn.cpp), shared by sinkhorn_aggregate and
// clip_aggregate so that both run the same hot loops.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace aot {

struct Solved {
  at::Tensor f, g, iterations, error;  // [B,M], [B,N], [B] int64, [B]
};

// Log-domain Sinkhorn of every problem of cost [B,M,N] (compute dtype, contiguous), marginals
// a [B,M], s [B,N], in parallel over problems; writes the plan into `plan` ([B,M,N], same dtype)
// when it is defined. scaling: SPEC §8.4's order and stopping rule instead of SPEC §2's.
Solved solve_batch(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& s, double eps,
                   int64_t max_iter, double tol, const at::Tensor& plan, bool scaling = false);

// One problem, in place on its plan W [M,N]: confidence [N], kept [N], distance, mass [M],
// anchor_scale [M] = 1/(1 + lam mass), and W overwritten by the aggregation weights scaled per
// row by lam anchor_scale (tokens = x anchor_scale + W y). Intra mode when tau, keep and
// keep_quantile are empty. With source_sizes [N], carried [M] receives sum_i W_ji size_i (before row scaling).
template <typename T>
void plan_to_weights(T* W, const T* C, const T* s, int64_t M, int64_t N, T lam,
                     std::optional<double> tau, std::optional<int64_t> keep,
                     std::optional<double> keep_quantile, T* confidence, bool* kept, T* distance,
                     T* mass, T* anchor_scale, const T* source_sizes, T* carried);

}  // namespace aot
