#include <torch/library.h>

#include "../aot_ops.h"
#include "common.h"

namespace aot {

at::Tensor cosine_cost_cpu(const at::Tensor& x, const at::Tensor& y) {
  check_pair(x, y, "x", "y");
  TORCH_CHECK_VALUE(x.scalar_type() == y.scalar_type(), "x and y must have the same dtype, got ",
                    x.scalar_type(), " and ", y.scalar_type());
  return cosine_cost_compute(x, y).to(x.scalar_type());
}

TORCH_LIBRARY_IMPL(aot, CPU, m) { m.impl("cosine_cost", &cosine_cost_cpu); }

}  // namespace aot
