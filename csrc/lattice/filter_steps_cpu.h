// The splat and sweep steps of the CPU filter loops, shared between their files: the splat
// (filter_splat_cpu.cpp), the sweep (filter_sweep_cpu.cpp), the blur and the way terms are
// shared out between threads (filter_blur_cpu.cpp), and the lattice view's analysis
// (filter_view_cpu.cpp).
#pragma once

#include <cstdint>

#include "lattice/filter_loops_cpu.h"
#include "lattice/filter_rows_cpu.h"

namespace fastseg {
namespace lattice {
namespace cpu {

// Point p's splat contributions, scattered: its weighted row goes to the row of each of its
// vertices, row_of(u); a vertex's first contribution (first(u), called once per vertex met, in
// entry order) is stored, later ones are added. (value * norm) first, then the weight:
// pydensecrf's order of rounding.
template <int W, typename RowOf, typename First>
FASTSEG_INLINE void scatter_point(const LatticeView& lat, const float* values, int64_t s, int64_t p,
                                  const RowOf& row_of, const First& first) {
  const int dp1 = lat.d + 1;
  const float* src = values + p * s;
  prefetch_stream_ahead(values, s, p, lat.n_points);
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

// Gather form of the splat for vertices [v_begin, v_end): each sums its points' rows.
void splat_range(const LatticeView& lat, const float* values, int64_t s, float* buf,
                 int64_t v_begin, int64_t v_end);

// Scatter form of the splat, on one thread (see filter_splat_cpu.cpp).
void splat_scatter(const LatticeView& lat, const float* values, int64_t s, float* buf);

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

// A sweep plan for the lattice with rows of s floats (fusing the splat in when fuse_splat and
// the view allow it); false if the lattice cannot be swept.
bool plan_sweep(const LatticeView& lat, int64_t s, bool fuse_splat, SweepPlan* plan);

// Every blur pass of `a` in one sweep by `plan`; with `values` non-null, the splat of values
// too (see filter_sweep_cpu.cpp). `rings` holds the plan's rings, `zero` a row of s zeros.
void sweep_blur(const LatticeView& lat, const float* values, float* a, int64_t s, bool reverse,
                const SweepPlan& plan, float* rings, const float* zero);

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
