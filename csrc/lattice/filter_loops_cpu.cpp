#include "lattice/filter_loops_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/large_buffer.h"
#include "common/parallel_dynamic.h"
#include "lattice/permutohedral_math.h"  // kMaxDim

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
namespace {

// Loops hand out chunks dynamically (common/parallel_dynamic.h) of these many points,
// vertices or chains (of a few vertices each).
constexpr int64_t kDynamicRows = 4096;
constexpr int64_t kDynamicVertices = 2048;
constexpr int64_t kDynamicChains = 512;

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

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

FASTSEG_INLINE void prefetch_row(const float* row, int64_t s) {
  for (int64_t k = 0; k < s; k += 16) __builtin_prefetch(row + k);
  __builtin_prefetch(row + s - 1);
}

template <int W>
FASTSEG_INLINE void splat_range_w(const LatticeView& lat, const float* values, int64_t s,
                                  float* buf, int64_t v_begin, int64_t v_end) {
  using F = typename Vec<W>::f;
  const int64_t e_end = lat.splat_offsets[v_end];
  for (int64_t v = v_begin; v < v_end; ++v) {
    float* dst = buf + v * s;
    for (int64_t k = 0; k < s; k += W) store<W>(dst + k, F{} + 0.f);
    for (int64_t e = lat.splat_offsets[v]; e < lat.splat_offsets[v + 1]; ++e) {
      if (e + kAhead < e_end) prefetch_row(values + lat.splat_points[e + kAhead] * s, s);
      const int64_t p = lat.splat_points[e];
      const float w = lat.splat_weights[e];
      const float* src = values + p * s;
      if (lat.in_scale != nullptr) {
        // (value * norm) first, then the weight: pydensecrf's order of rounding.
        const float sc = lat.in_scale[p];
        for (int64_t k = 0; k < s; k += W) {
          store<W>(dst + k, load<W>(dst + k) + w * (load<W>(src + k) * sc));
        }
      } else {
        for (int64_t k = 0; k < s; k += W) {
          store<W>(dst + k, load<W>(dst + k) + w * load<W>(src + k));
        }
      }
    }
  }
}

FASTSEG_CLONES void splat_range(const LatticeView& lat, const float* values, int64_t s, float* buf,
                                int64_t v_begin, int64_t v_end) {
  FASTSEG_BY_WIDTH(s, splat_range_w, lat, values, s, buf, v_begin, v_end);
}

// Point p's splat contributions, scattered: its weighted row goes to the row of each of its
// vertices, row_of(u); a vertex's first contribution (first(u), called once per vertex met, in
// entry order) is stored, later ones are added. (value * norm) first, then the weight:
// pydensecrf's order of rounding.
template <int W, typename RowOf, typename First>
FASTSEG_INLINE void scatter_point(const LatticeView& lat, const float* values, int64_t s, int64_t p,
                                  const RowOf& row_of, const First& first) {
  const int dp1 = lat.d + 1;
  const float* src = values + p * s;
  const float* in_scale = lat.in_scale;
  const float sc = in_scale != nullptr ? in_scale[p] : 1.f;
  for (int r = 0; r < dp1; ++r) {
    const float w = lat.weights[p * dp1 + r];
    const int64_t u = lat.vertices[p * dp1 + r];
    float* dst = row_of(u);
    if (first(u)) {
      if (in_scale != nullptr) {
        for (int64_t k = 0; k < s; k += W) store<W>(dst + k, w * (load<W>(src + k) * sc));
      } else {
        for (int64_t k = 0; k < s; k += W) store<W>(dst + k, w * load<W>(src + k));
      }
    } else if (in_scale != nullptr) {
      for (int64_t k = 0; k < s; k += W) {
        store<W>(dst + k, load<W>(dst + k) + w * (load<W>(src + k) * sc));
      }
    } else {
      for (int64_t k = 0; k < s; k += W) {
        store<W>(dst + k, load<W>(dst + k) + w * load<W>(src + k));
      }
    }
  }
}

// The last point of vertex v: its points are listed in point order, so the end of its CSR
// range. Once the splat has passed it, v has all its contributions.
FASTSEG_INLINE int64_t last_point(const LatticeView& lat, int64_t v) {
  return lat.splat_points[lat.splat_offsets[v + 1] - 1];
}

// Scatter form of the splat, one thread: points in order add their weighted rows to their
// vertices. Every vertex receives its contributions in entry order, exactly as splat_range_w
// sums them, so the two forms give the same values; this one streams through the values
// instead of gathering scattered rows. When vertices are numbered by first use in entry order
// (as the build numbers them), the vertex a point meets first is always the next number, so
// its first contribution is stored rather than added and only the rows no point reaches (row
// V, and the vertices of pydensecrf's phantom points after the others) need zeroing.
template <int W>
FASTSEG_INLINE void splat_scatter_w(const LatticeView& lat, const float* values, int64_t s,
                                    float* buf) {
  using F = typename Vec<W>::f;
  const bool first_use = lat.first_used >= 0;
  const int64_t zero_from = first_use ? lat.first_used * s : 0;
  const int64_t zero_to = (lat.n_vertices + 1) * s;
  for (int64_t k = zero_from; k < zero_to; k += W) store<W>(buf + k, F{} + 0.f);
  int64_t next = 0;  // the lowest vertex not reached yet, when first_use
  auto row_of = [&](int64_t u) { return buf + u * s; };
  auto first = [&](int64_t u) { return first_use && u == next ? (++next, true) : false; };
  for (int64_t p = 0; p < lat.n_points; ++p) scatter_point<W>(lat, values, s, p, row_of, first);
}

FASTSEG_CLONES void splat_scatter(const LatticeView& lat, const float* values, int64_t s,
                                  float* buf) {
  FASTSEG_BY_WIDTH(s, splat_scatter_w, lat, values, s, buf);
}

// All d+1 blur passes in one sweep over the vertices, for lattices whose blur neighbours are
// all within `reach` rows (the gaussian lattice of an image: about one image row of vertices).
// Vertices are processed in blocks of B >= reach rows; pass j works on block k - 2j while pass
// 0 works on block k, so every row a pass reads was finished by the pass before it. Passes
// 0..d-1 write ring buffers of 4B rows that stay in cache; the last pass writes the output
// buffer. Each value is computed by the same expression from the same inputs as blur_range:
// same bits.
//
// The splat can feed the sweep too, when vertices are numbered by first use: points are
// splatted in order into one more ring, kept just far enough ahead of pass 0 that every vertex
// it reads has received all its points. Then the full-size buffer is written once (by the last
// pass) instead of three times (splat, read back, last pass). A vertex is complete once the
// splat has passed its last point; `splat_lead` bounds how many vertices can be started and
// not complete at once, which sizes that ring.
struct SweepPlan {
  int64_t block;       // B
  int64_t ring;        // rows per pass ring, a power of two >= 4B
  int64_t splat_ring;  // rows of the splat ring (a power of two), or 0: the splat is separate
};

// Splat state of a fused sweep: points before `point` are splatted; vertices below `next`
// are started, those below `complete` have all their points.
struct SweepSplat {
  int64_t point = 0, next = 0, complete = 0;
};

// Splats points in order into the splat ring until vertices [0, target) are complete, as
// splat_scatter_w does into a full buffer.
template <int W>
FASTSEG_INLINE void sweep_splat_until(const LatticeView& lat, const float* values, int64_t s,
                                      float* rows, int64_t mask, int64_t target, SweepSplat* st) {
  auto row_of = [&](int64_t u) { return rows + (u & mask) * s; };
  auto first = [&](int64_t u) { return u == st->next ? (++st->next, true) : false; };
  while (st->complete < target && st->point < lat.n_points) {
    scatter_point<W>(lat, values, s, st->point, row_of, first);
    ++st->point;
    while (st->complete < st->next && last_point(lat, st->complete) < st->point) ++st->complete;
  }
}

// `values` is null when `a` already holds the splat: the last pass then writes the result back
// into it, over rows pass 0 no longer needs (it is 2d >= 2 blocks ahead). Otherwise the values
// are splatted on the way and `a` only receives the result.
template <int W>
FASTSEG_INLINE void sweep_blur_w(const LatticeView& lat, const float* values, float* a, int64_t s,
                                 bool reverse, const SweepPlan& plan, float* rings,
                                 const float* zero) {
  const int64_t nv = lat.n_vertices;
  const int d = lat.d;
  const int64_t mask = plan.ring - 1;
  const int64_t splat_mask = plan.splat_ring - 1;
  float* splat_rows = rings + d * plan.ring * s;
  const bool fused = values != nullptr;
  const int64_t n_blocks = (nv + plan.block - 1) / plan.block;
  constexpr int64_t kLag = 2;
  SweepSplat splat;
  auto in_row = [&](int j, int64_t v) -> const float* {
    if (v == nv) return zero;
    if (j > 0) return rings + ((j - 1) * plan.ring + (v & mask)) * s;
    return fused ? splat_rows + (v & splat_mask) * s : a + v * s;
  };
  for (int64_t step = 0; step < n_blocks + kLag * d; ++step) {
    for (int j = 0; j <= d; ++j) {
      const int64_t k = step - kLag * j;
      if (k < 0 || k >= n_blocks) continue;
      // Pass 0 on block k reads rows [(k-1)B, (k+2)B) (as B >= reach): all must be complete.
      if (j == 0 && fused) {
        sweep_splat_until<W>(lat, values, s, splat_rows, splat_mask,
                             std::min(nv, (k + 2) * plan.block), &splat);
      }
      const int dir = reverse ? d - j : j;
      const int32_t* nb = lat.neighbors + static_cast<int64_t>(dir) * nv * 2;
      const int64_t end = std::min(nv, (k + 1) * plan.block);
      for (int64_t v = k * plan.block; v < end; ++v) {
        const float* x = in_row(j, v);
        const float* n1 = in_row(j, nb[2 * v]);
        const float* n2 = in_row(j, nb[2 * v + 1]);
        float* out = j == d ? a + v * s : rings + (j * plan.ring + (v & mask)) * s;
        for (int64_t c = 0; c < s; c += W) {
          store<W>(out + c, load<W>(x + c) + 0.5f * (load<W>(n1 + c) + load<W>(n2 + c)));
        }
      }
    }
  }
}

FASTSEG_CLONES void sweep_blur(const LatticeView& lat, const float* values, float* a, int64_t s,
                               bool reverse, const SweepPlan& plan, float* rings,
                               const float* zero) {
  FASTSEG_BY_WIDTH(s, sweep_blur_w, lat, values, a, s, reverse, plan, rings, zero);
}

// The sweep pays off while its rings stay cache-resident and the lattice is much longer than
// them: measured here, 5-9% of a mean-field iteration with 21 labels (rings of 0.8 MB); with
// 182 labels the pass rings alone would take 6 MB and that sweep measured slower than the
// passes, hence the 4 MB cap. Fusing the splat in saves a write and a read of the whole splat
// buffer, which outweighs rings far beyond the caches: astronaut with 182 labels (9 MB of
// rings) 5% faster on two threads and 7-9% on one, 1024x768 with 182 labels (18 MB) 10%; hence
// a 24 MB cap for fused sweeps. Lattices with far-apart neighbours (the bilateral one) never
// qualify.
constexpr int64_t kMaxRingBytes = int64_t(4) << 20;
constexpr int64_t kMaxFusedRingBytes = int64_t(24) << 20;

int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

bool plan_sweep(const LatticeView& lat, int64_t s, bool fuse_splat, SweepPlan* plan) {
  if (lat.neighbor_reach < 0) return false;
  const int64_t block = std::max<int64_t>(lat.neighbor_reach, 256);
  const int64_t ring = pow2_at_least(4 * block);
  if (lat.n_vertices < 4 * ring) return false;
  const int64_t row_bytes = s * static_cast<int64_t>(sizeof(float));
  const int64_t ring_bytes = static_cast<int64_t>(lat.d) * ring * row_bytes;
  if (fuse_splat && lat.splat_lead >= 0) {
    const int64_t splat_ring = pow2_at_least(3 * block + lat.splat_lead + lat.d + 1);
    if (ring_bytes + splat_ring * row_bytes <= kMaxFusedRingBytes) {
      *plan = SweepPlan{block, ring, splat_ring};
      return true;
    }
  }
  if (ring_bytes > kMaxRingBytes) return false;
  *plan = SweepPlan{block, ring, 0};
  return true;
}

template <int W>
FASTSEG_INLINE void blur_range_w(const int32_t* nb, const float* src, float* dst, int64_t s,
                                 int64_t v_begin, int64_t v_end) {
  for (int64_t v = v_begin; v < v_end; ++v) {
    if (v + kAhead < v_end) {
      prefetch_row(src + static_cast<int64_t>(nb[2 * (v + kAhead)]) * s, s);
      prefetch_row(src + static_cast<int64_t>(nb[2 * (v + kAhead) + 1]) * s, s);
    }
    const float* a = src + v * s;
    const float* n1 = src + static_cast<int64_t>(nb[2 * v]) * s;
    const float* n2 = src + static_cast<int64_t>(nb[2 * v + 1]) * s;
    float* out = dst + v * s;
    for (int64_t k = 0; k < s; k += W) {
      store<W>(out + k, load<W>(a + k) + 0.5f * (load<W>(n1 + k) + load<W>(n2 + k)));
    }
  }
}

FASTSEG_CLONES void blur_range(const int32_t* nb, const float* src, float* dst, int64_t s,
                               int64_t v_begin, int64_t v_end) {
  FASTSEG_BY_WIDTH(s, blur_range_w, nb, src, dst, s, v_begin, v_end);
}

// The same pass in place along chains [c_begin, c_end) of one direction: each chained vertex
// becomes x + 0.5 (previous + next) from the values before the pass, a missing neighbour read
// from the zero row: blur_range_w's expression on the same operands, so the same bits. `prev`
// (s floats) holds the previous vertex's value from before the pass. Unchained vertices keep
// their value, which blur_range_w computes as x + 0.5 (0 + 0): the same number (a -0 stays -0
// here and becomes +0 there; the two compare equal, and so do all later sums).
template <int W>
FASTSEG_INLINE void blur_chains_w(const int32_t* chain, const int64_t* starts, int64_t c_begin,
                                  int64_t c_end, float* x, int64_t s, float* prev,
                                  const float* zero) {
  const int64_t e_end = starts[c_end];
  for (int64_t c = c_begin; c < c_end; ++c) {
    const float* before = zero;
    const int64_t last = starts[c + 1] - 1;
    for (int64_t e = starts[c]; e <= last; ++e) {
      if (e + kAhead < e_end) prefetch_row(x + static_cast<int64_t>(chain[e + kAhead]) * s, s);
      float* cur = x + static_cast<int64_t>(chain[e]) * s;
      const float* after = e < last ? x + static_cast<int64_t>(chain[e + 1]) * s : zero;
      for (int64_t k = 0; k < s; k += W) {
        const typename Vec<W>::f old = load<W>(cur + k);
        store<W>(cur + k, old + 0.5f * (load<W>(before + k) + load<W>(after + k)));
        store<W>(prev + k, old);
      }
      before = prev;
    }
  }
}

FASTSEG_CLONES void blur_chains(const int32_t* chain, const int64_t* starts, int64_t c_begin,
                                int64_t c_end, float* x, int64_t s, float* prev,
                                const float* zero) {
  FASTSEG_BY_WIDTH(s, blur_chains_w, chain, starts, c_begin, c_end, x, s, prev, zero);
}

// emit(k, acc) with acc = out_scale[p] * sum_r (alpha w_r) buf[vertex_r][k .. k+W), accumulated
// from zero in vertex order, for every chunk k of W lanes: the caller stores it (slice) or adds
// it to the logits straight from registers (the update).
//
// The point's row pointers and scaled weights are loaded once, before the chunks: a caller's
// stores may alias anything as far as the compiler knows, so reading them inside the chunk
// loop reloaded indices, weights and alpha for every chunk (the update ran 11% faster on one
// thread without). kDp1 > 0 fixes d + 1 at compile time, so they stay in registers; kDp1 = 0
// reads it from the view (d > 6).
template <int W, int kDp1, typename Emit>
FASTSEG_INLINE void slice_point_d(const LatticeView& lat, const float* buf, int64_t s, int64_t p,
                                  const Emit& emit) {
  using F = typename Vec<W>::f;
  const int dp1 = kDp1 > 0 ? kDp1 : lat.d + 1;
  const int32_t* vert = lat.vertices + p * dp1;
  const float* wts = lat.weights + p * dp1;
  const float* rows[kDp1 > 0 ? kDp1 : kMaxDim + 1];
  F w[kDp1 > 0 ? kDp1 : kMaxDim + 1];
  for (int r = 0; r < dp1; ++r) {
    rows[r] = buf + static_cast<int64_t>(vert[r]) * s;
    w[r] = F{} + wts[r] * lat.alpha;
  }
  const float* out_scale = lat.out_scale;
  const float sc = out_scale != nullptr ? out_scale[p] : 1.f;
  for (int64_t k = 0; k < s; k += W) {
    F acc = F{} + 0.f;
    for (int r = 0; r < dp1; ++r) acc = acc + w[r] * load<W>(rows[r] + k);
    if (out_scale != nullptr) acc = acc * sc;
    emit(k, acc);
  }
}

// Dispatches d + 1 = 2..kMaxSliceDp1 (d = 1..6, the 2-D and 5-D terms of DenseCRF2D among
// them) to its compile-time instance; larger d take the runtime one.
constexpr int kMaxSliceDp1 = 7;

template <int W, int kDp1 = 2, typename Emit>
FASTSEG_INLINE void slice_point(const LatticeView& lat, const float* buf, int64_t s, int64_t p,
                                const Emit& emit) {
  if constexpr (kDp1 > kMaxSliceDp1) {
    slice_point_d<W, 0>(lat, buf, s, p, emit);
  } else if (lat.d + 1 == kDp1) {
    slice_point_d<W, kDp1>(lat, buf, s, p, emit);
  } else {
    slice_point<W, kDp1 + 1>(lat, buf, s, p, emit);
  }
}

template <int W>
FASTSEG_INLINE void slice_point_to(const LatticeView& lat, const float* buf, int64_t s, int64_t p,
                                   float* out) {
  slice_point<W>(lat, buf, s, p,
                 [out](int64_t k, typename Vec<W>::f acc) { store<W>(out + k, acc); });
}

FASTSEG_CLONES void slice_range(const LatticeView& lat, const float* buf, int64_t s, float* out,
                                int64_t p_begin, int64_t p_end) {
  for (int64_t p = p_begin; p < p_end; ++p) {
    FASTSEG_BY_WIDTH(s, slice_point_to, lat, buf, s, p, out + p * s);
  }
}

// exp(x) for x <= 0 (Cephes' expf polynomial, about 1 ulp) on a vector. Arguments below -86
// give 0: the clamp keeps every intermediate a normal float, because denormal arithmetic costs
// a microcode assist per lane (it made a whole pass 2-3x slower), and probabilities under
// 1e-37 do not matter.
template <int W>
FASTSEG_INLINE typename Vec<W>::f exp_nonpositive(typename Vec<W>::f x) {
  using F = typename Vec<W>::f;
  using I = typename Vec<W>::i;
  constexpr float kMinArg = -86.0f;
  const I underflow = x < kMinArg;
  x = underflow ? F{} + kMinArg : x;
  const F t = x * 1.44269504088896341f;
  const F n = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const F r2 = r * r;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  F scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? F{} + 0.f : p * scale;
}

// Sum and max of a vector's lanes in a fixed pairwise order (deterministic): lanes i and
// i + W/2, then i and i + W/4, ..., computed on halves of the vector in registers.
typedef float Float2 __attribute__((vector_size(8)));

FASTSEG_INLINE float lane_sum(Vec<1>::f v) { return v[0]; }
FASTSEG_INLINE float lane_sum(Vec<4>::f v) {
  const Float2 h = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
  return h[0] + h[1];
}
FASTSEG_INLINE float lane_sum(Vec<8>::f v) {
  return lane_sum(Vec<4>::f(__builtin_shufflevector(v, v, 0, 1, 2, 3) +
                            __builtin_shufflevector(v, v, 4, 5, 6, 7)));
}
template <typename V>
FASTSEG_INLINE V vmax(V a, V b) {
  return b > a ? b : a;
}
FASTSEG_INLINE float lane_max(Vec<1>::f v) { return v[0]; }
FASTSEG_INLINE float lane_max(Vec<4>::f v) {
  const Float2 h = vmax(__builtin_shufflevector(v, v, 0, 1), __builtin_shufflevector(v, v, 2, 3));
  return h[1] > h[0] ? h[1] : h[0];
}
FASTSEG_INLINE float lane_max(Vec<8>::f v) {
  return lane_max(Vec<4>::f(
      vmax(__builtin_shufflevector(v, v, 0, 1, 2, 3), __builtin_shufflevector(v, v, 4, 5, 6, 7))));
}

// Rows [0, n_rows) of `rows` (stride s) get softmax over their first m lanes, as pydensecrf's
// expAndNormalize computes it (subtract the max, exponentiate, divide by the sum); padded lanes
// end as 0. Each phase runs over a block of rows, whose independent exponentials keep the
// pipeline full (one row alone is a chain of dependent operations); reductions run lane-wise
// over whole vectors. Padded lanes (all in the last chunk, as s - m < W) are masked in
// registers: -inf for the max, 0 after the exponential.
constexpr int kSoftmaxBlock = 16;

template <int W>
FASTSEG_INLINE void softmax_rows(float* rows, int64_t n_rows, int64_t m, int64_t s) {
  using F = typename Vec<W>::f;
  using I = typename Vec<W>::i;
  const int64_t last = s - W;
  int32_t lane_valid[W];
  for (int i = 0; i < W; ++i) lane_valid[i] = last + i < m ? -1 : 0;
  I valid;
  std::memcpy(&valid, lane_valid, sizeof(valid));
  const F minus_inf = F{} - __builtin_inff();
  float row_max[kSoftmaxBlock], row_sum[kSoftmaxBlock];
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* row = rows + r * s;
    F mx = valid ? load<W>(row + last) : minus_inf;
    for (int64_t k = 0; k < last; k += W) mx = vmax(mx, load<W>(row + k));
    row_max[r] = lane_max(mx);
  }
  // The exponentials of the whole block as one flat array, 16 floats at a time (a row of 24
  // floats is 1.5 such vectors): each lane goes through the same operations as in a row-wise
  // loop, so the same bits, in half the instructions where AVX-512 is there (the
  // exponential was a fifth of the update; this takes 5-7% off it on one thread). Padded
  // lanes get whatever the exponential gives for them and are cleared before the sums.
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = rows + r * s;
    for (int64_t k = 0; k < s; k += W) store<W>(row + k, load<W>(row + k) - row_max[r]);
  }
  const int64_t total = n_rows * s;
  int64_t k = 0;
  for (; k + 16 <= total; k += 16) store<16>(rows + k, exp_nonpositive<16>(load<16>(rows + k)));
  for (; k < total; k += W) store<W>(rows + k, exp_nonpositive<W>(load<W>(rows + k)));
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = rows + r * s;
    F sum = F{} + 0.f;
    for (int64_t c = 0; c < last; c += W) sum = sum + load<W>(row + c);
    const F e = valid ? load<W>(row + last) : F{} + 0.f;
    store<W>(row + last, e);
    row_sum[r] = lane_sum(sum + e);
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    float* row = rows + r * s;
    for (int64_t k = 0; k < s; k += W) store<W>(row + k, load<W>(row + k) / row_sum[r]);
  }
}

