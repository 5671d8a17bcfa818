// Batched entropic OT (SPEC §2) and the fused cost + Sinkhorn + aggregation (SPEC §3, §5) on CPU.
//
// Schedule: stabilised scaling form. The plan is kept as T_ji = u_j K_ji v_i with
// K_ji = exp((fbar_j + gbar_i - C_ji)/eps), so one iteration is two mat-vecs (no exp). The log
// potentials are f = fbar + eps log u, g = gbar + eps log v, and the iterates are the log-domain
// ones of SPEC §2 in exact arithmetic. Whenever a scaling would leave the safe range (a row or
// column of K underflowing, as with eps = 0.01 where exp(-C/eps) < FLT_MIN), the half-step is done
// in the log domain instead and the scalings are absorbed into fbar/gbar. The first f half-step is
// always a log-domain one (g starts at 0 and K is not formed yet).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../aot_ops.h"
#include "common.h"

namespace aot {

std::pair<at::Tensor, at::Tensor> marginals(const std::optional<at::Tensor>& anchor_weight,
                                            const std::optional<at::Tensor>& source_weight,
                                            int64_t B, int64_t M, int64_t N, at::ScalarType dt,
                                            const at::Device& device) {
  auto opts = at::TensorOptions().dtype(dt).device(device);
  auto take = [&](const std::optional<at::Tensor>& w, int64_t len, const char* name) {
    if (!w.has_value()) return at::full({B, len}, 1.0 / static_cast<double>(len), opts);
    const auto& t = *w;
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                     " must be a floating tensor, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == B && t.size(1) == len, name,
                      " must have shape [", B, ", ", len, "], got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == device, name, " is on ", t.device(), ", expected ", device);
    auto c = t.to(dt).contiguous();
    TORCH_CHECK_VALUE(at::isfinite(c).all().item<bool>(), name, " has NaN or inf entries");
    TORCH_CHECK_VALUE((c >= 0).all().item<bool>(), name, " has negative entries");
    TORCH_CHECK_VALUE((c.sum(1) > 0).all().item<bool>(), name,
                      " is all zero for some problem (every entry padded)");
    return c;
  };
  auto a = take(anchor_weight, M, "anchor_weight");
  auto s = take(source_weight, N, "source_weight");
  // Balanced OT: sources rescaled to the anchors' total (SPEC §2).
  s = (s * (a.sum(1, true) / s.sum(1, true))).contiguous();
  return {a, s};
}

namespace {

template <typename T>
struct Limits {
  // Smallest mat-vec result we divide by: keeps a/kv finite with room to spare.
  static constexpr T tiny = std::numeric_limits<T>::min() * T(1e6);
  // Scalings beyond [1/big, big] are absorbed into the log potentials.
  static constexpr T big = T(1e8);
};

template <typename T>
struct SolveOut {
  int64_t iterations;
  T error;
};

// One problem: cost C [M,N] row-major, marginals a [M], s [N]. Writes f [M], g [N] and, when
// plan != nullptr, T [M,N]. Workspace K [M*N] is the caller's (one per thread).
template <typename T>
SolveOut<T> solve_problem(const T* C, const T* a, const T* s, int64_t M, int64_t N, T eps,
                          int64_t max_iter, T tol, T* f, T* g, T* plan, std::vector<T>& K) {
  const T inf = std::numeric_limits<T>::infinity();
  const T inv_eps = T(1) / eps;
  K.resize(static_cast<size_t>(M * N));
  std::vector<T> fbar(M), gbar(N), u(M), v(N), kv(M), ktu(N), colmax(N), colsum(N);
  std::vector<char> row_ok(M), col_ok(N);
  for (int64_t j = 0; j < M; ++j) row_ok[j] = a[j] > 0;
  for (int64_t i = 0; i < N; ++i) col_ok[i] = s[i] > 0;
  // g starts at 0 on real sources; padding is -inf everywhere so it never contributes.
  for (int64_t i = 0; i < N; ++i) {
    gbar[i] = col_ok[i] ? T(0) : -inf;
    v[i] = col_ok[i] ? T(1) : T(0);
  }
  for (int64_t j = 0; j < M; ++j) {
    fbar[j] = -inf;
    u[j] = 0;
  }

  // Fold the scalings into the log potentials: fbar += eps log u, gbar += eps log v.
  auto absorb_u = [&]() {
    for (int64_t j = 0; j < M; ++j)
      if (row_ok[j]) {
        fbar[j] += eps * std::log(u[j]);
        u[j] = 1;
      }
  };
  auto absorb_v = [&]() {
    for (int64_t i = 0; i < N; ++i)
      if (col_ok[i]) {
        gbar[i] += eps * std::log(v[i]);
        v[i] = 1;
      }
  };
  // Log-domain f half-step: f_j = eps log a_j - eps LSE_i((g_i - C_ji)/eps); K rebuilt with one
  // exp per entry as K_ji = a_j exp(z_ji - max_j) / sum_j.
  auto log_f_step = [&]() {
    absorb_v();
    for (int64_t j = 0; j < M; ++j) {
      T* Kj = K.data() + j * N;
      const T* Cj = C + j * N;
      if (!row_ok[j]) {
        std::fill(Kj, Kj + N, T(0));
        continue;
      }
      T mx = -inf;
      for (int64_t i = 0; i < N; ++i)
        if (col_ok[i]) mx = std::max(mx, (gbar[i] - Cj[i]) * inv_eps);
      T sum = 0;
      for (int64_t i = 0; i < N; ++i) {
        Kj[i] = col_ok[i] ? std::exp((gbar[i] - Cj[i]) * inv_eps - mx) : T(0);
        sum += Kj[i];
      }
      fbar[j] = eps * (std::log(a[j]) - mx - std::log(sum));
      const T scale = a[j] / sum;
      for (int64_t i = 0; i < N; ++i) Kj[i] *= scale;
      u[j] = 1;
    }
  };
  // Log-domain g half-step, column-wise LSE done in row-major passes.
  auto log_g_step = [&]() {
    absorb_u();
    std::fill(colmax.begin(), colmax.end(), -inf);
    std::fill(colsum.begin(), colsum.end(), T(0));
    for (int64_t j = 0; j < M; ++j) {
      if (!row_ok[j]) continue;
      const T* Cj = C + j * N;
      for (int64_t i = 0; i < N; ++i) colmax[i] = std::max(colmax[i], (fbar[j] - Cj[i]) * inv_eps);
    }
    for (int64_t j = 0; j < M; ++j) {
      T* Kj = K.data() + j * N;
      const T* Cj = C + j * N;
      for (int64_t i = 0; i < N; ++i) {
        Kj[i] = (row_ok[j] && col_ok[i]) ? std::exp((fbar[j] - Cj[i]) * inv_eps - colmax[i]) : T(0);
        colsum[i] += Kj[i];
      }
    }
    for (int64_t i = 0; i < N; ++i) {
      if (!col_ok[i]) continue;
      gbar[i] = eps * (std::log(s[i]) - colmax[i] - std::log(colsum[i]));
      colsum[i] = s[i] / colsum[i];  // now the column scale
      v[i] = 1;
    }
    for (int64_t j = 0; j < M; ++j) {
      T* Kj = K.data() + j * N;
      for (int64_t i = 0; i < N; ++i) Kj[i] *= col_ok[i] ? colsum[i] : T(0);
    }
  };
  auto row_matvec = [&]() {  // kv = K v
    for (int64_t j = 0; j < M; ++j) {
      const T* Kj = K.data() + j * N;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < N; ++i) acc += Kj[i] * v[i];
      kv[j] = acc;
    }
  };
  auto out_of_range = [&](const std::vector<T>& w, const std::vector<char>& ok) {
    for (size_t k = 0; k < w.size(); ++k)
      if (ok[k] && !(w[k] <= Limits<T>::big && w[k] >= T(1) / Limits<T>::big)) return true;
    return false;
  };

