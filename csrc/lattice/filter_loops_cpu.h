// CPU loops of lattice filtering and of the mean-field update, shared by the filter operator
// (lattice_filter_cpu.cpp) and the fused mean-field operator (mean_field_cpu.cpp).
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

namespace fastseg {
namespace lattice {
namespace cpu {

// Row stride for m values: m rounded up to a multiple of 8 (of 4 when 2 <= m <= 4); a single
// value (the normalisation filter of a field of ones) keeps rows of one float.
inline int64_t row_stride(int64_t m) { return m <= 1 ? 1 : m <= 4 ? 4 : (m + 7) / 8 * 8; }

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
  int64_t neighbor_reach = -1;             // max |neighbour - vertex| (make_view computes it)
  bool first_use_numbered = false;         // vertices numbered by first use in entry order
  int64_t splat_lead = -1;  // most vertices started, not complete, splatting in point order
                            // (make_view computes it where a fused sweep may use it)
};

// Tensors must be contiguous and stay alive while the view is used.
LatticeView make_view(const at::Tensor& vertices, const at::Tensor& weights,
                      const at::Tensor& neighbors, const at::Tensor& splat_offsets,
                      const at::Tensor& splat_points, const at::Tensor& splat_weights,
                      const at::Tensor& in_scale, const at::Tensor& out_scale);

// buf = splat(in_scale * values); the zero row V is written too.
void splat(const LatticeView& lat, const float* values, int64_t s, float* buf);

// Splat `values` into every term's buffer and blur it: afterwards bufs[t] holds term t's
// filtered vertex values, (V+1, s) with row V zero; buffers may have been swapped with *spare.
// Terms are splatted one thread each in scatter form (points in order add to their vertices:
// the same bits as splat(), streaming through the values) when that keeps every thread busy,
// and blurred in one cache-resident sweep when their neighbours are close in memory (the same
// bits as blur()); otherwise by the parallel splat() and blur().
void splat_and_blur(const LatticeView* const* lats, int n_terms, const float* values, int64_t s,
                    float** bufs, float** spare, bool reverse);

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
