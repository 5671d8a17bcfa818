// Batched entropic OT (SPEC §2) and the fused cost + Sinkhorn + aggregation (SPEC §3, §5) on CPU.
//
// Schedule: stabilised scaling form. The plan is kept as T_ji = u_j K_ji v_i with
// K_ji = exp((fbar_j + gbar_i - C_ji)/eps), so one iteration is one sweep over K doing both
// mat-vecs (no exp), and the stopping error falls out of that sweep for free. The log
// potentials are f = fbar + eps log u, g = gbar + eps log v, and the iterates are the log-domain
// ones of SPEC §2 in exact arithmetic. Whenever a scaling would leave the safe range (a row or
// column of K underflowing, as with eps = 0.01 where exp(-C/eps) < FLT_MIN), the half-step is done
// in the log domain instead and the scalings are absorbed into fbar/gbar. The first f half-step is
// always a log-domain one (g starts at 0 and K is not formed yet).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../aot_ops.h"
#include "common.h"
#include "hot_loops.h"
#include "solve.h"

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

// ---- hot loops: csrc/cpu/hot_loops.h, dispatched to an AVX2+FMA build where the CPU has it ----
using hot::column_pass;
using hot::exp_cols;
using hot::exp_row;
using hot::in_range;
using hot::sweep;
using hot::update_v;

template <typename T>
struct SolveOut {
  int64_t iterations;
  T error;
};

// One problem: cost C [M,N] row-major, marginals a [M], s [N]. The plan is T_ji = u_j K_ji v_i
// with K_ji = exp((fbar_j + gbar_i - C_ji)/eps) (see the file comment). Vectors are padded to
// Mp / ld with zero weight, which the hot loops treat as padding.
template <typename T>
class Solver {
 public:
  Solver(const T* C, const T* a, const T* s, int64_t M, int64_t N, T eps, std::vector<T>& K)
      : C_(C), s_(s), M_(M), N_(N), Mp_((M + kRows - 1) / kRows * kRows), ld_((N + 15) / 16 * 16),
        eps_(eps), inv_eps_(T(1) / eps), K_(K), a_(Mp_, T(0)), fbar_(M), gbar_(N), u_(Mp_, T(0)),
        u_new_(Mp_, T(0)), v_(ld_, T(0)), ktu_(ld_, T(0)), colmax_(N), colsum_(N), zero_(N, T(0)) {
    K_.assign(static_cast<size_t>(Mp_ * ld_), T(0));
    for (int64_t j = 0; j < M; ++j) {
      a_[j] = a[j];
      fbar_[j] = -inf();
    }
    // g starts at 0 on real sources; padding is -inf everywhere so it never contributes.
    for (int64_t i = 0; i < N; ++i) {
      gbar_[i] = live_col(i) ? T(0) : -inf();
      v_[i] = live_col(i) ? T(1) : T(0);
    }
  }

  // Runs up to max_iter iterations (SPEC §2), stopping once the L1 row error < tol.
  SolveOut<T> run(int64_t max_iter, T tol) {
    // Iteration 1: g = 0 and no K yet, so the f half-step is a log-domain one.
    log_f_step();
    column_pass(K_.data(), u_.data(), Mp_, ld_, ktu_.data());
    g_half_step();
    for (int64_t it = 2; it <= max_iter; ++it) {
      bool safe = true;
      const double err = sweep(K_.data(), v_.data(), u_.data(), a_.data(), Mp_, ld_,
                               u_new_.data(), ktu_.data(), &safe);
      if (err < tol) return {it - 1, static_cast<T>(err)};  // error of iteration it-1's plan
      if (safe) {
        std::swap(u_, u_new_);
      } else {
        log_f_step();
        column_pass(K_.data(), u_.data(), Mp_, ld_, ktu_.data());
      }
      g_half_step();
    }
    return {max_iter, static_cast<T>(final_error())};
  }

