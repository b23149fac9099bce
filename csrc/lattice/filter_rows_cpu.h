// Rows of floats as vectors: what every CPU filter loop (filter_*_cpu.cpp) is written with.
#pragma once

#include <cstdint>
#include <cstring>

// The row loops are compiled for AVX-512, AVX2 and baseline x86-64 and chosen at load time.
// Contraction is off (setup.py), and no loop reassociates a sum, so every clone computes the
// same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTSEG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTSEG_CLONES
#endif
// Everything a clone calls must be inlined into it: an out-of-line helper is compiled once,
// for baseline x86-64, whatever clone calls it.
#define FASTSEG_INLINE inline __attribute__((always_inline))
// Rows of whole 8-float vectors run fn<8>, shorter rows (stride 4) fn<4>, one-float rows fn<1>.
#define FASTSEG_BY_WIDTH(s, fn, ...) \
  ((s) % 8 == 0 ? fn<8>(__VA_ARGS__) : (s) % 4 == 0 ? fn<4>(__VA_ARGS__) : fn<1>(__VA_ARGS__))

namespace fastseg {
namespace lattice {
namespace cpu {

// Loops hand out chunks dynamically (common/parallel_dynamic.h) of these many points,
// vertices or chains (of a few vertices each).
constexpr int64_t kDynamicRows = 4096;
constexpr int64_t kDynamicVertices = 2048;
constexpr int64_t kDynamicChains = 512;

// Rows are processed in chunks of W floats (W = 8, 4 for short rows, 1 for single values) held
// in GCC vector types, so every clone gets whole vector instructions whatever the alias
// analysis concludes.
template <int W>
struct Vec;
template <>
struct Vec<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
};
template <>
struct Vec<16> {  // only for lane-wise work on flat arrays (see softmax_rows)
  typedef float f __attribute__((vector_size(64)));
  typedef int32_t i __attribute__((vector_size(64)));
};
template <>
struct Vec<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
};
template <>
struct Vec<1> {
  typedef float f __attribute__((vector_size(4)));
  typedef int32_t i __attribute__((vector_size(4)));
};

template <int W>
FASTSEG_INLINE typename Vec<W>::f load(const float* p) {
  typename Vec<W>::f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
FASTSEG_INLINE void store(float* p, typename Vec<W>::f v) {
  std::memcpy(p, &v, sizeof(v));
}

// Gathers read rows scattered over tens of MB; prefetching the rows needed kAhead steps later
// overlaps their cache misses instead of paying them one after another (16 measured 2-9%
// faster than 8 on one thread, 32 no better than 16).
constexpr int64_t kAhead = 16;

// One prefetch per 64 bytes from the row's start: enough for rows read in order, which cover
// every line between them.
FASTSEG_INLINE void prefetch_stream_row(const float* row, int64_t s) {
  for (int64_t k = 0; k < s; k += 16) __builtin_prefetch(row + k);
}

// A gathered row may also reach into one more line: its last float's.
FASTSEG_INLINE void prefetch_row(const float* row, int64_t s) {
  prefetch_stream_row(row, s);
  __builtin_prefetch(row + s - 1);
}

// Rows read in order (the unary, and the values a scatter splat adds) are prefetched this many
// rows ahead too: perf's cpu-clock samples showed the update stalled on its unary loads, a
// sequential stream the hardware prefetcher did not keep ahead of beside the gathers. Each
// loop's CPU time against the unchanged blur chains' (so that the host's speed cancels), median
// of 5 alternating processes, 21 labels: the update 7% less, the scatter splat 6-8%, the fused
// gaussian sweep 3% (at 182 labels the update 8%); 16 or 64 rows ahead no better than 32.
constexpr int64_t kStreamAhead = 32;

// Row p + kStreamAhead of `rows` (of s floats, `end` of them), when there is one. Rows shorter
// than 8 floats share lines (a prefetch per row would repeat each line up to 16 times, in a
// scalar loop): their thin stream is left to the hardware prefetcher.
FASTSEG_INLINE void prefetch_stream_ahead(const float* rows, int64_t s, int64_t p, int64_t end) {
  if (s >= 8 && p + kStreamAhead < end) prefetch_stream_row(rows + (p + kStreamAhead) * s, s);
}

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
