#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../aot_ops.h"
#include "common.h"

namespace aot {

void add_spatial_cost(at::Tensor& cost, const std::optional<at::Tensor>& x_pos,
                      const std::optional<at::Tensor>& y_pos, double spatial, const char* xname,
                      const char* yname) {
  const int64_t B = cost.size(0), M = cost.size(1), N = cost.size(2);
  const auto dt = cost.scalar_type();
  auto xp = check_positions(x_pos, xname, B, M, dt, cost.device());
  auto yp = check_positions(y_pos, yname, B, N, dt, cost.device());
  const int64_t P = xp.size(2);
  TORCH_CHECK_VALUE(yp.size(2) == P, xname, " and ", yname, " have different sizes: P=", P,
                    " and ", yp.size(2));
  AT_DISPATCH_FLOATING_TYPES(dt, "aot_spatial_cost", [&] {
    scalar_t* C = cost.data_ptr<scalar_t>();
    const scalar_t* X = xp.const_data_ptr<scalar_t>();
    const scalar_t* Y = yp.const_data_ptr<scalar_t>();
    const auto w = static_cast<scalar_t>(spatial);
    at::parallel_for(0, B * M, 16, [&](int64_t begin, int64_t end) {
      for (int64_t bj = begin; bj < end; ++bj) {
        const int64_t b = bj / M;
        const scalar_t* xj = X + bj * P;
        scalar_t* Cj = C + bj * N;
        for (int64_t i = 0; i < N; ++i) {
          const scalar_t* yi = Y + (b * N + i) * P;
          scalar_t d2 = 0;
          for (int64_t k = 0; k < P; ++k) d2 += (xj[k] - yi[k]) * (xj[k] - yi[k]);
          Cj[i] += w * std::sqrt(d2);
        }
      }
    });
  });
}

at::Tensor cosine_cost_cpu(const at::Tensor& x, const at::Tensor& y,
                           const std::optional<at::Tensor>& x_pos,
                           const std::optional<at::Tensor>& y_pos, double spatial) {
  check_pair(x, y, "x", "y");
  TORCH_CHECK_VALUE(x.scalar_type() == y.scalar_type(), "x and y must have the same dtype, got ",
                    x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(spatial) && spatial >= 0,
                    "spatial must be a finite number >= 0, got ", spatial);
  auto cost = cosine_cost_compute(x, y);
  if (spatial != 0) add_spatial_cost(cost, x_pos, y_pos, spatial, "x_pos", "y_pos");
  return cost.to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(aot, CPU, m) { m.impl("cosine_cost", &cosine_cost_cpu); }

}  // namespace aot
