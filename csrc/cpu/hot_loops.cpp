// Baseline build of the hot loops and the dispatch between it and the AVX2 build.
#include "hot_loops.h"

#include <cstdlib>

namespace aot {

namespace baseline {
AOT_HOT_LOOP_DEFS(float)
AOT_HOT_LOOP_DEFS(double)
}  // namespace baseline

namespace {
// Decided once: CPUID says AVX2 and FMA, and AOT_KERNELS_NO_AVX2 is not set (tests use it to
// run the baseline build on an AVX2 machine).
bool use_avx2() {
  static const bool yes = [] {
    const char* off = std::getenv("AOT_KERNELS_NO_AVX2");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
  }();
  return yes;
}
}  // namespace

namespace hot {
#define AOT_HOT_LOOP_DISPATCH(T)                                                                 \
  double sweep(const T* K, const T* v, const T* u, const T* a, int64_t Mp, int64_t ld, T* un,     \
               T* ktu, bool* safe) {                                                             \
    if (use_avx2()) return avx2::sweep(K, v, u, a, Mp, ld, un, ktu, safe);                       \
    return baseline::sweep(K, v, u, a, Mp, ld, un, ktu, safe);                                   \
  }                                                                                              \
  void column_pass(const T* K, const T* u, int64_t Mp, int64_t ld, T* ktu) {                     \
    if (use_avx2()) return avx2::column_pass(K, u, Mp, ld, ktu);                                 \
    baseline::column_pass(K, u, Mp, ld, ktu);                                                    \
  }                                                                                              \
  T exp_row(T* out, const T* add, const T* C, T inv_eps, T shift, int64_t n) {                   \
    if (use_avx2()) return avx2::exp_row(out, add, C, inv_eps, shift, n);                        \
    return baseline::exp_row(out, add, C, inv_eps, shift, n);                                    \
  }                                                                                              \
  void exp_cols(T* out, T add, const T* add_vec, const T* C, T inv_eps, const T* shift_vec,      \
                T* colsum, int64_t n) {                                                          \
    if (use_avx2()) return avx2::exp_cols(out, add, add_vec, C, inv_eps, shift_vec, colsum, n);  \
    baseline::exp_cols(out, add, add_vec, C, inv_eps, shift_vec, colsum, n);                     \
  }                                                                                              \
  int update_v(T* v, const T* s, const T* ktu, int64_t n) {                                      \
    if (use_avx2()) return avx2::update_v(v, s, ktu, n);                                         \
    return baseline::update_v(v, s, ktu, n);                                                     \
  }                                                                                              \
  bool in_range(const T* w, const T* weight, int64_t n) {                                        \
    if (use_avx2()) return avx2::in_range(w, weight, n);                                         \
    return baseline::in_range(w, weight, n);                                                     \
  }
AOT_HOT_LOOP_DISPATCH(float)
AOT_HOT_LOOP_DISPATCH(double)
#undef AOT_HOT_LOOP_DISPATCH
}  // namespace hot

}  // namespace aot