  // SPEC §8.4: each iteration updates g (the sources) then f (the anchors), from f = g = 0, and
  // stops once the source scaling vector exp(g/eps) changes by < tol on average over the real
  // sources; the error returned is that change. Same sweeps as `run`, half an iteration apart.
  SolveOut<T> run_scaling(int64_t max_iter, T tol) {
    for (int64_t j = 0; j < M_; ++j)
      if (live_row(j)) {
        fbar_[j] = 0;
        u_[j] = 1;
      }
    std::vector<double> g_prev(N_, 0.0);
    double change = std::numeric_limits<double>::infinity();
    for (int64_t it = 1; it <= max_iter; ++it) {
      if (it == 1) {
        log_g_step();  // no K yet
      } else {
        g_half_step();
      }
      change = scaling_change(g_prev);
      f_half_step();
      if (change < tol) return {it, static_cast<T>(change)};
    }
    return {max_iter, static_cast<T>(change)};
  }

  void potentials(T* f, T* g) const {
    for (int64_t j = 0; j < M_; ++j) f[j] = live_row(j) ? fbar_[j] + eps_ * std::log(u_[j]) : -inf();
    for (int64_t i = 0; i < N_; ++i) g[i] = live_col(i) ? gbar_[i] + eps_ * std::log(v_[i]) : -inf();
  }

  void plan(T* out) const {
    for (int64_t j = 0; j < M_; ++j)
      for (int64_t i = 0; i < N_; ++i) out[j * N_ + i] = u_[j] * K_[j * ld_ + i] * v_[i];
  }

 private:
  static constexpr T inf() { return std::numeric_limits<T>::infinity(); }
  T* row(int64_t j) { return K_.data() + j * ld_; }
  // Zero weight marks padding (SPEC §2).
  bool live_row(int64_t j) const { return a_[j] > 0; }
  bool live_col(int64_t i) const { return s_[i] > 0; }

  // v = s / (K^T u), in the log domain where K^T u is unsafe; absorb scalings out of range.
  void g_half_step() {
    const int status = update_v(v_.data(), s_, ktu_.data(), N_);
    if (status == 1) log_g_step();
    if (status == 2 || !in_range(u_.data(), a_.data(), M_)) {
      absorb_u();
      absorb_v();
      // K = exp((fbar + gbar - C)/eps); padding is -inf in fbar/gbar, so exactly 0.
      for (int64_t j = 0; j < M_; ++j)
        exp_cols(row(j), fbar_[j], gbar_.data(), C_ + j * N_, inv_eps_, zero_.data(),
                 colsum_.data(), N_);
    }
  }

  // u = a / (K v) by one sweep (which also leaves K^T u for the next g step), in the log domain
  // where the scaling would leave the safe range.
  void f_half_step() {
    bool safe = true;
    sweep(K_.data(), v_.data(), u_.data(), a_.data(), Mp_, ld_, u_new_.data(), ktu_.data(), &safe);
    if (safe) {
      std::swap(u_, u_new_);
    } else {
      log_f_step();
      column_pass(K_.data(), u_.data(), Mp_, ld_, ktu_.data());
    }
  }

  // mean_i |exp(g_i/eps) - exp(g_prev_i/eps)| over real sources, in double (exp(g/eps) can pass
  // the float range before the plan does); g_prev becomes the current g.
  double scaling_change(std::vector<double>& g_prev) const {
    double sum = 0;
    int64_t live = 0;
    for (int64_t i = 0; i < N_; ++i) {
      if (!live_col(i)) continue;
      const double g = static_cast<double>(gbar_[i]) + eps_ * std::log(static_cast<double>(v_[i]));
      sum += std::abs(std::exp(g / eps_) - std::exp(g_prev[i] / eps_));
      g_prev[i] = g;
      ++live;
    }
    return live ? sum / static_cast<double>(live) : 0.0;
  }

  double final_error() const {
    double err = 0;
    for (int64_t j = 0; j < M_; ++j) {
      const T* Kj = K_.data() + j * ld_;
      double kv = 0;
      for (int64_t i = 0; i < N_; ++i) kv += static_cast<double>(Kj[i]) * v_[i];
      err += std::abs(u_[j] * kv - a_[j]);
    }
    return err;
  }

