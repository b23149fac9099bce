// The per-point work of mean-field on the CPU: the slice, the fused update (logits from every
// term, softmax), the first softmax, and padding rows to whole vectors and back.
#include <algorithm>
#include <cstring>

#include "common/parallel_dynamic.h"
#include "lattice/filter_loops_cpu.h"
#include "lattice/filter_rows_cpu.h"
#include "lattice/permutohedral_math.h"  // kMaxDim

namespace fastseg {
namespace lattice {
namespace cpu {

namespace {

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
      prefetch_stream_ahead(unary, s, p, p_end);
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

namespace {

// Label-major (points contiguous) <-> rows, 8 x 8 tiles transposed in registers: a scalar copy
// stores one float at a time into rows 96 bytes apart, and took ~2% of a 21-label call (the
// unary in, Q out). Pure data movement: the same bits.
using F8 = Vec<8>::f;

// r[i] (lane k = element (i, k)) becomes r[k] (lane i = element (i, k)): pairs of rows
// interleaved, then pairs of pairs, then halves.
FASTSEG_INLINE void transpose8(F8 r[8]) {
  F8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] =
          __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Tiles of 16 points: a 64-byte line of each label's points is used whole.
constexpr int64_t kTileBlock = 16;

// Points [p_begin, p_end) of a label-major matrix (element (p, l) at src[p + l * src_sl]) into
// rows dst + p * dst_sp, lanes [0, lanes) (a multiple of 8), lanes [m, lanes) zero.
FASTSEG_CLONES void label_major_to_rows(const float* src, int64_t src_sl, int64_t m, int64_t lanes,
                                        float* dst, int64_t dst_sp, int64_t p_begin,
                                        int64_t p_end) {
  int64_t p = p_begin;
  for (; p + kTileBlock <= p_end; p += kTileBlock) {
    for (int64_t l0 = 0; l0 < lanes; l0 += 8) {
      for (int64_t h = p; h < p + kTileBlock; h += 8) {
        F8 r[8];
        for (int i = 0; i < 8; ++i) r[i] = l0 + i < m ? load<8>(src + (l0 + i) * src_sl + h) : F8{};
        transpose8(r);
        for (int k = 0; k < 8; ++k) store<8>(dst + (h + k) * dst_sp + l0, r[k]);
      }
    }
  }
  for (; p < p_end; ++p) {
    for (int64_t l = 0; l < lanes; ++l) dst[p * dst_sp + l] = l < m ? src[p + l * src_sl] : 0.f;
  }
}

// The reverse: lanes [0, m) of rows src + p * src_sp, which hold m rounded up to 8 lanes, into
// the label-major matrix dst (element (p, l) at dst[p + l * dst_sl]).
FASTSEG_CLONES void rows_to_label_major(const float* src, int64_t src_sp, int64_t m, float* dst,
                                        int64_t dst_sl, int64_t p_begin, int64_t p_end) {
  int64_t p = p_begin;
  for (; p + kTileBlock <= p_end; p += kTileBlock) {
    for (int64_t l0 = 0; l0 < m; l0 += 8) {
      for (int64_t h = p; h < p + kTileBlock; h += 8) {
        F8 r[8];
        for (int k = 0; k < 8; ++k) r[k] = load<8>(src + (h + k) * src_sp + l0);
        transpose8(r);
        for (int i = 0; i < 8 && l0 + i < m; ++i) store<8>(dst + (l0 + i) * dst_sl + h, r[i]);
      }
    }
  }
  for (; p < p_end; ++p) {
    for (int64_t l = 0; l < m; ++l) dst[p + l * dst_sl] = src[p * src_sp + l];
  }
}

// Copies an (n, m) matrix between two strided layouts, element (p, l) at p * sp + l * sl.
// Points go in blocks: a label-major side is walked along its contiguous points while the
// block's rows on the other side stay in cache. `zero_to` > m also zero-fills the destination
// rows' lanes [m, zero_to) (padding, for row-major destinations). Label-major <-> rows go
// through the register transposes where the rows have whole 8-lane chunks to write or read.
constexpr int64_t kCopyBlock = 64;

void copy_matrix(const float* src, int64_t src_sp, int64_t src_sl, float* dst, int64_t dst_sp,
                 int64_t dst_sl, int64_t n, int64_t m, int64_t zero_to) {
  const bool into_rows = m > 1 && src_sp == 1 && dst_sl == 1 && zero_to % 8 == 0;
  const bool from_rows =
      m > 1 && src_sl == 1 && dst_sp == 1 && zero_to == m && src_sp >= (m + 7) / 8 * 8;
  parallel_for_dynamic((n + kCopyBlock - 1) / kCopyBlock, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * kCopyBlock, p1 = std::min(n, p0 + kCopyBlock);
      if (into_rows) {
        label_major_to_rows(src, src_sl, m, zero_to, dst, dst_sp, p0, p1);
        continue;
      }
      if (from_rows) {
        rows_to_label_major(src, src_sp, m, dst, dst_sl, p0, p1);
        continue;
      }
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

}  // namespace

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