// Logits of point p: -unary + every term's message, written into q's row.
template <int W>
FASTSEG_INLINE void logits_point(const TermUpdate* terms, int n_terms, const float* unary,
                                 int64_t s, float* q, int64_t p) {
  float* row = q + p * s;
  const float* u = unary + p * s;
  for (int64_t k = 0; k < s; k += W) store<W>(row + k, -load<W>(u + k));
  for (int t = 0; t < n_terms; ++t) {
    const TermUpdate& term = terms[t];
    if (term.dense_message != nullptr) {
      const float* msg = term.dense_message + p * s;
      for (int64_t k = 0; k < s; k += W) store<W>(row + k, load<W>(row + k) + load<W>(msg + k));
    } else {
      const float* c = term.label_compat;
      slice_point<W>(*term.lattice, term.result, s, p, [row, c](int64_t k, typename Vec<W>::f f) {
        store<W>(row + k, load<W>(row + k) + load<W>(c + k) * f);
      });
    }
  }
}

FASTSEG_INLINE void prefetch_point(const TermUpdate* terms, int n_terms, int64_t s, int64_t p) {
  for (int t = 0; t < n_terms; ++t) {
    if (terms[t].dense_message != nullptr) continue;
    const LatticeView& lat = *terms[t].lattice;
    for (int r = 0; r <= lat.d; ++r) {
      prefetch_row(terms[t].result + static_cast<int64_t>(lat.vertices[p * (lat.d + 1) + r]) * s,
                   s);
    }
  }
}

