// C++ test of the aot op library without Python: invariants a wrong kernel would break, called
// both directly and through the dispatcher (which also proves the schemas registered).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "../aot_ops.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

int main() {
  torch::manual_seed(0);
  const int64_t B = 4, M = 9, N = 13, D = 6;
  const double eps = 0.1;
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto x = torch::randn({B, M, D}, opts), y = torch::randn({B, N, D}, opts);

  // Cosine cost in [0, 2], and equal to 1 - cos for one pair computed by hand.
  auto C = aot::cosine_cost_cpu(x, y, std::nullopt, std::nullopt, 0.0);
  const double by_hand =
      1.0 - (x[1][2] * y[1][3]).sum().item<double>() / (x[1][2].norm() * y[1][3].norm()).item<double>();
  expect(std::abs(C[1][2][3].item<double>() - by_hand) < 1e-12, "cosine_cost matches 1 - cos");
  expect(C.min().item<double>() >= 0 && C.max().item<double>() <= 2, "cosine_cost in [0, 2]");

  // Converged Sinkhorn: plan has the uniform marginals and reports the error it stopped at.
  auto [f, g, iters, err] = aot::sinkhorn_cpu(C, std::nullopt, std::nullopt, eps, 1000, 1e-10, "marginal");
  auto T = torch::exp((f.unsqueeze(2) + g.unsqueeze(1) - C) / eps);
  expect(torch::allclose(T.sum(1), torch::full({B, N}, 1.0 / N, opts), 0, 1e-12),
         "column marginals exact after each iteration");
  expect(torch::allclose(T.sum(2), torch::full({B, M}, 1.0 / M, opts), 0, 1e-9),
         "row marginals converged");
  expect((err < 1e-10).all().item<bool>() && (iters < 1000).all().item<bool>(),
         "tol stops each problem early");

  // Padding by zero weight: a padded source gets no mass and changes nothing else.
  auto sw = torch::ones({B, N}, opts);
  sw.index_put_({torch::indexing::Slice(), N - 1}, 0.0);
  const auto none = std::optional<at::Tensor>();
  auto padded = aot::sinkhorn_aggregate_cpu(x, y, std::nullopt, sw, eps, 1.0, 100, 0.0,
                                            std::nullopt, std::nullopt, none, none, 0.0,
                                            "marginal", 0.0, std::nullopt, false);
  auto trimmed = aot::sinkhorn_aggregate_cpu(
      x, y.index({torch::indexing::Slice(), torch::indexing::Slice(0, N - 1)}), std::nullopt,
      std::nullopt, eps, 1.0, 100, 0.0, std::nullopt, std::nullopt, none, none, 0.0, "marginal",
      0.0, std::nullopt, false);
  expect(torch::allclose(std::get<0>(padded), std::get<0>(trimmed), 0, 1e-12),
         "zero source weight == source removed");

  // Through the dispatcher, keep-count mode keeps exactly `keep` sources per problem.
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("aot::sinkhorn_aggregate", "")
                .typed<decltype(aot::sinkhorn_aggregate_cpu)>();
  auto out = op.call(x, y, std::nullopt, std::nullopt, eps, 1.0, 100, 0.0, std::nullopt, 5, none,
                     none, 0.0, "marginal", 0.0, std::nullopt, false);
  expect((std::get<3>(out).sum(1) == 5).all().item<bool>(), "keep=5 keeps 5 sources");

  // lam = 0 returns the anchors unchanged.
  auto same = op.call(x, y, std::nullopt, std::nullopt, eps, 0.0, 100, 0.0, std::nullopt,
                      std::nullopt, none, none, 0.0, "marginal", 0.0, std::nullopt, false);
  expect(torch::equal(std::get<0>(same), x), "lam = 0 returns the anchors");

  // A two-frame clip is one inter-mode step: clip_aggregate == sinkhorn_aggregate(keep) on
  // (frame 0, frame 1); a one-frame clip (length 1) keeps its anchors and sizes.
  auto frames = torch::randn({2, 2, M, D}, opts);
  auto lengths = torch::tensor({2, 1}, torch::kLong);
  auto keep = torch::tensor({0, 3, 0, 0}, torch::kLong).view({2, 2});
  auto clip_op = c10::Dispatcher::singleton().findSchemaOrThrow("aot::clip_aggregate", "")
                     .typed<decltype(aot::clip_aggregate_cpu)>();
  auto clip = clip_op.call(frames, lengths, torch::ones({2, 2, M}, opts), std::nullopt, eps, 1.0,
                           100, 0.0, std::nullopt, keep);
  auto step = aot::sinkhorn_aggregate_cpu(frames.select(1, 0).narrow(0, 0, 1),
                                          frames.select(1, 1).narrow(0, 0, 1), std::nullopt,
                                          std::nullopt, eps, 1.0, 100, 0.0, std::nullopt, 3, none,
                                          none, 0.0, "marginal", 0.0, std::nullopt, false);
  expect(torch::allclose(std::get<0>(clip)[0], std::get<0>(step)[0], 0, 1e-12) &&
             torch::equal(std::get<2>(clip)[0][1], std::get<3>(step)[0]),
         "a two-frame clip is one keep-count step");
  expect(torch::equal(std::get<0>(clip)[1], frames[1][0]) &&
             torch::equal(std::get<1>(clip)[1], torch::ones({M}, opts)),
         "a one-frame clip is left as it is");
  // Sizes (SPEC §9): unit-size tokens merged with shares p_ij make an anchor of size
  // 1 + sum_i p_ij (the step's mass), so with unit sizes nothing is lost: the anchors hold the
  // M - 3 merged tokens, the 3 kept ones stay outside.
  expect(torch::allclose(std::get<1>(clip)[0], 1.0 + std::get<1>(step)[0], 0, 1e-12),
         "unit-size clip sizes are 1 + received shares");
  const double total = std::get<1>(clip)[0].sum().item<double>() + 3.0;
  expect(std::abs(total - 2.0 * M) < 1e-9, "unit clip sizes conserved");

  // Bad input is a ValueError, not a crash.
  bool threw = false;
  try {
    aot::sinkhorn_cpu(C, std::nullopt, std::nullopt, -1.0, 10, 0.0, "marginal");
  } catch (const c10::ValueError&) {
    threw = true;
  }
  expect(threw, "eps <= 0 raises ValueError");

  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