  // Fold the scalings into the log potentials: fbar += eps log u, gbar += eps log v.
  void absorb_u() {
    for (int64_t j = 0; j < M_; ++j)
      if (live_row(j)) {
        fbar_[j] += eps_ * std::log(u_[j]);
        u_[j] = 1;
      }
  }
  void absorb_v() {
    for (int64_t i = 0; i < N_; ++i)
      if (live_col(i)) {
        gbar_[i] += eps_ * std::log(v_[i]);
        v_[i] = 1;
      }
  }

  // Log-domain f half-step: f_j = eps log a_j - eps LSE_i((g_i - C_ji)/eps); K rebuilt with one
  // exp per entry as K_ji = a_j exp(z_ji - max_j) / sum_j.
  void log_f_step() {
    absorb_v();
    for (int64_t j = 0; j < M_; ++j) {
      T* Kj = row(j);
      const T* Cj = C_ + j * N_;
      if (!live_row(j)) {
        std::fill(Kj, Kj + N_, T(0));
        continue;
      }
      T mx = -inf();  // padded columns have gbar = -inf and drop out of max and sum
      for (int64_t i = 0; i < N_; ++i) mx = std::max(mx, (gbar_[i] - Cj[i]) * inv_eps_);
      const T sum = exp_row(Kj, gbar_.data(), Cj, inv_eps_, mx, N_);
      fbar_[j] = eps_ * (std::log(a_[j]) - mx - std::log(sum));
      const T scale = a_[j] / sum;
      for (int64_t i = 0; i < N_; ++i) Kj[i] *= scale;
      u_[j] = 1;
    }
  }

  // Log-domain g half-step, the column-wise LSE done in row-major passes.
  void log_g_step() {
    absorb_u();
    std::fill(colmax_.begin(), colmax_.end(), -inf());
    std::fill(colsum_.begin(), colsum_.end(), T(0));
    for (int64_t j = 0; j < M_; ++j) {
      if (!live_row(j)) continue;
      const T* Cj = C_ + j * N_;
      for (int64_t i = 0; i < N_; ++i) colmax_[i] = std::max(colmax_[i], (fbar_[j] - Cj[i]) * inv_eps_);
    }
    // Padded rows have fbar = -inf: their entries are exactly 0.
    for (int64_t j = 0; j < M_; ++j)
      exp_cols(row(j), fbar_[j], zero_.data(), C_ + j * N_, inv_eps_, colmax_.data(),
               colsum_.data(), N_);
    for (int64_t i = 0; i < N_; ++i) {
      if (!live_col(i)) continue;
      gbar_[i] = eps_ * (std::log(s_[i]) - colmax_[i] - std::log(colsum_[i]));
      colsum_[i] = s_[i] / colsum_[i];  // now the column scale
      v_[i] = 1;
    }
    for (int64_t i = 0; i < N_; ++i)
      if (!live_col(i)) colsum_[i] = 0;  // padded columns of K stay 0
    for (int64_t j = 0; j < M_; ++j) {
      T* Kj = row(j);
      for (int64_t i = 0; i < N_; ++i) Kj[i] *= colsum_[i];
    }
  }

  const T* C_;
  const T* s_;
  int64_t M_, N_, Mp_, ld_;
  T eps_, inv_eps_;
  std::vector<T>& K_;
  std::vector<T> a_, fbar_, gbar_, u_, u_new_, v_, ktu_, colmax_, colsum_, zero_;
};

template <typename T>
SolveOut<T> solve_problem(const T* C, const T* a, const T* s, int64_t M, int64_t N, T eps,
                          int64_t max_iter, T tol, bool scaling, T* f, T* g, T* plan,
                          std::vector<T>& K) {
  Solver<T> solver(C, a, s, M, N, eps, K);
  auto out = scaling ? solver.run_scaling(max_iter, tol) : solver.run(max_iter, tol);
  solver.potentials(f, g);
  if (plan != nullptr) solver.plan(plan);
  return out;
}

}  // namespace