template <int W>
FASTSEG_INLINE void update_range_w(const TermUpdate* terms, int n_terms, const float* unary,
                                   int64_t m, int64_t s, float* q, int64_t p_begin, int64_t p_end) {
  for (int64_t b = p_begin; b < p_end; b += kSoftmaxBlock) {
    const int64_t b_end = std::min(p_end, b + kSoftmaxBlock);
    for (int64_t p = b; p < b_end; ++p) {
      // Each point gathers (d+1) rows per term: 8 points ahead measured 2-9% faster than 4.
      if (p + 8 < p_end) prefetch_point(terms, n_terms, s, p + 8);
      logits_point<W>(terms, n_terms, unary, s, q, p);
    }
    softmax_rows<W>(q + b * s, b_end - b, m, s);
  }
}

FASTSEG_CLONES void update_range(const TermUpdate* terms, int n_terms, const float* unary,
                                 int64_t m, int64_t s, float* q, int64_t p_begin, int64_t p_end) {
  FASTSEG_BY_WIDTH(s, update_range_w, terms, n_terms, unary, m, s, q, p_begin, p_end);
}

template <int W>
FASTSEG_INLINE void softmax_neg_range_w(const float* unary, int64_t m, int64_t s, float* q,
                                        int64_t p_begin, int64_t p_end) {
  for (int64_t b = p_begin; b < p_end; b += kSoftmaxBlock) {
    const int64_t b_end = std::min(p_end, b + kSoftmaxBlock);
    for (int64_t k = b * s; k < b_end * s; k += W) store<W>(q + k, -load<W>(unary + k));
    softmax_rows<W>(q + b * s, b_end - b, m, s);
  }
}