  SolveOut<T> out{0, inf};
  for (int64_t it = 1; it <= max_iter; ++it) {
    // f half-step: u = a / (K v), or in the log domain where K v is unsafe.
    bool f_log = it == 1;
    for (int64_t j = 0; j < M && !f_log; ++j) f_log = row_ok[j] && !(kv[j] >= Limits<T>::tiny);
    if (f_log) {
      log_f_step();
    } else {
      for (int64_t j = 0; j < M; ++j) u[j] = row_ok[j] ? a[j] / kv[j] : T(0);
    }
    // g half-step: v = s / (K^T u).
    std::fill(ktu.begin(), ktu.end(), T(0));
    for (int64_t j = 0; j < M; ++j) {
      const T* Kj = K.data() + j * N;
      const T uj = u[j];
      if (uj == T(0)) continue;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) ktu[i] += uj * Kj[i];
    }
    bool g_log = false;
    for (int64_t i = 0; i < N && !g_log; ++i) g_log = col_ok[i] && !(ktu[i] >= Limits<T>::tiny);
    if (g_log) {
      log_g_step();
    } else {
      for (int64_t i = 0; i < N; ++i) v[i] = col_ok[i] ? s[i] / ktu[i] : T(0);
    }
    if (out_of_range(u, row_ok) || out_of_range(v, col_ok)) {
      absorb_u();
      absorb_v();
      for (int64_t j = 0; j < M; ++j) {
        T* Kj = K.data() + j * N;
        const T* Cj = C + j * N;
        for (int64_t i = 0; i < N; ++i)
          Kj[i] = (row_ok[j] && col_ok[i]) ? std::exp((fbar[j] + gbar[i] - Cj[i]) * inv_eps) : T(0);
      }
    }
    // Row sums of the current plan are u_j (K v)_j; kv is reused by the next f half-step.
    row_matvec();
    T err = 0;
    for (int64_t j = 0; j < M; ++j) err += std::abs(u[j] * kv[j] - a[j]);
    out = {it, err};
    if (err < tol) break;
  }

