// CUDA kernels of fastseg::permutohedral_filter and fastseg::mean_field.
//
// Filtering is three gathers, one thread per output value: splat over the transposed index,
// d+1 blur passes, slice. No float atomics, so results are deterministic. Mean-field runs
// pydensecrf's iteration with these kernels and ATen's softmax, all on the device.
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/softmax.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "lattice/lattice.h"

namespace fastseg {
namespace lattice {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20)));
}

// Entries a splat thread loads ahead of adding them. A vertex's entries form a chain of
// dependent loads (entry -> point -> value), and vertices of flat image regions have thousands
// of entries (8271 on the astronaut's bilateral lattice): the kernel's time is that longest
// chain's latency. Batches keep kSplatBatch loads in flight (H100, 21 labels: 0.66 -> 0.54 ms
// per splat on average); the additions stay in entry order, so the sums are the same bits.
// Splitting heavy vertices across threads is the next step (bench/README.md, "Dense CRF (GPU)").
constexpr int kSplatBatch = 8;

__device__ __forceinline__ float splat_value(const float* __restrict__ values, int64_t m, int64_t k,
                                             int64_t p, const float* __restrict__ in_scale) {
  const float x = values[p * m + k];
  return in_scale != nullptr ? x * in_scale[p] : x;
}

// buf[v, k] = sum over v's entries (w * (values[p, k] * in_scale[p])), for v < nv; row nv = 0.
__global__ void splat_kernel(const float* __restrict__ values, int64_t m, int64_t nv,
                             const int64_t* __restrict__ offsets,
                             const int32_t* __restrict__ points, const float* __restrict__ weights,
                             const float* __restrict__ in_scale, float* __restrict__ buf) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (nv + 1) * m;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t v = i / m;
    const int64_t k = i - v * m;
    float acc = 0.f;
    if (v < nv) {
      const int64_t end = offsets[v + 1];
      int64_t e = offsets[v];
      for (; e + kSplatBatch <= end; e += kSplatBatch) {
        int64_t p[kSplatBatch];
        float w[kSplatBatch];
        float x[kSplatBatch];
#pragma unroll
        for (int j = 0; j < kSplatBatch; ++j) {
          p[j] = points[e + j];
          w[j] = weights[e + j];
        }
#pragma unroll
        for (int j = 0; j < kSplatBatch; ++j) x[j] = splat_value(values, m, k, p[j], in_scale);
#pragma unroll
        for (int j = 0; j < kSplatBatch; ++j) acc += w[j] * x[j];
      }
      for (; e < end; ++e) acc += weights[e] * splat_value(values, m, k, points[e], in_scale);
    }
    buf[i] = acc;
  }
}

// dst[v] = src[v] + 0.5 (src[n1] + src[n2]) for v < nv; row nv (missing neighbour) = 0.
__global__ void blur_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t m,
                            int64_t nv, const int32_t* __restrict__ nb) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (nv + 1) * m;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t v = i / m;
    const int64_t k = i - v * m;
    if (v == nv) {
      dst[i] = 0.f;
      continue;
    }
    const int64_t n1 = nb[2 * v], n2 = nb[2 * v + 1];
    dst[i] = src[i] + 0.5f * (src[n1 * m + k] + src[n2 * m + k]);
  }
}

