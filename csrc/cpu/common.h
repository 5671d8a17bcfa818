// Shared input checks and small helpers of the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>

namespace aot {

// fp16/bf16 are computed in fp32 (SPEC §1); fp32 and fp64 natively.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_features(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must be a floating tensor (float16/bfloat16/float32/float64), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 3, name, " must have shape [B, rows, D], got rank ", t.dim());
}

inline void check_pair(const at::Tensor& x, const at::Tensor& y, const char* xn, const char* yn) {
  check_features(x, xn);
  check_features(y, yn);
  TORCH_CHECK_VALUE(x.device() == y.device(), xn, " and ", yn, " are on different devices");
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), "batch sizes differ: ", xn, " has ", x.size(0), ", ",
                    yn, " has ", y.size(0));
  TORCH_CHECK_VALUE(x.size(2) == y.size(2), "feature sizes differ: ", xn, " has D=", x.size(2),
                    ", ", yn, " has D=", y.size(2));
  TORCH_CHECK_VALUE(x.size(1) > 0, xn, " has no rows (M == 0)");
  TORCH_CHECK_VALUE(y.size(1) > 0, yn, " has no rows (N == 0)");
}

inline void check_solver_args(double eps, int64_t max_iter, double tol) {
  TORCH_CHECK_VALUE(eps > 0 && std::isfinite(eps), "eps must be a finite number > 0, got ", eps);
  TORCH_CHECK_VALUE(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK_VALUE(tol >= 0 && std::isfinite(tol), "tol must be a finite number >= 0, got ", tol);
}

// C = 1 - <x, y> / (max(|x|, 1e-12) max(|y|, 1e-12)) (the F.normalize convention) in the
// compute dtype: one batched GEMM on the raw features (no normalised copies of x and y), then
// three in-place passes over the much smaller C.
inline at::Tensor cosine_cost_compute(const at::Tensor& x, const at::Tensor& y) {
  const auto dt = compute_dtype(x.scalar_type());
  // Rows must be contiguous; batches may be strided (a frame of a [C,L,M,D] clip tensor): the
  // batched GEMM takes the batch stride as it is, so no copy.
  auto rows = [&](const at::Tensor& t) {
    auto c = t.to(dt);
    return c.stride(-1) == 1 && c.stride(-2) == c.size(-1) ? c : c.contiguous();
  };
  auto xc = rows(x);
  auto yc = rows(y);
  auto inv_x = at::linalg_vector_norm(xc, 2, {-1}, /*keepdim=*/true).clamp_min_(1e-12).reciprocal_();
  auto inv_y = at::linalg_vector_norm(yc, 2, {-1}, /*keepdim=*/true).clamp_min_(1e-12).reciprocal_();
  auto cost = at::bmm(xc, yc.transpose(1, 2));
  cost.mul_(inv_x).mul_(inv_y.transpose(1, 2)).neg_().add_(1.0);
  return cost;
}

// Positions [B, rows, P] for the spatial cost term: floating, on the features' device.
inline at::Tensor check_positions(const std::optional<at::Tensor>& pos, const char* name,
                                  int64_t batch, int64_t rows, at::ScalarType dt,
                                  const at::Device& device) {
  TORCH_CHECK_VALUE(pos.has_value(), name, " is required when spatial != 0");
  const auto& t = *pos;
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == batch && t.size(1) == rows && t.size(2) > 0,
                    name, " must have shape [", batch, ", ", rows, ", P], got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, name, " is on ", t.device(), ", expected ", device);
  auto c = t.to(dt).contiguous();
  TORCH_CHECK_VALUE(at::isfinite(c).all().item<bool>(), name, " has NaN or inf entries");
  return c;
}

// cost [B,M,N] += spatial * |x_pos_j - y_pos_i|_2 (SPEC §8.4), in place: no [B,M,N] bias tensor.
void add_spatial_cost(at::Tensor& cost, const std::optional<at::Tensor>& x_pos,
                      const std::optional<at::Tensor>& y_pos, double spatial, const char* xname,
                      const char* yname);

// "marginal" -> false, "scaling" -> true; anything else is a ValueError.
inline bool scaling_stop(c10::string_view stop) {
  TORCH_CHECK_VALUE(stop == "marginal" || stop == "scaling",
                    "stop must be 'marginal' or 'scaling', got '", std::string(stop), "'");
  return stop == "scaling";
}

// SPEC §2 marginals in dtype `dt`: uniform probabilities when absent, sources rescaled to the
// anchors' total; zero weight = padding. Returns (a [B,M], s [B,N]).
std::pair<at::Tensor, at::Tensor> marginals(const std::optional<at::Tensor>& anchor_weight,
                                            const std::optional<at::Tensor>& source_weight,
                                            int64_t B, int64_t M, int64_t N, at::ScalarType dt,
                                            const at::Device& device);

}  // namespace aot
