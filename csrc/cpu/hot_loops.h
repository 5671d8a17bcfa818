// Inner loops of the CPU Sinkhorn (csrc/cpu/sinkhorn.cpp), written to vectorise.
//
// The templates are compiled twice: in hot_loops.cpp for baseline x86-64 and, on x86-64 GCC, in
// hot_loops_avx2.cpp under `#pragma GCC target("arch=haswell")` (AVX2 + FMA, 8 floats a lane).
// hot::sweep & co. pick one build once, by CPUID. The templates sit in an anonymous namespace so
// that each translation unit keeps its own copy: a shared (weak) instantiation could otherwise
// hand AVX2 code to the baseline path.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace aot {

template <typename T>
struct Limits {
  // Smallest mat-vec result we divide by: keeps a/kv finite with room to spare.
  static constexpr T tiny = std::numeric_limits<T>::min() * T(1e6);
  // Scalings beyond [1/big, big] are absorbed into the log potentials.
  static constexpr T big = T(1e8);
};

namespace {

// K is stored [Mp, ld] with Mp a multiple of kRows and ld a multiple of 16, zero outside [M, N]:
// the loops have no remainders, and kRows rows share each load of v and each update of ktu
// (8 independent FMA chains hide the FMA latency of the short rows, N ~ 70).
constexpr int64_t kRows = 8;

// exp(x) without branches, calls or divisions, so that loops over it vectorise: x = n ln2 + r
// with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by Taylor in Horner form (degree 7 for float:
// truncation 5e-9 relative, below half an ulp; degree 13 for double: 4e-18), times 2^n written
// into the exponent bits. x is clamped to [lo, hi] so 2^n stays encodable: at hi, n = 128 (1024)
// encodes +inf, and inputs below lo (the log of the smallest normal, -inf included) give 0.
template <typename T>
struct ExpConsts;
template <>
struct ExpConsts<float> {
  using Int = int32_t;
  static constexpr float lo = -87.33f, hi = 88.73f;
  static constexpr int degree = 7, mantissa = 23, bias = 127;
};
template <>
struct ExpConsts<double> {
  using Int = int64_t;
  static constexpr double lo = -708.39, hi = 709.79;
  static constexpr int degree = 13, mantissa = 52, bias = 1023;
};

template <int D>
struct InverseFactorials {  // 1/k!, k = 0..D, built at compile time
  double c[D + 1];
  constexpr InverseFactorials() : c() {
    c[0] = 1.0;
    for (int k = 1; k <= D; ++k) c[k] = c[k - 1] / k;
  }
};

// The builtins, not std::floor: <cmath>'s wrapper is compiled for the baseline target and would
// not inline into the AVX2 build (a call in the loop stops vectorisation).
inline __attribute__((always_inline)) float floor_builtin(float x) { return __builtin_floorf(x); }
inline __attribute__((always_inline)) double floor_builtin(double x) { return __builtin_floor(x); }

template <typename T>
inline __attribute__((always_inline)) T exp_approx(T x) {
  using E = ExpConsts<T>;
  const T above = x > E::lo ? x : E::lo;  // one-level selects: max/min instructions
  const T xc = above < E::hi ? above : E::hi;
  const T n = floor_builtin(xc * T(1.4426950408889634) + T(0.5));
  const T r = (xc - n * T(0.693145751953125)) - n * T(1.4286068203094173e-06);
  constexpr InverseFactorials<E::degree> coef{};
  T p = T(coef.c[E::degree]);
  for (int k = E::degree - 1; k >= 0; --k) p = p * r + T(coef.c[k]);
  const typename E::Int bits = (static_cast<typename E::Int>(n) + E::bias) << E::mantissa;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return x > E::lo ? p * scale : T(0);
}

// out[i] = exp((add[i] - C[i]) * inv_eps - shift); returns sum(out). (log-domain f step)
template <typename T>
inline __attribute__((always_inline)) T exp_row_impl(T* out, const T* add, const T* C, T inv_eps,
                                                     T shift, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = exp_approx((add[i] - C[i]) * inv_eps - shift);
    sum += out[i];
  }
  return sum;
}