FASTSEG_CLONES void softmax_neg_range(const float* unary, int64_t m, int64_t s, float* q,
                                      int64_t p_begin, int64_t p_end) {
  FASTSEG_BY_WIDTH(s, softmax_neg_range_w, unary, m, s, q, p_begin, p_end);
}

}  // namespace

// Largest |neighbour - vertex| over the blur neighbours of vertices [begin, end) along one
// direction, missing ones (= nv) excluded; branch-free so that it vectorises.
static FASTSEG_CLONES int32_t neighbor_distance_range(const int32_t* nb, int32_t nv, int32_t begin,
                                                      int32_t end) {
  int32_t acc = 0;
  for (int32_t v = begin; v < end; ++v) {
    const int32_t a = nb[2 * v], b = nb[2 * v + 1];
    const int32_t da = a == nv ? 0 : (a > v ? a - v : v - a);
    const int32_t db = b == nv ? 0 : (b > v ? b - v : v - b);
    acc = std::max(acc, std::max(da, db));
  }
  return acc;
}

// How many vertices the entries meet when, in order, they meet vertices 0, 1, 2, ... for the
// first time in that order (vertices numbered after those are met by no entry: those only
// pydensecrf's phantom points touch, fastseg/crf/phantom_points.py); -1 otherwise.
int64_t first_use_count(const int32_t* vertices, int64_t n_entries, int64_t nv) {
  int64_t next = 0;
  for (int64_t e = 0; e < n_entries; ++e) {
    const int64_t u = vertices[e];
    if (u == next) {
      ++next;
    } else if (u > next || u < 0) {
      return -1;
    }
  }
  return next <= nv ? next : -1;
}

