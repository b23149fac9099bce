// CPU filtering with a built lattice: splat (gather over the transposed index), d+1 blur
// passes, slice. Every output row is produced by one thread in a fixed order, so results do
// not depend on the thread count. The inner loops run over the M values of a row; they are
// compiled for AVX2/AVX-512 and for baseline x86-64 and picked at run time (target_clones),
// with contraction off so every clone computes the same bits.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "lattice/lattice.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTSEG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTSEG_CLONES
#endif

namespace fastseg {
namespace lattice {
namespace {

constexpr int64_t kGrain = 512;

// dst[m] = sum over entries (w_e * (src[p_e, m] * scale_p)), in entry order.
FASTSEG_CLONES void splat_rows(const float* __restrict values, int64_t m, const int64_t* offsets,
                               const int32_t* points, const float* weights, const float* in_scale,
                               float* __restrict buf, int64_t stride, int64_t v_begin,
                               int64_t v_end) {
  for (int64_t v = v_begin; v < v_end; ++v) {
    float* __restrict dst = buf + v * stride;
    for (int64_t k = 0; k < m; ++k) dst[k] = 0.f;
    for (int64_t e = offsets[v]; e < offsets[v + 1]; ++e) {
      const int64_t p = points[e];
      const float w = weights[e];
      const float* __restrict src = values + p * m;
      if (in_scale != nullptr) {
        const float s = in_scale[p];
        for (int64_t k = 0; k < m; ++k) dst[k] += w * (src[k] * s);
      } else {
        for (int64_t k = 0; k < m; ++k) dst[k] += w * src[k];
      }
    }
  }
}

// dst[v] = src[v] + 0.5 (src[n1] + src[n2]) along one lattice direction.
FASTSEG_CLONES void blur_rows(const float* __restrict src, float* __restrict dst, int64_t m,
                              int64_t stride, const int32_t* nb, int64_t v_begin, int64_t v_end) {
  for (int64_t v = v_begin; v < v_end; ++v) {
    const float* __restrict a = src + v * stride;
    const float* __restrict n1 = src + static_cast<int64_t>(nb[2 * v]) * stride;
    const float* __restrict n2 = src + static_cast<int64_t>(nb[2 * v + 1]) * stride;
    float* __restrict out = dst + v * stride;
    for (int64_t k = 0; k < m; ++k) out[k] = a[k] + 0.5f * (n1[k] + n2[k]);
  }
}

// out[p] = out_scale[p] * sum_r (alpha w[p, r]) buf[vertex[p, r]].
FASTSEG_CLONES void slice_rows(const float* __restrict buf, int64_t stride, int64_t m, int dp1,
                               const int32_t* vertices, const float* weights, float alpha,
                               const float* out_scale, float* __restrict out, int64_t p_begin,
                               int64_t p_end) {
  for (int64_t p = p_begin; p < p_end; ++p) {
    float* __restrict dst = out + p * m;
    for (int64_t k = 0; k < m; ++k) dst[k] = 0.f;
    for (int r = 0; r < dp1; ++r) {
      const float w = weights[p * dp1 + r] * alpha;
      const float* __restrict src = buf + static_cast<int64_t>(vertices[p * dp1 + r]) * stride;
      for (int64_t k = 0; k < m; ++k) dst[k] += w * src[k];
    }
    if (out_scale != nullptr) {
      const float s = out_scale[p];
      for (int64_t k = 0; k < m; ++k) dst[k] *= s;
    }
  }
}

}  // namespace

at::Tensor permutohedral_filter_cpu(const at::Tensor& values_in, const at::Tensor& vertices,
                                    const at::Tensor& weights, const at::Tensor& neighbors,
                                    const at::Tensor& splat_offsets,
                                    const at::Tensor& splat_points,
                                    const at::Tensor& splat_weights,
                                    const c10::optional<at::Tensor>& in_scale,
                                    const c10::optional<at::Tensor>& out_scale, bool reverse) {
  check_filter_args(values_in, vertices, weights, neighbors, splat_offsets, splat_points,
                    splat_weights, in_scale, out_scale);
  const at::Tensor values = values_in.contiguous();
  const int64_t n = values.size(0);
  const int64_t m = values.size(1);
  const int dp1 = static_cast<int>(vertices.size(1));
  const int d = dp1 - 1;
  const int64_t nv = neighbors.size(1);
  at::Tensor out = at::empty({n, m}, values.options());
  if (n == 0 || m == 0) return out;

  // Two vertex buffers with one extra zero row (index nv) standing for missing neighbours.
  const int64_t stride = m;
  at::Tensor buf_a = at::empty({nv + 1, stride}, values.options());
  at::Tensor buf_b = at::empty({nv + 1, stride}, values.options());
  float* a = buf_a.data_ptr<float>();
  float* b = buf_b.data_ptr<float>();
  for (int64_t k = 0; k < stride; ++k) a[nv * stride + k] = b[nv * stride + k] = 0.f;

  const at::Tensor in_s = in_scale.has_value() ? in_scale->contiguous() : at::Tensor();
  const at::Tensor out_s = out_scale.has_value() ? out_scale->contiguous() : at::Tensor();
  const float* in_p = in_s.defined() ? in_s.data_ptr<float>() : nullptr;
  const float* out_p = out_s.defined() ? out_s.data_ptr<float>() : nullptr;

  at::parallel_for(0, nv, kGrain, [&](int64_t begin, int64_t end) {
    splat_rows(values.data_ptr<float>(), m, splat_offsets.data_ptr<int64_t>(),
               splat_points.data_ptr<int32_t>(), splat_weights.data_ptr<float>(), in_p, a, stride,
               begin, end);
  });
  const int32_t* nb = neighbors.data_ptr<int32_t>();
  for (int step = 0; step <= d; ++step) {
    const int j = reverse ? d - step : step;
    at::parallel_for(0, nv, kGrain, [&](int64_t begin, int64_t end) {
      blur_rows(a, b, m, stride, nb + static_cast<int64_t>(j) * nv * 2, begin, end);
    });
    std::swap(a, b);
  }
  const float alpha = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d)));
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    slice_rows(a, stride, m, dp1, vertices.data_ptr<int32_t>(), weights.data_ptr<float>(), alpha,
               out_p, out.data_ptr<float>(), begin, end);
  });
  return out;
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
}

}  // namespace lattice
}  // namespace fastseg