// out[i] = exp((add + add_vec[i] - C[i]) * inv_eps - shift_vec[i]); colsum[i] += out[i].
// (log-domain g step with add_vec = 0, shift_vec = column max; absorption with shift_vec = 0)
template <typename T>
inline __attribute__((always_inline)) void exp_cols_impl(T* out, T add, const T* add_vec,
                                                         const T* C, T inv_eps,
                                                         const T* shift_vec, T* colsum, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    out[i] = exp_approx((add + add_vec[i] - C[i]) * inv_eps - shift_vec[i]);
    colsum[i] += out[i];
  }
}

// ktu += sum_r w[r] K_(jb+r) over one block of kRows rows R (row stride ld).
template <typename T>
inline __attribute__((always_inline)) void add_weighted_rows(T* ktu, const T* R, const T* w,
                                                             int64_t ld) {
#pragma omp simd
  for (int64_t i = 0; i < ld; ++i)
    ktu[i] += w[0] * R[i] + w[1] * R[ld + i] + w[2] * R[2 * ld + i] + w[3] * R[3 * ld + i] +
              w[4] * R[4 * ld + i] + w[5] * R[5 * ld + i] + w[6] * R[6 * ld + i] +
              w[7] * R[7 * ld + i];
}

// A scaling outside [1/big, big] (or NaN) is to be absorbed into the log potentials.
template <typename T>
inline __attribute__((always_inline)) bool outside_safe_range(T w) {
  return !(w <= Limits<T>::big && w >= T(1) / Limits<T>::big);
}

// The fused sweep of one scaling iteration. For each row j: kv_j = K_j . v, the row-marginal
// error term |u_j kv_j - a_j| of the current plan, u'_j = a_j / kv_j and ktu += u'_j K_j while the
// rows are still in L1. Returns the error; *safe is false if some kv_j was too small to divide by
// (then u' and ktu are incomplete and the caller takes a log-domain step instead).
template <typename T>
inline __attribute__((always_inline)) double sweep_impl(const T* K, const T* v, const T* u,
                                                        const T* a, int64_t Mp, int64_t ld,
                                                        T* u_new, T* ktu, bool* safe) {
  double err = 0;
  bool ok = true;
  for (int64_t i = 0; i < ld; ++i) ktu[i] = 0;
  for (int64_t jb = 0; jb < Mp; jb += kRows) {
    const T* R = K + jb * ld;
    T k0 = 0, k1 = 0, k2 = 0, k3 = 0, k4 = 0, k5 = 0, k6 = 0, k7 = 0;
#pragma omp simd reduction(+ : k0, k1, k2, k3, k4, k5, k6, k7)
    for (int64_t i = 0; i < ld; ++i) {
      const T vi = v[i];
      k0 += R[i] * vi;
      k1 += R[ld + i] * vi;
      k2 += R[2 * ld + i] * vi;
      k3 += R[3 * ld + i] * vi;
      k4 += R[4 * ld + i] * vi;
      k5 += R[5 * ld + i] * vi;
      k6 += R[6 * ld + i] * vi;
      k7 += R[7 * ld + i] * vi;
    }
    const T kv[kRows] = {k0, k1, k2, k3, k4, k5, k6, k7};
    const T *aj = a + jb, *uj = u + jb;
    T* un = u_new + jb;
    T e = 0;
    int bad = 0;
#pragma omp simd reduction(+ : e) reduction(| : bad)
    for (int64_t r = 0; r < kRows; ++r) {
      const T d = uj[r] * kv[r] - aj[r];
      e += d < 0 ? -d : d;
      bad |= (aj[r] > 0) & !(kv[r] >= Limits<T>::tiny);
      un[r] = aj[r] > 0 ? aj[r] / kv[r] : T(0);  // padded rows (a = 0) stay 0
    }
    err += e;
    ok = ok && !bad;
    if (!ok) continue;  // finish the error, skip the update
    const T* w = u_new + jb;
    add_weighted_rows(ktu, R, w, ld);
  }
  *safe = ok;
  return err;
}