// The most vertices started and not yet complete after any point, splatting points in order
// (the state SweepSplat tracks); needs first-use numbering.
static int64_t max_splat_lead(const LatticeView& lat) {
  const int dp1 = lat.d + 1;
  int64_t next = 0, complete = 0, lead = 0;
  for (int64_t p = 0; p < lat.n_points; ++p) {
    for (int r = 0; r < dp1; ++r) next += lat.vertices[p * dp1 + r] == next;
    while (complete < next && last_point(lat, complete) <= p) ++complete;
    lead = std::max(lead, next - complete);
  }
  return lead;
}

// Largest |neighbour - vertex| over the blur neighbours that exist, exactly while it is at most
// `limit`; past that, some distance above `limit` (whichever a thread found first): the scan
// stops there, as callers need the reach only up to `limit`. (A photograph's bilateral lattice
// has a vertex's neighbours 10^5 rows apart: its scan now stops almost at once.)
int64_t max_neighbor_distance(const int32_t* neighbors, int d, int64_t nv, int64_t limit) {
  constexpr int64_t kBlock = 4096;
  std::atomic<bool> beyond{false};
  int64_t reach = 0;
  for (int j = 0; j <= d && !beyond.load(std::memory_order_relaxed); ++j) {
    const int32_t* nb = neighbors + static_cast<int64_t>(j) * nv * 2;
    reach = std::max(reach,
                     at::parallel_reduce(
                         0, nv, 1 << 16, int64_t(0),
                         [&](int64_t begin, int64_t end, int64_t acc) {
                           for (int64_t b = begin;
                                b < end && !beyond.load(std::memory_order_relaxed); b += kBlock) {
                             acc = std::max<int64_t>(
                                 acc, neighbor_distance_range(
                                          nb, static_cast<int32_t>(nv), static_cast<int32_t>(b),
                                          static_cast<int32_t>(std::min(end, b + kBlock))));
                             if (acc > limit) beyond.store(true, std::memory_order_relaxed);
                           }
                           return acc;
                         },
                         [](int64_t x, int64_t y) { return std::max(x, y); }));
  }
  return reach;
}

