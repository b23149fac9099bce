// make_view: a built lattice's tensors as a LatticeView, with the facts about its numbering and
// neighbours that decide how splat_and_blur runs it.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "lattice/filter_steps_cpu.h"

namespace fastseg {
namespace lattice {
namespace cpu {

namespace {

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// Largest |neighbour - vertex| over the blur neighbours of vertices [begin, end) along one
// direction, missing ones (= nv) excluded; branch-free so that it vectorises.
FASTSEG_CLONES int32_t neighbor_distance_range(const int32_t* nb, int32_t nv, int32_t begin,
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
int64_t max_splat_lead(const LatticeView& lat) {
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

}  // namespace

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

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
