// CPU loops of lattice filtering and of the mean-field update, shared by the filter operator
// (lattice_filter_cpu.cpp) and the fused mean-field operator (mean_field_cpu.cpp). They are
// implemented by step: filter_view_cpu.cpp (make_view), filter_splat_cpu.cpp,
// filter_sweep_cpu.cpp and filter_blur_cpu.cpp (splat_and_blur and the blur chains),
// filter_update_cpu.cpp (slice, the update, softmax, padding); filter_rows_cpu.h holds the
// vector row helpers they are written with, filter_steps_cpu.h what they share internally.
//
// Values are rows of s floats, s = row_stride(m) for m labels: (N, s) per point, (V+1, s) per
// vertex where row V stays zero and stands for a missing blur neighbour. Padding rows to whole
// vector chunks lets every loop run on full vectors (rows of 21 labels would otherwise spend
// most of their time in scalar tails); padded lanes hold zeros and are never reported. Every
// output row is computed by one thread in a fixed order, so results do not depend on the
// thread count.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fastseg {
namespace lattice {
namespace cpu {

// Row stride for m values: m rounded up to a multiple of 8 (of 4 when 2 <= m <= 4); a single
// value (the normalisation filter of a field of ones) keeps rows of one float.
inline int64_t row_stride(int64_t m) { return m <= 1 ? 1 : m <= 4 ? 4 : (m + 7) / 8 * 8; }

// A lattice's blur neighbours as chains, per direction: a vertex with no previous neighbour,
// its next neighbour, that one's next, ... up to a vertex with no next. Vertices with no
// neighbour along a direction are in no chain of it. A blur pass walking the chains runs in
// place and touches only chained vertices (the bilateral lattice of a photograph leaves a fifth
// to a third of its vertices out of each direction's chains); see build_blur_chains.
struct BlurChains {
  std::vector<std::vector<int32_t>> vertices;  // [direction]: chain after chain
  std::vector<std::vector<int64_t>> starts;    // [direction]: chain c is vertices[starts[c]..
                                               // starts[c+1]), so n_chains + 1 entries
};

// One pairwise term: a built lattice plus its normalisation (in_scale/out_scale may be null).
struct LatticeView {
  int d = 0;
  int64_t n_points = 0;
  int64_t n_vertices = 0;
  const int32_t* vertices = nullptr;       // (N, d+1)
  const float* weights = nullptr;          // (N, d+1)
  const int32_t* neighbors = nullptr;      // (d+1, V, 2)
  const int64_t* splat_offsets = nullptr;  // (V+1,)
  const int32_t* splat_points = nullptr;   // (E,)
  const float* splat_weights = nullptr;    // (E,)
  const float* in_scale = nullptr;         // (N,) or null
  const float* out_scale = nullptr;        // (N,) or null
  float alpha = 1.f;                       // 1 / (1 + 2^-d)
  // max |neighbour - vertex| (make_view computes it): exact up to n_vertices / 16; past that,
  // only known to be larger (no sweep is possible then)
  int64_t neighbor_reach = -1;
  // The entries meet vertices 0 .. first_used - 1 for the first time in that order and no
  // others (vertices after them belong to no point); -1 if not (make_view computes it).
  int64_t first_used = -1;
  int64_t splat_lead = -1;  // most vertices started, not complete, splatting in point order
                            // (make_view computes it where a fused sweep may use it)
  const BlurChains* chains = nullptr;  // when set, blur passes run in place along these
};

// Whether splat_and_blur, for n_terms terms on the current thread count, runs one term with
// every thread on each step (gather splat, parallel passes) instead of one task per term.
bool one_term_in_parallel(int n_terms);

// Tensors must be contiguous and stay alive while the view is used. The analysis that only the
// one-task-per-term form reads (neighbour reach, first-use numbering, splat lead: a few ms per
// call on the bilateral lattice) is skipped when for_tasks is false; the view then only ever
// takes the general paths, which compute the same bits.
LatticeView make_view(const at::Tensor& vertices, const at::Tensor& weights,
                      const at::Tensor& neighbors, const at::Tensor& splat_offsets,
                      const at::Tensor& splat_points, const at::Tensor& splat_weights,
                      const at::Tensor& in_scale, const at::Tensor& out_scale, bool for_tasks);

// The lattice's blur chains, or none (no directions) if its neighbour table is not symmetric
// (every built lattice's is: v's next neighbour has v as its previous one). Building them (a
// walk from each chain's first vertex) costs more than the passes save in one blur of rows of
// up to ~24 floats, so they pay off when one lattice is blurred many times: mean-field.
BlurChains build_blur_chains(const LatticeView& lat);

// buf = splat(in_scale * values); the zero row V is written too.
void splat(const LatticeView& lat, const float* values, int64_t s, float* buf);

// Splat `values` into every term's buffer and blur it: afterwards bufs[t] holds term t's
// filtered vertex values, (V+1, s) with row V zero. Terms are splatted one thread each in
// scatter form (points in order add to their vertices: the same bits as splat(), streaming
// through the values) when that keeps every thread busy, and blurred in one cache-resident
// sweep when their neighbours are close in memory; otherwise by the parallel splat() and blur
// passes, in place along the term's chains when it has them, else from one buffer to another
// (a term's buffer may then be swapped with *spare). Every way computes the same bits.
void splat_and_blur(const LatticeView* const* lats, int n_terms, const float* values, int64_t s,
                    float** bufs, float** spare, bool reverse);

// Whether splat_and_blur, given these terms and rows of s floats on the current thread count,
// blurs term t by passes (rather than by a sweep): the terms that may use blur chains.
bool blurs_by_passes(const LatticeView* const* lats, int n_terms, int t, int64_t s);

// out = out_scale * alpha * slice(buf), for all points.
void slice(const LatticeView& lat, const float* buf, int64_t s, float* out);

// How a term's filtered values enter the logits: either per label (logit += compat[l] * f[l],
// compat padded to length s with zeros) or through a precomputed dense (N, s) message.
struct TermUpdate {
  const LatticeView* lattice;
  const float* result;         // blurred vertex values (V+1, m)
  const float* label_compat;   // (s,) or null
  const float* dense_message;  // (N, s) or null
};

// For every point: logits = -unary + sum over terms, then Q = softmax(logits) over the first m
// lanes (max subtracted), padded lanes set to zero: the per-pixel update of one mean-field
// iteration, fused so each row is touched once.
void update_rows(const TermUpdate* terms, int n_terms, const float* unary, int64_t n, int64_t m,
                 int64_t s, float* q);

// Q = softmax(-unary) row-wise: the mean-field initialisation.
void softmax_neg(const float* unary, int64_t n, int64_t m, int64_t s, float* q);

// Copies an (n, m) matrix with any strides (element (p, l) at p * stride_p + l * stride_l, so
// a transposed, label-major matrix is read without a separate transpose) into (n, s) rows with
// zero padding, and back.
void pad_rows(const float* src, int64_t stride_p, int64_t stride_l, int64_t n, int64_t m, int64_t s,
              float* dst);
void unpad_rows(const float* src, int64_t n, int64_t m, int64_t s, float* dst, int64_t stride_p,
                int64_t stride_l);

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