// Solves every problem of cost [B,M,N] (compute dtype, contiguous) in parallel; writes the plan
// into `plan` ([B,M,N], same dtype) when it is defined.
Solved solve_batch(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& s, double eps,
                   int64_t max_iter, double tol, const at::Tensor& plan, bool scaling) {
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
                                         static_cast<scalar_t>(tol), scaling, F + b * M, G + b * N,
                                         P ? P + b * M * N : nullptr, K);
        I[b] = r.iterations;
        E[b] = r.error;
      }
    });
  });
  return {f, g, iterations, error};
}

// Per problem, from the plan: confidence q_i = max_j T_ji / sum_j T_ji, distance sum T C, the kept
// (dynamic) sources of inter mode, the received mass m = W 1 of the aggregation weights
// W = T (intra, Eq. 11) or W_ji = p_ij on stable sources (inter, Eq. 15-16), and, written over the
// plan in place, W scaled per row by lam / (1 + lam m_j), so that the op's output is
// x * anchor_scale + W' y with anchor_scale_j = 1 / (1 + lam m_j): one pass and one GEMM.
template <typename T>
void plan_to_weights(T* W, const T* C, const T* s, int64_t M, int64_t N, T lam,
                     std::optional<double> tau, std::optional<int64_t> keep,
                     std::optional<double> keep_quantile, T* confidence, bool* kept, T* distance,
                     T* mass, T* anchor_scale, const T* source_sizes, T* carried) {
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
  const bool inter = tau.has_value() || keep.has_value() || keep_quantile.has_value();
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
  } else if (keep_quantile.has_value()) {
    // SPEC §8.7: q_i below the linear quantile of the real sources' q (numpy's default).
    std::vector<T> live;
    for (int64_t i = 0; i < N; ++i)
      if (s[i] > 0) live.push_back(confidence[i]);
    std::sort(live.begin(), live.end());
    if (!live.empty()) {
      const double pos = static_cast<double>(live.size() - 1) * *keep_quantile;
      const size_t lo = static_cast<size_t>(std::floor(pos));
      const size_t hi = std::min(lo + 1, live.size() - 1);
      const T cut = live[lo] + (live[hi] - live[lo]) * static_cast<T>(pos - static_cast<double>(lo));
      for (int64_t i = 0; i < N; ++i) kept[i] = s[i] > 0 && confidence[i] < cut;
    }
  }
  if (inter) {
    for (int64_t i = 0; i < N; ++i) column[i] = (s[i] > 0 && !kept[i] && column[i] > 0) ? T(1) / column[i] : T(0);
    for (int64_t j = 0; j < M; ++j)
      for (int64_t i = 0; i < N; ++i) W[j * N + i] *= column[i];
  }
  for (int64_t j = 0; j < M; ++j) {
    T* Wj = W + j * N;
    T acc = 0;
    for (int64_t i = 0; i < N; ++i) acc += Wj[i];
    mass[j] = acc;
    if (carried != nullptr) {  // sizes merged into anchor j: sum_i W_ji size_i (clip steps)
      T merged = 0;
      for (int64_t i = 0; i < N; ++i) merged += Wj[i] * source_sizes[i];
      carried[j] = merged;
    }
    anchor_scale[j] = T(1) / (T(1) + lam * acc);
    const T row_scale = lam * anchor_scale[j];
    for (int64_t i = 0; i < N; ++i) Wj[i] *= row_scale;
  }
}

template void plan_to_weights<float>(float*, const float*, const float*, int64_t, int64_t, float,
                                     std::optional<double>, std::optional<int64_t>,
                                     std::optional<double>, float*, bool*, float*, float*, float*,
                                     const float*, float*);
template void plan_to_weights<double>(double*, const double*, const double*, int64_t, int64_t,
                                      double, std::optional<double>, std::optional<int64_t>,
                                      std::optional<double>, double*, bool*, double*, double*,
                                      double*, const double*, double*);