LatticeView make_view(const at::Tensor& vertices, const at::Tensor& weights,
                      const at::Tensor& neighbors, const at::Tensor& splat_offsets,
                      const at::Tensor& splat_points, const at::Tensor& splat_weights,
                      const at::Tensor& in_scale, const at::Tensor& out_scale, bool for_tasks) {
  LatticeView v;
  v.d = static_cast<int>(vertices.size(1)) - 1;
  v.n_points = vertices.size(0);
  v.n_vertices = neighbors.size(1);
  v.vertices = vertices.data_ptr<int32_t>();
  v.weights = weights.data_ptr<float>();
  v.neighbors = neighbors.data_ptr<int32_t>();
  v.splat_offsets = splat_offsets.data_ptr<int64_t>();
  v.splat_points = splat_points.data_ptr<int32_t>();
  v.splat_weights = splat_weights.data_ptr<float>();
  v.in_scale = data_or_null(in_scale);
  v.out_scale = data_or_null(out_scale);
  // pydensecrf: float alpha = 1.0f / (1 + powf(2, -d))
  v.alpha = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-v.d)));
  if (!for_tasks) return v;
  // plan_sweep needs nv >= 4 ring >= 16 reach: a reach beyond nv / 16 rules sweeps out, whatever
  // its exact value.
  const int64_t sweepable_reach = v.n_vertices / 16;
  v.neighbor_reach = max_neighbor_distance(v.neighbors, v.d, v.n_vertices, sweepable_reach);
  v.first_used = first_use_count(v.vertices, v.n_points * (v.d + 1), v.n_vertices);
  // Only lattices that may be swept with rows of 4 or more floats need the splat lead, and the
  // fused sweep needs every vertex to be met by some point.
  const int64_t min_ring_bytes = 4 * v.neighbor_reach * v.d * 4 * int64_t(sizeof(float));
  if (v.first_used == v.n_vertices && v.neighbor_reach <= sweepable_reach &&
      min_ring_bytes <= kMaxFusedRingBytes) {
    v.splat_lead = max_splat_lead(v);
  }
  return v;
}

// One direction's chains: a scan for first vertices (no previous neighbour, a next one), then
// a walk from each, checking that the table is symmetric (the next vertex's previous is the
// current one) and that every vertex with a neighbour ends up chained; false if not. Each step
// of a walk is a dependent load from a table of megabytes, so kWalkers walks advance in
// lockstep, each prefetching its next entry a round ahead: their cache misses overlap (1.5x
// faster than one walk at a time).
static bool chain_direction(const int32_t* nb, int64_t nv, std::vector<int32_t>* chain,
                            std::vector<int64_t>* starts) {
  constexpr int kWalkers = 16;
  // Branch-free scan (whether a vertex comes first in a chain is a coin flip to the predictor).
  int64_t linked = 0;  // vertices with at least one neighbour
  std::vector<int32_t> firsts(nv + 1);
  int64_t n_firsts = 0;
  for (int64_t v = 0; v < nv; ++v) {
    const int64_t before = nb[2 * v], after = nb[2 * v + 1];
    linked += (before != nv) | (after != nv);
    firsts[n_firsts] = static_cast<int32_t>(v);
    n_firsts += (before == nv) & (after != nv);
  }
  chain->reserve(linked);
  starts->reserve(n_firsts + 1);
  std::vector<int32_t> walk[kWalkers];
  for (int64_t f = 0; f < n_firsts; f += kWalkers) {
    const int n = static_cast<int>(std::min<int64_t>(kWalkers, n_firsts - f));
    // Walk w stands at vertex at[w], reached from prev[w] (nv for a first vertex), and has
    // prefetched its table entry; each round checks and records it, then moves on.
    int64_t at[kWalkers], prev[kWalkers];
    for (int w = 0; w < n; ++w) {
      at[w] = firsts[f + w];
      prev[w] = nv;
      walk[w].clear();
    }
    for (bool moving = true; moving;) {
      moving = false;
      for (int w = 0; w < n; ++w) {
        const int64_t u = at[w];
        if (u == nv) continue;
        if (u < 0 || u > nv || nb[2 * u] != prev[w]) return false;
        walk[w].push_back(static_cast<int32_t>(u));
        prev[w] = u;
        at[w] = nb[2 * u + 1];
        if (at[w] != nv) {
          __builtin_prefetch(nb + 2 * at[w]);
          moving = true;
        }
      }
    }
    for (int w = 0; w < n; ++w) {
      if (static_cast<int64_t>(chain->size() + walk[w].size()) > linked) return false;
      starts->push_back(static_cast<int64_t>(chain->size()));
      chain->insert(chain->end(), walk[w].begin(), walk[w].end());
    }
  }
  starts->push_back(static_cast<int64_t>(chain->size()));
  return static_cast<int64_t>(chain->size()) == linked;
}

BlurChains build_blur_chains(const LatticeView& lat) {
  const int64_t nv = lat.n_vertices;
  const int n_dirs = lat.d + 1;
  BlurChains chains;
  chains.vertices.resize(n_dirs);
  chains.starts.resize(n_dirs);
  std::vector<char> ok(n_dirs, 0);
  parallel_for_dynamic(n_dirs, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      ok[j] =
          chain_direction(lat.neighbors + j * nv * 2, nv, &chains.vertices[j], &chains.starts[j]);
    }
  });
  if (std::find(ok.begin(), ok.end(), 0) != ok.end()) return BlurChains{};
  return chains;
}

void splat(const LatticeView& lat, const float* values, int64_t s, float* buf) {
  std::fill(buf + lat.n_vertices * s, buf + (lat.n_vertices + 1) * s, 0.f);
  parallel_for_dynamic(lat.n_vertices, kDynamicVertices, [&](int64_t begin, int64_t end) {
    splat_range(lat, values, s, buf, begin, end);
  });
}