  for (int64_t j = 0; j < M; ++j) f[j] = row_ok[j] ? fbar[j] + eps * std::log(u[j]) : -inf;
  for (int64_t i = 0; i < N; ++i) g[i] = col_ok[i] ? gbar[i] + eps * std::log(v[i]) : -inf;
  if (plan != nullptr) {
    for (int64_t j = 0; j < M; ++j)
      for (int64_t i = 0; i < N; ++i) plan[j * N + i] = u[j] * K[j * N + i] * v[i];
  }
  return out;
}

struct Solved {
  at::Tensor f, g, iterations, error;
};

// Solves every problem of cost [B,M,N] (compute dtype, contiguous) in parallel; writes the plan
// into `plan` ([B,M,N], same dtype) when it is defined.
Solved solve_batch(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& s, double eps,
                   int64_t max_iter, double tol, const at::Tensor& plan) {
  const int64_t B = cost.size(0), M = cost.size(1), N = cost.size(2);
  auto f = at::empty({B, M}, cost.options());
  auto g = at::empty({B, N}, cost.options());
  auto iterations = at::empty({B}, cost.options().dtype(at::kLong));
  auto error = at::empty({B}, cost.options());
  AT_DISPATCH_FLOATING_TYPES(cost.scalar_type(), "aot_sinkhorn", [&] {
    const scalar_t* C = cost.const_data_ptr<scalar_t>();
    const scalar_t* A = a.const_data_ptr<scalar_t>();
    const scalar_t* S = s.const_data_ptr<scalar_t>();
    scalar_t* F = f.data_ptr<scalar_t>();
    scalar_t* G = g.data_ptr<scalar_t>();
    scalar_t* P = plan.defined() ? plan.data_ptr<scalar_t>() : nullptr;
    int64_t* I = iterations.data_ptr<int64_t>();
    scalar_t* E = error.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> K;
      for (int64_t b = begin; b < end; ++b) {
        auto r = solve_problem<scalar_t>(C + b * M * N, A + b * M, S + b * N, M, N,
                                         static_cast<scalar_t>(eps), max_iter,
                                         static_cast<scalar_t>(tol), F + b * M, G + b * N,
                                         P ? P + b * M * N : nullptr, K);
        I[b] = r.iterations;
        E[b] = r.error;
      }
    });
  });
  return {f, g, iterations, error};
}

