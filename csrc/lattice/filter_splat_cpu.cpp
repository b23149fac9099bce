// The splat on the CPU: the gather form (each vertex sums its points, in parallel) and the
// scatter form (points in order add to their vertices, one thread), which give the same bits.
#include <algorithm>

#include "common/parallel_dynamic.h"
#include "lattice/filter_steps_cpu.h"

namespace fastseg {
namespace lattice {
namespace cpu {

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

void splat(const LatticeView& lat, const float* values, int64_t s, float* buf) {
  std::fill(buf + lat.n_vertices * s, buf + (lat.n_vertices + 1) * s, 0.f);
  parallel_for_dynamic(lat.n_vertices, kDynamicVertices, [&](int64_t begin, int64_t end) {
    splat_range(lat, values, s, buf, begin, end);
  });
}

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
