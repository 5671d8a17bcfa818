// CPU entry points of the aot op family. Schemas live in schemas.cpp (TORCH_LIBRARY, once);
// kernels are registered for the CPU key next to their definitions.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace aot {

// C[b, j, i] = 1 - <x_j / max(|x_j|, 1e-12), y_i / max(|y_i|, 1e-12)>; x [B,M,D], y [B,N,D];
// plus spatial * |x_pos_j - y_pos_i|_2 with positions [B,M,P], [B,N,P] when spatial != 0.
at::Tensor cosine_cost_cpu(const at::Tensor& x, const at::Tensor& y,
                           const std::optional<at::Tensor>& x_pos,
                           const std::optional<at::Tensor>& y_pos, double spatial);

// Log-domain Sinkhorn on cost [B,M,N] -> (f [B,M], g [B,N], iterations [B] int64, error [B]).
// stop: "marginal" (f then g, L1 row error) or "scaling" (g then f, mean scaling change).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cpu(
    const at::Tensor& cost, const std::optional<at::Tensor>& anchor_weight,
    const std::optional<at::Tensor>& source_weight, double eps, int64_t max_iter, double tol,
    c10::string_view stop);

// Cost + Sinkhorn + aggregation -> (tokens [B,M,D], mass [B,M], confidence [B,N],
// kept [B,N] bool, distance [B], iterations [B] int64, f [B,M], g [B,N], error [B]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
sinkhorn_aggregate_cpu(const at::Tensor& anchors, const at::Tensor& sources,
                       const std::optional<at::Tensor>& anchor_weight,
                       const std::optional<at::Tensor>& source_weight, double eps, double lam,
                       int64_t max_iter, double tol, std::optional<double> tau,
                       std::optional<int64_t> keep, const std::optional<at::Tensor>& anchor_pos,
                       const std::optional<at::Tensor>& source_pos, double spatial,
                       c10::string_view stop, double nn_blend,
                       std::optional<double> keep_quantile, bool shift_min);

// Inter-frame scan of whole clips (SPEC §5): frames [C,L,M,D], lengths [C], sizes [C,L,M],
// anchor_weight [C,M], tau or keep [C,L] -> (anchors [C,M,D], sizes [C,M], kept [C,L,M] bool,
// confidence [C,L,M], f [C,L,M], g [C,L,M], iterations [C,L] int64, error [C,L]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
clip_aggregate_cpu(const at::Tensor& frames, const at::Tensor& lengths, const at::Tensor& sizes,
                   const std::optional<at::Tensor>& anchor_weight, double eps, double lam,
                   int64_t max_iter, double tol, std::optional<double> tau,
                   const std::optional<at::Tensor>& keep);

}  // namespace aot