namespace {

// A blur pass is run in units: vertices when it reads one buffer and writes another, chains
// when the lattice has chains and the pass runs in place.
int64_t pass_units(const LatticeView& lat, int step, bool reverse) {
  if (lat.chains == nullptr) return lat.n_vertices;
  return static_cast<int64_t>(lat.chains->starts[reverse ? lat.d - step : step].size()) - 1;
}

// Blur pass `step` (of 0..d, in the order the directions run) over units [begin, end): from
// src into dst, or, with chains, in place in src (dst unused). Rows V of src and dst are zero.
void blur_pass_units(const LatticeView& lat, int step, bool reverse, float* src, float* dst,
                     int64_t s, int64_t begin, int64_t end) {
  const int j = reverse ? lat.d - step : step;
  if (lat.chains == nullptr) {
    const int32_t* nb = lat.neighbors + static_cast<int64_t>(j) * lat.n_vertices * 2;
    blur_range(nb, src, dst, s, begin, end);
    return;
  }
  std::unique_ptr<float[]> prev(new float[s]);
  blur_chains(lat.chains->vertices[j].data(), lat.chains->starts[j].data(), begin, end, src, s,
              prev.get(), src + lat.n_vertices * s);
}

// Blur passes of a, which holds their input; returns the buffer holding the result: a itself
// with chains, else a or b (the passes ping-pong between them). Directions run 0..d, or d..0
// when reverse (the transposed filter).
float* blur_passes(const LatticeView& lat, float* a, float* b, int64_t s, bool reverse) {
  const int64_t nv = lat.n_vertices;
  const bool in_place = lat.chains != nullptr;
  if (!in_place) std::fill(b + nv * s, b + (nv + 1) * s, 0.f);
  for (int step = 0; step <= lat.d; ++step) {
    parallel_for_dynamic(pass_units(lat, step, reverse),
                         in_place ? kDynamicChains : kDynamicVertices,
                         [&](int64_t begin, int64_t end) {
                           blur_pass_units(lat, step, reverse, a, b, s, begin, end);
                         });
    if (!in_place) std::swap(a, b);
  }
  return a;
}

// The blur passes of one term, shared out in chunks: threads that finish their own tasks early
// take chunks as soon as this term's splat is complete (they never wait for it), pass by pass,
// and whatever is left runs on every thread afterwards. Chunks are numbered across passes and
// handed out in order; a chunk of pass k runs once every chunk of the passes before is done
// (only chunks below it can complete first, so a count of completed chunks tells), and a
// thread waits at most for chunks that others are running. Any split computes every row the
// same way.
class SharedPasses {
 public:
  // Passes run in place in `a` with chains, else from a to b and back; rows V are zero.
  SharedPasses(const LatticeView& lat, bool reverse, float* a, float* b, int64_t s)
      : lat_(lat),
        reverse_(reverse),
        a_(a),
        b_(b),
        s_(s),
        n_passes_(lat.d + 1),
        chunk_(lat.chains != nullptr ? kDynamicChains : kDynamicVertices) {
    for (int step = 0; step < n_passes_; ++step) {
      first_chunk_.push_back(n_chunks_);
      n_chunks_ += (pass_units(lat, step, reverse) + chunk_ - 1) / chunk_;
    }
    first_chunk_.push_back(n_chunks_);
  }

  void mark_ready() { ready_.store(true, std::memory_order_release); }

  void help() {
    if (!ready_.load(std::memory_order_acquire)) return;
    for (int64_t c = next_.fetch_add(1); c < n_chunks_; c = next_.fetch_add(1)) run_chunk(c);
  }

  // Runs what is left on every thread; returns the buffer that holds the result.
  float* finish() {
    mark_ready();
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { help(); });
    return lat_.chains != nullptr || n_passes_ % 2 == 0 ? a_ : b_;
  }

 private:
  void run_chunk(int64_t c) {
    int step = 0;
    while (c >= first_chunk_[step + 1]) ++step;
    while (completed_.load(std::memory_order_acquire) < first_chunk_[step]) spin_pause();
    const int64_t begin = (c - first_chunk_[step]) * chunk_;
    const int64_t end = std::min(pass_units(lat_, step, reverse_), begin + chunk_);
    float* src = lat_.chains != nullptr || step % 2 == 0 ? a_ : b_;
    float* dst = src == a_ ? b_ : a_;
    blur_pass_units(lat_, step, reverse_, src, dst, s_, begin, end);
    completed_.fetch_add(1, std::memory_order_release);
  }

  static void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  const LatticeView& lat_;
  const bool reverse_;
  float* a_;
  float* b_;
  const int64_t s_;
  const int n_passes_;
  const int64_t chunk_;
  int64_t n_chunks_ = 0;
  std::vector<int64_t> first_chunk_;   // first chunk of each pass, then the total
  std::atomic<int64_t> next_{0};       // next chunk to hand out
  std::atomic<int64_t> completed_{0};  // chunks done
  std::atomic<bool> ready_{false};
};

// A term's splat, and its whole blur when it has a sweep plan.
void splat_term(const LatticeView& lat, const SweepPlan* plan_or_null, const float* values,
                int64_t s, float* buf, bool reverse) {
  if (plan_or_null == nullptr) {
    splat_scatter(lat, values, s, buf);
    return;
  }
  const SweepPlan& plan = *plan_or_null;
  // Every ring row is written before it is read: no initialisation. (Up to 24 MB: pooled, so
  // the next iteration reuses mapped pages.)
  auto rings = scratch_large<float>((lat.d * plan.ring + plan.splat_ring) * s);
  const std::vector<float> zero(s, 0.f);
  if (plan.splat_ring > 0) {
    std::fill(buf + lat.n_vertices * s, buf + (lat.n_vertices + 1) * s, 0.f);
    sweep_blur(lat, values, buf, s, reverse, plan, rings.get(), zero.data());
  } else {
    splat_scatter(lat, values, s, buf);
    sweep_blur(lat, nullptr, buf, s, reverse, plan, rings.get(), zero.data());
  }
}