// Per problem, from the plan: confidence q_i = max_j T_ji / sum_j T_ji, distance sum T C, the kept
// (dynamic) sources of inter mode, and the aggregation weights written over the plan in place:
// W = T (intra, Eq. 11) or W_ji = p_ij on stable sources (inter, Eq. 15-16). Returns mass = W 1.
template <typename T>
void plan_to_weights(T* W, const T* C, const T* s, int64_t M, int64_t N, std::optional<double> tau,
                     std::optional<int64_t> keep, T* confidence, bool* kept, T* distance, T* mass) {
  std::vector<T> column(N, T(0));
  std::vector<T> top(N, T(0));
  double dist = 0;  // sum over M*N terms: double keeps fp32 outputs at rounding level
  for (int64_t j = 0; j < M; ++j)
    for (int64_t i = 0; i < N; ++i) {
      const T t = W[j * N + i];
      column[i] += t;
      top[i] = std::max(top[i], t);
      dist += static_cast<double>(t) * C[j * N + i];
    }
  *distance = static_cast<T>(dist);
  for (int64_t i = 0; i < N; ++i) {
    confidence[i] = (s[i] > 0 && column[i] > 0) ? top[i] / column[i] : T(0);
    kept[i] = false;
  }
  const bool inter = tau.has_value() || keep.has_value();
  if (tau.has_value()) {
    for (int64_t i = 0; i < N; ++i) kept[i] = s[i] > 0 && confidence[i] < static_cast<T>(*tau);
  } else if (keep.has_value()) {
    std::vector<int64_t> order;
    for (int64_t i = 0; i < N; ++i)
      if (s[i] > 0) order.push_back(i);
    TORCH_CHECK_VALUE(*keep <= static_cast<int64_t>(order.size()), "keep=", *keep,
                      " exceeds the ", order.size(), " non-padded sources of a problem");
    // Lowest confidence first, ties to the lower index (SPEC §5).
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t l, int64_t r) { return confidence[l] < confidence[r]; });
    for (int64_t k = 0; k < *keep; ++k) kept[order[k]] = true;
  }
  if (inter) {
    for (int64_t i = 0; i < N; ++i) column[i] = (s[i] > 0 && !kept[i] && column[i] > 0) ? T(1) / column[i] : T(0);
    for (int64_t j = 0; j < M; ++j)
      for (int64_t i = 0; i < N; ++i) W[j * N + i] *= column[i];
  }
  for (int64_t j = 0; j < M; ++j) {
    T acc = 0;
    for (int64_t i = 0; i < N; ++i) acc += W[j * N + i];
    mass[j] = acc;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cpu(
    const at::Tensor& cost, const std::optional<at::Tensor>& anchor_weight,
    const std::optional<at::Tensor>& source_weight, double eps, int64_t max_iter, double tol) {
  check_features(cost, "cost");
  TORCH_CHECK_VALUE(cost.size(1) > 0 && cost.size(2) > 0, "cost must have M > 0 and N > 0, got ",
                    cost.sizes());
  check_solver_args(eps, max_iter, tol);
  const auto dt = compute_dtype(cost.scalar_type());
  auto C = cost.to(dt).contiguous();
  TORCH_CHECK_VALUE(at::isfinite(C).all().item<bool>(), "cost has NaN or inf entries");
  auto [a, s] = marginals(anchor_weight, source_weight, C.size(0), C.size(1), C.size(2), dt,
                          cost.device());
  auto r = solve_batch(C, a, s, eps, max_iter, tol, at::Tensor());
  const auto out = cost.scalar_type();
  return {r.f.to(out), r.g.to(out), r.iterations, r.error.to(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
sinkhorn_aggregate_cpu(const at::Tensor& anchors, const at::Tensor& sources,
                       const std::optional<at::Tensor>& anchor_weight,
                       const std::optional<at::Tensor>& source_weight, double eps, double lam,
                       int64_t max_iter, double tol, std::optional<double> tau,
                       std::optional<int64_t> keep) {
  check_pair(anchors, sources, "anchors", "sources");
  TORCH_CHECK_VALUE(anchors.scalar_type() == sources.scalar_type(),
                    "anchors and sources must have the same dtype, got ", anchors.scalar_type(),
                    " and ", sources.scalar_type());
  check_solver_args(eps, max_iter, tol);
  TORCH_CHECK_VALUE(lam >= 0 && std::isfinite(lam), "lam must be a finite number >= 0, got ", lam);
  TORCH_CHECK_VALUE(!(tau.has_value() && keep.has_value()), "give tau or keep, not both");
  if (tau.has_value())
    TORCH_CHECK_VALUE(*tau >= 0 && *tau <= 1, "tau must be in [0, 1], got ", *tau);
  if (keep.has_value())
    TORCH_CHECK_VALUE(*keep >= 0 && *keep <= sources.size(1), "keep must be in [0, N=",
                      sources.size(1), "], got ", *keep);
  const int64_t B = anchors.size(0), M = anchors.size(1), N = sources.size(1);
  const auto dt = compute_dtype(anchors.scalar_type());
  auto x = anchors.to(dt).contiguous();
  auto y = sources.to(dt).contiguous();
  auto C = cosine_cost_of_units(unit_rows(x), unit_rows(y)).contiguous();
  auto [a, s] = marginals(anchor_weight, source_weight, B, M, N, dt, anchors.device());

  auto W = at::empty({B, M, N}, x.options());
  auto r = solve_batch(C, a, s, eps, max_iter, tol, W);

  auto confidence = at::empty({B, N}, x.options());
  auto kept = at::empty({B, N}, x.options().dtype(at::kBool));
  auto distance = at::empty({B}, x.options());
  auto mass = at::empty({B, M}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "aot_plan_to_weights", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        plan_to_weights<scalar_t>(W.data_ptr<scalar_t>() + b * M * N,
                                  C.const_data_ptr<scalar_t>() + b * M * N,
                                  s.const_data_ptr<scalar_t>() + b * N, M, N, tau, keep,
                                  confidence.data_ptr<scalar_t>() + b * N,
                                  kept.data_ptr<bool>() + b * N, distance.data_ptr<scalar_t>() + b,
                                  mass.data_ptr<scalar_t>() + b * M);
    });
  });
  // x~ = (x + lam W y) / (1 + lam W 1): the second BLAS product of the op.
  auto tokens = at::baddbmm(x, W, y, 1.0, lam) / (1.0 + lam * mass).unsqueeze(-1);

  const auto out = anchors.scalar_type();
  return {tokens.to(out), mass.to(out), confidence.to(out), kept, distance.to(out),
          r.iterations, r.f.to(out), r.g.to(out), r.error.to(out)};
}

TORCH_LIBRARY_IMPL(aot, CPU, m) {
  m.impl("sinkhorn", &sinkhorn_cpu);
  m.impl("sinkhorn_aggregate", &sinkhorn_aggregate_cpu);
}

}  // namespace aot