namespace {

// SPEC §8.5: nearest[i] = the real anchor of lowest semantic cost to source i (ties to the lower
// index), -1 if there is none. C [M,N] is the cosine cost, before any spatial term.
template <typename T>
void nearest_anchors(const T* C, const T* a, int64_t M, int64_t N, int64_t* nearest) {
  std::vector<T> best(N, std::numeric_limits<T>::infinity());
  std::fill(nearest, nearest + N, int64_t(-1));
  for (int64_t j = 0; j < M; ++j) {
    if (!(a[j] > 0)) continue;
    const T* Cj = C + j * N;
    for (int64_t i = 0; i < N; ++i)
      if (Cj[i] < best[i]) {  // strict: the first of equal costs stays
        best[i] = Cj[i];
        nearest[i] = j;
      }
  }
}

// Blend the nearest-anchor average into the fold (SPEC §8.5), so it stays one GEMM: with W' and
// anchor_scale from plan_to_weights (tokens = x anchor_scale + W' y), the blended tokens
// (1 - beta) tokens + beta (x_j + sum_{nn(i)=j} y_i) / (1 + c_j) are x anchor_scale'' + W'' y.
template <typename T>
void blend_nearest(T* W, T* anchor_scale, const int64_t* nearest, const T* s, int64_t M, int64_t N,
                   T beta) {
  std::vector<T> count(M, T(0));
  for (int64_t i = 0; i < N; ++i)
    if (s[i] > 0 && nearest[i] >= 0) count[nearest[i]] += 1;
  for (int64_t k = 0; k < M * N; ++k) W[k] *= T(1) - beta;
  for (int64_t i = 0; i < N; ++i)
    if (s[i] > 0 && nearest[i] >= 0) W[nearest[i] * N + i] += beta / (T(1) + count[nearest[i]]);
  for (int64_t j = 0; j < M; ++j)
    anchor_scale[j] = (T(1) - beta) * anchor_scale[j] + beta / (T(1) + count[j]);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_cpu(
    const at::Tensor& cost, const std::optional<at::Tensor>& anchor_weight,
    const std::optional<at::Tensor>& source_weight, double eps, int64_t max_iter, double tol,
    c10::string_view stop) {
  check_features(cost, "cost");
  const bool scaling = scaling_stop(stop);
  TORCH_CHECK_VALUE(cost.size(1) > 0 && cost.size(2) > 0, "cost must have M > 0 and N > 0, got ",
                    cost.sizes());
  check_solver_args(eps, max_iter, tol);
  const auto dt = compute_dtype(cost.scalar_type());
  auto C = cost.to(dt).contiguous();
  TORCH_CHECK_VALUE(at::isfinite(C).all().item<bool>(), "cost has NaN or inf entries");
  auto [a, s] = marginals(anchor_weight, source_weight, C.size(0), C.size(1), C.size(2), dt,
                          cost.device());
  auto r = solve_batch(C, a, s, eps, max_iter, tol, at::Tensor(), scaling);
  const auto out = cost.scalar_type();
  return {r.f.to(out), r.g.to(out), r.iterations, r.error.to(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
sinkhorn_aggregate_cpu(const at::Tensor& anchors, const at::Tensor& sources,
                       const std::optional<at::Tensor>& anchor_weight,
                       const std::optional<at::Tensor>& source_weight, double eps, double lam,
                       int64_t max_iter, double tol, std::optional<double> tau,
                       std::optional<int64_t> keep, const std::optional<at::Tensor>& anchor_pos,
                       const std::optional<at::Tensor>& source_pos, double spatial,
                       c10::string_view stop, double nn_blend, std::optional<double> keep_quantile,
                       bool shift_min) {
  check_pair(anchors, sources, "anchors", "sources");
  const bool scaling = scaling_stop(stop);
  TORCH_CHECK_VALUE(std::isfinite(spatial) && spatial >= 0,
                    "spatial must be a finite number >= 0, got ", spatial);
  TORCH_CHECK_VALUE(nn_blend >= 0 && nn_blend <= 1, "nn_blend must be in [0, 1], got ", nn_blend);
  TORCH_CHECK_VALUE((tau.has_value() + keep.has_value() + keep_quantile.has_value()) <= 1,
                    "give one of tau, keep and keep_quantile");
  if (keep_quantile.has_value())
    TORCH_CHECK_VALUE(*keep_quantile >= 0 && *keep_quantile <= 1,
                      "keep_quantile must be in [0, 1], got ", *keep_quantile);
  TORCH_CHECK_VALUE(nn_blend == 0 || !(tau.has_value() || keep.has_value() ||
                                       keep_quantile.has_value()),
                    "nn_blend applies to intra mode (no tau, keep or keep_quantile)");
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
  auto C = cosine_cost_compute(x, y);  // GEMM 1 of 2
  auto [a, s] = marginals(anchor_weight, source_weight, B, M, N, dt, anchors.device());
  at::Tensor nearest;  // from the cosine part alone, before the spatial term joins the cost
  if (nn_blend > 0) {
    nearest = at::empty({B, N}, x.options().dtype(at::kLong));
    AT_DISPATCH_FLOATING_TYPES(dt, "aot_nearest", [&] {
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b)
          nearest_anchors<scalar_t>(C.const_data_ptr<scalar_t>() + b * M * N,
                                    a.const_data_ptr<scalar_t>() + b * M, M, N,
                                    nearest.data_ptr<int64_t>() + b * N);
      });
    });
  }
  if (spatial != 0) add_spatial_cost(C, anchor_pos, source_pos, spatial, "anchor_pos", "source_pos");
  if (shift_min) {  // C -= its minimum over real (anchor, source) pairs, per problem (SPEC §8.7)
    auto live = (a > 0).unsqueeze(2).logical_and((s > 0).unsqueeze(1));
    auto low = C.masked_fill(live.logical_not(), std::numeric_limits<double>::infinity())
                   .amin({1, 2}, /*keepdim=*/true);
    C.sub_(low);
  }

  auto W = at::empty({B, M, N}, x.options());
  auto r = solve_batch(C, a, s, eps, max_iter, tol, W, scaling);

  auto confidence = at::empty({B, N}, x.options());
  auto kept = at::empty({B, N}, x.options().dtype(at::kBool));
  auto distance = at::empty({B}, x.options());
  auto mass = at::empty({B, M}, x.options());
  auto anchor_scale = at::empty({B, M, 1}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "aot_plan_to_weights", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        plan_to_weights<scalar_t>(W.data_ptr<scalar_t>() + b * M * N,
                                  C.const_data_ptr<scalar_t>() + b * M * N,
                                  s.const_data_ptr<scalar_t>() + b * N, M, N,
                                  static_cast<scalar_t>(lam), tau, keep, keep_quantile,
                                  confidence.data_ptr<scalar_t>() + b * N,
                                  kept.data_ptr<bool>() + b * N, distance.data_ptr<scalar_t>() + b,
                                  mass.data_ptr<scalar_t>() + b * M,
                                  anchor_scale.data_ptr<scalar_t>() + b * M, nullptr, nullptr);
      if (nn_blend > 0)
        for (int64_t b = begin; b < end; ++b)
          blend_nearest<scalar_t>(W.data_ptr<scalar_t>() + b * M * N,
                                  anchor_scale.data_ptr<scalar_t>() + b * M,
                                  nearest.const_data_ptr<int64_t>() + b * N,
                                  s.const_data_ptr<scalar_t>() + b * N, M, N,
                                  static_cast<scalar_t>(nn_blend));
    });
  });
  // x~ = (x + lam W y) / (1 + lam W 1) = x * anchor_scale + W' y: GEMM 2 of 2, accumulating.
  auto tokens = x * anchor_scale;
  tokens.baddbmm_(W, y);

  const auto out = anchors.scalar_type();
  return {tokens.to(out), mass.to(out), confidence.to(out), kept, distance.to(out),
          r.iterations, r.f.to(out), r.g.to(out), r.error.to(out)};
}

TORCH_LIBRARY_IMPL(aot, CPU, m) {
  m.impl("sinkhorn", &sinkhorn_cpu);
  m.impl("sinkhorn_aggregate", &sinkhorn_aggregate_cpu);
}

}  // namespace aot
