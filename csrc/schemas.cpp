// The aot op family, defined once. Kernels: csrc/cpu (CPU), aot_kernels/triton (CUDA);
// fake kernels and autograd are registered from Python (aot_kernels/ops/library.py).
#include <torch/library.h>

TORCH_LIBRARY(aot, m) {
  // spatial: weight of the grid distance |p_j - p_i| added to the cosine cost (SPEC §8.4).
  // stop: "marginal" (SPEC §2) or "scaling" (SPEC §8.4). nn_blend: SPEC §8.5 (intra mode).
  // keep_quantile: SPEC §8.7's dynamic-token rule (inter mode). shift_min: cost minus its minimum.
  m.def(
      "cosine_cost(Tensor x, Tensor y, Tensor? x_pos=None, Tensor? y_pos=None, "
      "float spatial=0.0) -> Tensor");
  m.def(
      "sinkhorn(Tensor cost, Tensor? anchor_weight=None, Tensor? source_weight=None, "
      "float eps=0.1, int max_iter=100, float tol=0.0, str stop=\"marginal\") "
      "-> (Tensor f, Tensor g, Tensor iterations, Tensor error)");
  m.def(
      "sinkhorn_aggregate(Tensor anchors, Tensor sources, Tensor? anchor_weight=None, "
      "Tensor? source_weight=None, float eps=0.1, float lam=1.0, int max_iter=100, "
      "float tol=0.0, float? tau=None, int? keep=None, Tensor? anchor_pos=None, "
      "Tensor? source_pos=None, float spatial=0.0, str stop=\"marginal\", float nn_blend=0.0, "
      "float? keep_quantile=None, bool shift_min=False) "
      "-> (Tensor tokens, Tensor mass, Tensor confidence, Tensor kept, Tensor distance, "
      "Tensor iterations, Tensor f, Tensor g, Tensor error)");
  m.def(
      "clip_aggregate(Tensor frames, Tensor lengths, Tensor sizes, Tensor? anchor_weight=None, "
      "float eps=0.1, float lam=1.0, int max_iter=100, float tol=0.0, float? tau=None, "
      "Tensor? keep=None) "
      "-> (Tensor anchors, Tensor sizes, Tensor kept, Tensor confidence, Tensor f, Tensor g, "
      "Tensor iterations, Tensor error)");
}