// v = s / ktu on live columns (s > 0), 0 on padding. Returns 0 if fine, 1 if some ktu was too
// small to divide by (v is then not to be used), 2 if some v left [1/big, big].
template <typename T>
inline __attribute__((always_inline)) int update_v_impl(T* v, const T* s, const T* ktu,
                                                        int64_t n) {
  int bad = 0, wide = 0;
#pragma omp simd reduction(| : bad, wide)
  for (int64_t i = 0; i < n; ++i) {
    const bool live = s[i] > 0;
    const T vi = live ? s[i] / ktu[i] : T(0);
    bad |= live & !(ktu[i] >= Limits<T>::tiny);
    wide |= live & outside_safe_range(vi);
    v[i] = vi;
  }
  return bad ? 1 : (wide ? 2 : 0);
}

// Whether every live scaling (weight > 0) lies in [1/big, big].
template <typename T>
inline __attribute__((always_inline)) bool in_range_impl(const T* w, const T* weight, int64_t n) {
  int wide = 0;
#pragma omp simd reduction(| : wide)
  for (int64_t i = 0; i < n; ++i)
    wide |= (weight[i] > 0) & outside_safe_range(w[i]);
  return !wide;
}

// ktu = K^T u (after a log-domain f step).
template <typename T>
inline __attribute__((always_inline)) void column_pass_impl(const T* K, const T* u, int64_t Mp,
                                                            int64_t ld, T* ktu) {
  for (int64_t i = 0; i < ld; ++i) ktu[i] = 0;
  for (int64_t jb = 0; jb < Mp; jb += kRows) {
    const T* R = K + jb * ld;
    const T* w = u + jb;
    add_weighted_rows(ktu, R, w, ld);
  }
}

}  // namespace

// One build of the loops (baseline or AVX2); see hot_loops.cpp.
#define AOT_HOT_LOOP_DECLS(T)                                                                    \
  double sweep(const T* K, const T* v, const T* u, const T* a, int64_t Mp, int64_t ld, T* un,     \
               T* ktu, bool* safe);                                                              \
  void column_pass(const T* K, const T* u, int64_t Mp, int64_t ld, T* ktu);                      \
  T exp_row(T* out, const T* add, const T* C, T inv_eps, T shift, int64_t n);                    \
  void exp_cols(T* out, T add, const T* add_vec, const T* C, T inv_eps, const T* shift_vec,      \
                T* colsum, int64_t n);                                                           \
  int update_v(T* v, const T* s, const T* ktu, int64_t n);                                       \
  bool in_range(const T* w, const T* weight, int64_t n);
#define AOT_HOT_LOOP_DEFS(T)                                                                     \
  double sweep(const T* K, const T* v, const T* u, const T* a, int64_t Mp, int64_t ld, T* un,     \
               T* ktu, bool* safe) {                                                             \
    return sweep_impl(K, v, u, a, Mp, ld, un, ktu, safe);                                        \
  }                                                                                              \
  void column_pass(const T* K, const T* u, int64_t Mp, int64_t ld, T* ktu) {                     \
    column_pass_impl(K, u, Mp, ld, ktu);                                                         \
  }                                                                                              \
  T exp_row(T* out, const T* add, const T* C, T inv_eps, T shift, int64_t n) {                   \
    return exp_row_impl(out, add, C, inv_eps, shift, n);                                         \
  }                                                                                              \
  void exp_cols(T* out, T add, const T* add_vec, const T* C, T inv_eps, const T* shift_vec,      \
                T* colsum, int64_t n) {                                                          \
    exp_cols_impl(out, add, add_vec, C, inv_eps, shift_vec, colsum, n);                          \
  }                                                                                              \
  int update_v(T* v, const T* s, const T* ktu, int64_t n) { return update_v_impl(v, s, ktu, n); } \
  bool in_range(const T* w, const T* weight, int64_t n) { return in_range_impl(w, weight, n); }

namespace baseline {
AOT_HOT_LOOP_DECLS(float)
AOT_HOT_LOOP_DECLS(double)
}  // namespace baseline
namespace avx2 {
AOT_HOT_LOOP_DECLS(float)
AOT_HOT_LOOP_DECLS(double)
}  // namespace avx2
namespace hot {  // the dispatching entry points
AOT_HOT_LOOP_DECLS(float)
AOT_HOT_LOOP_DECLS(double)
}  // namespace hot

}  // namespace aot
