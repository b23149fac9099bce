// The sweep on the CPU: every blur pass of a lattice whose neighbours are close in memory in one
// cache-resident pass over its vertices, with the splat fused in where it can be.
#include <algorithm>

#include "lattice/filter_steps_cpu.h"

namespace fastseg {
namespace lattice {
namespace cpu {

namespace {

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

}  // namespace

FASTSEG_CLONES void sweep_blur(const LatticeView& lat, const float* values, float* a, int64_t s,
                               bool reverse, const SweepPlan& plan, float* rings,
                               const float* zero) {
  FASTSEG_BY_WIDTH(s, sweep_blur_w, lat, values, a, s, reverse, plan, rings, zero);
}

namespace {

int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

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

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