// out[p, k] = out_scale[p] * sum_r (alpha w[p, r]) buf[vertex[p, r], k].
__global__ void slice_kernel(const float* __restrict__ buf, int64_t m, int64_t n, int dp1,
                             const int32_t* __restrict__ vertices,
                             const float* __restrict__ weights, float alpha,
                             const float* __restrict__ out_scale, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n * m;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t p = i / m;
    const int64_t k = i - p * m;
    float acc = 0.f;
    for (int r = 0; r < dp1; ++r) {
      acc += (weights[p * dp1 + r] * alpha) * buf[int64_t(vertices[p * dp1 + r]) * m + k];
    }
    out[i] = out_scale != nullptr ? acc * out_scale[p] : acc;
  }
}

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// out = out_scale * alpha * slice(blur(splat(in_scale * values))); values (N, M) contiguous.
void filter_into(const at::Tensor& values, const at::Tensor& vertices, const at::Tensor& weights,
                 const at::Tensor& neighbors, const at::Tensor& splat_offsets,
                 const at::Tensor& splat_points, const at::Tensor& splat_weights,
                 const at::Tensor& in_scale, const at::Tensor& out_scale, bool reverse,
                 at::Tensor& out) {
  const int64_t n = values.size(0);
  const int64_t m = values.size(1);
  const int dp1 = static_cast<int>(vertices.size(1));
  const int d = dp1 - 1;
  const int64_t nv = neighbors.size(1);
  if (n == 0 || m == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor a = at::empty({nv + 1, m}, values.options());
  at::Tensor b = at::empty({nv + 1, m}, values.options());
  const int grid = blocks_for((nv + 1) * m);
  splat_kernel<<<grid, kThreads, 0, stream>>>(
      values.data_ptr<float>(), m, nv, splat_offsets.data_ptr<int64_t>(),
      splat_points.data_ptr<int32_t>(), splat_weights.data_ptr<float>(), data_or_null(in_scale),
      a.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int step = 0; step <= d; ++step) {
    const int j = reverse ? d - step : step;
    blur_kernel<<<grid, kThreads, 0, stream>>>(a.data_ptr<float>(), b.data_ptr<float>(), m, nv,
                                               neighbors.data_ptr<int32_t>() + int64_t(j) * nv * 2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::swap(a, b);
  }
  // pydensecrf: float alpha = 1.0f / (1 + powf(2, -d))
  const float alpha = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d)));
  slice_kernel<<<blocks_for(n * m), kThreads, 0, stream>>>(
      a.data_ptr<float>(), m, n, dp1, vertices.data_ptr<int32_t>(), weights.data_ptr<float>(),
      alpha, data_or_null(out_scale), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor permutohedral_filter_cuda(const at::Tensor& values_in, const at::Tensor& vertices,
                                     const at::Tensor& weights, const at::Tensor& neighbors,
                                     const at::Tensor& splat_offsets,
                                     const at::Tensor& splat_points,
                                     const at::Tensor& splat_weights,
                                     const c10::optional<at::Tensor>& in_scale,
                                     const c10::optional<at::Tensor>& out_scale, bool reverse) {
  check_filter_args(values_in, vertices, weights, neighbors, splat_offsets, splat_points,
                    splat_weights, in_scale, out_scale);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  at::Tensor out = at::empty(values.sizes(), values.options());
  filter_into(values, vertices, weights, neighbors, splat_offsets, splat_points, splat_weights,
              in_scale.has_value() ? in_scale->contiguous() : at::Tensor(),
              out_scale.has_value() ? out_scale->contiguous() : at::Tensor(), reverse, out);
  return out;
}

at::Tensor mean_field_cuda(const at::Tensor& unary_in, const c10::optional<at::Tensor>& q_init,
                           at::TensorList vertices, at::TensorList weights,
                           at::TensorList neighbors, at::TensorList splat_offsets,
                           at::TensorList splat_points, at::TensorList splat_weights,
                           const c10::List<c10::optional<at::Tensor>>& in_scales,
                           const c10::List<c10::optional<at::Tensor>>& out_scales,
                           at::TensorList compats, int64_t iterations) {
  const std::vector<MeanFieldTerm> terms =
      collect_terms(unary_in, vertices, weights, neighbors, splat_offsets, splat_points,
                    splat_weights, in_scales, out_scales, compats, q_init, iterations);
  const c10::cuda::CUDAGuard guard(unary_in.device());
  const at::Tensor unary = unary_in.contiguous();
  const at::Tensor neg_unary = at::neg(unary);
  at::Tensor q = q_init.has_value() ? q_init->contiguous().clone() : at::softmax(neg_unary, 1);
  at::Tensor filtered = at::empty(unary.sizes(), unary.options());
  for (int64_t it = 0; it < iterations; ++it) {
    at::Tensor logits = neg_unary.clone();
    for (const MeanFieldTerm& t : terms) {
      filter_into(q, t.vertices, t.weights, t.neighbors, t.splat_offsets, t.splat_points,
                  t.splat_weights, t.in_scale, t.out_scale, /*reverse=*/false, filtered);
      if (t.compat.dim() == 2) {
        logits.addmm_(filtered, t.compat);
      } else {
        logits.addcmul_(filtered, t.compat.unsqueeze(0));
      }
    }
    q = at::softmax(logits, 1);
  }
  // A label-major unary gives a label-major Q, as on the CPU.
  at::Tensor result = is_label_major(unary_in) ? at::empty({q.size(1), q.size(0)}, q.options()).t()
                                               : at::empty(q.sizes(), q.options());
  result.copy_(q);
  return result;
}

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) {
  m.impl("permutohedral_filter", &permutohedral_filter_cuda);
  m.impl("mean_field", &mean_field_cuda);
}

}  // namespace lattice
}  // namespace fastseg
