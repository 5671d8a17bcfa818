// AVX2 + FMA build of the hot loops (hot_loops.h). Standard headers come first, compiled for the
// baseline, so that no shared inline function is emitted with AVX2 code; everything after the
// pragma is this file's own (anonymous-namespace templates and the avx2:: entry points).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("arch=haswell")
#endif

#include "hot_loops.h"

namespace aot::avx2 {
AOT_HOT_LOOP_DEFS(float)
AOT_HOT_LOOP_DEFS(double)
}  // namespace aot::avx2