// Whether splat_and_blur sweeps term t, and with which plan.
bool sweeps(const LatticeView* const* lats, int n_terms, int t, int64_t s, SweepPlan* plan) {
  return !one_term_in_parallel(n_terms) && plan_sweep(*lats[t], s, /*fuse_splat=*/true, plan);
}

}  // namespace

bool one_term_in_parallel(int n_terms) { return n_terms == 1 && at::get_num_threads() >= 2; }

bool blurs_by_passes(const LatticeView* const* lats, int n_terms, int t, int64_t s) {
  SweepPlan plan;
  return !sweeps(lats, n_terms, t, s, &plan);
}

void splat_and_blur(const LatticeView* const* lats, int n_terms, const float* values, int64_t s,
                    float** bufs, float** spare, bool reverse) {
  if (one_term_in_parallel(n_terms)) {
    splat(*lats[0], values, s, bufs[0]);
    float* result = blur_passes(*lats[0], bufs[0], *spare, s, reverse);
    if (result != bufs[0]) std::swap(bufs[0], *spare);
    return;
  }
  // One task per term: splat in scatter form (same bits as the gather, streaming through the
  // values), then, where the lattice allows it, the cache-resident sweep blur. With two terms
  // on two threads the gaussian term's splat and sweep overlap the bilateral splat, and the
  // thread done first starts the bilateral term's blur passes: with 182 labels the gaussian
  // task is the longer one by ~30%. Sharing the first pass took 4-9% off a call (no change
  // with 21 labels, where the two tasks are even); going on with the later passes as soon as
  // each is complete, another 1-4% (182 labels 3525/3921 -> 3482/3745 ms, min/median of 8
  // alternating rounds; 21 labels 353/480 -> 338/473 of 14).
  // Only one term at a time can be mid-blur (a pass without chains needs the spare buffer):
  // the first one blurred by passes.
  std::vector<SweepPlan> plans(n_terms);
  std::vector<char> swept(n_terms, 0);
  int early = -1;
  for (int t = 0; t < n_terms; ++t) {
    swept[t] = sweeps(lats, n_terms, t, s, &plans[t]);
    if (!swept[t] && early < 0) early = t;
  }
  std::unique_ptr<SharedPasses> early_passes;
  if (early >= 0) {
    const LatticeView& lat = *lats[early];
    float* b = nullptr;  // in place along chains
    if (lat.chains == nullptr) {
      b = *spare;
      std::fill(b + lat.n_vertices * s, b + (lat.n_vertices + 1) * s, 0.f);
    }
    early_passes.reset(new SharedPasses(lat, reverse, bufs[early], b, s));
  }
  // Terms are handed out one at a time (more terms than threads: whoever is free next); a
  // thread with no term left helps with the early term's passes.
  parallel_for_dynamic(
      n_terms, 1,
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          splat_term(*lats[t], swept[t] ? &plans[t] : nullptr, values, s, bufs[t], reverse);
          if (t == early) early_passes->mark_ready();
        }
      },
      [&] {
        if (early_passes) early_passes->help();
      });
  for (int t = 0; t < n_terms; ++t) {
    if (swept[t]) continue;
    float* result =
        t == early ? early_passes->finish() : blur_passes(*lats[t], bufs[t], *spare, s, reverse);
    if (result != bufs[t]) std::swap(bufs[t], *spare);
  }
}

void slice(const LatticeView& lat, const float* buf, int64_t s, float* out) {
  parallel_for_dynamic(lat.n_points, kDynamicRows, [&](int64_t begin, int64_t end) {
    slice_range(lat, buf, s, out, begin, end);
  });
}

void update_rows(const TermUpdate* terms, int n_terms, const float* unary, int64_t n, int64_t m,
                 int64_t s, float* q) {
  // Chunks handed out dynamically: the update is a third of an iteration, and on a shared
  // machine one thread held back at the end of a static split stalled the other (2-6% of a
  // 21-label call with a competing process; no change on a quiet machine).
  parallel_for_dynamic(n, kDynamicRows, [&](int64_t begin, int64_t end) {
    update_range(terms, n_terms, unary, m, s, q, begin, end);
  });
}

void softmax_neg(const float* unary, int64_t n, int64_t m, int64_t s, float* q) {
  parallel_for_dynamic(n, kDynamicRows, [&](int64_t begin, int64_t end) {
    softmax_neg_range(unary, m, s, q, begin, end);
  });
}

// Copies an (n, m) matrix between two strided layouts, element (p, l) at p * sp + l * sl.
// Points go in blocks: a label-major side is walked along its contiguous points while the
// block's rows on the other side stay in cache. `zero_to` > m also zero-fills the destination
// rows' lanes [m, zero_to) (padding, for row-major destinations).
constexpr int64_t kCopyBlock = 64;

void copy_matrix(const float* src, int64_t src_sp, int64_t src_sl, float* dst, int64_t dst_sp,
                 int64_t dst_sl, int64_t n, int64_t m, int64_t zero_to) {
  parallel_for_dynamic((n + kCopyBlock - 1) / kCopyBlock, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * kCopyBlock, p1 = std::min(n, p0 + kCopyBlock);
      for (int64_t p = p0; p < p1; ++p) {
        for (int64_t l = m; l < zero_to; ++l) dst[p * dst_sp + l * dst_sl] = 0.f;
      }
      if (src_sl == 1 && dst_sl == 1) {
        for (int64_t p = p0; p < p1; ++p) {
          std::copy(src + p * src_sp, src + p * src_sp + m, dst + p * dst_sp);
        }
      } else {
        for (int64_t l = 0; l < m; ++l) {
          for (int64_t p = p0; p < p1; ++p) {
            dst[p * dst_sp + l * dst_sl] = src[p * src_sp + l * src_sl];
          }
        }
      }
    }
  });
}

void pad_rows(const float* src, int64_t stride_p, int64_t stride_l, int64_t n, int64_t m, int64_t s,
              float* dst) {
  copy_matrix(src, stride_p, stride_l, dst, s, 1, n, m, s);
}

void unpad_rows(const float* src, int64_t n, int64_t m, int64_t s, float* dst, int64_t stride_p,
                int64_t stride_l) {
  copy_matrix(src, s, 1, dst, stride_p, stride_l, n, m, m);
}

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
