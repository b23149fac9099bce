// CUDA kernels of fastseg::permutohedral_filter and fastseg::mean_field.
//
// Filtering is three gathers, one thread per output value: splat over the transposed index,
// d+1 blur passes, slice. No float atomics, so results are deterministic. Mean-field runs
// pydensecrf's iteration with these kernels and ATen's softmax, all on the device.
#include <ATen/ops/addmm.h>
#include <ATen/ops/cumsum.h>
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
// dependent loads (entry -> point -> value); batches keep kSplatBatch loads in flight.
constexpr int kSplatBatch = 8;

// Vertices with more entries than this are summed in chunks of kSplatChunk entries, one thread
// per chunk and value column, and the splat adds the chunks' partial sums. Flat image regions
// put thousands of points on one bilateral vertex (astronaut 512x512: mean 6.4 entries, 99th
// percentile 78, maximum 8271), and one thread walking 8271 entries was the whole bilateral
// filter's time on an H100 (1.0 ms for 21 labels; 0.44 ms chunked, and a 21-label dense_crf
// 19.0 -> 10.1 ms). The order of additions is fixed by the lattice alone, so results stay
// deterministic; they differ from the unchunked sums by float rounding (1.7e-6 relative).
constexpr int64_t kSplatChunk = 64;

__device__ __forceinline__ float splat_value(const float* __restrict__ values, int64_t m, int64_t k,
                                             int64_t p, const float* __restrict__ in_scale) {
  const float x = values[p * m + k];
  return in_scale != nullptr ? x * in_scale[p] : x;
}

// sum over entries [e, end) of w * (values[p, k] * in_scale[p]), in entry order.
__device__ __forceinline__ float splat_entries(const float* __restrict__ values, int64_t m,
                                               int64_t k, int64_t e, int64_t end,
                                               const int32_t* __restrict__ points,
                                               const float* __restrict__ weights,
                                               const float* __restrict__ in_scale) {
  float acc = 0.f;
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
  return acc;
}

// count[v] = the chunks of vertex v: ceil(entries / kSplatChunk) above kSplatChunk entries, else 0.
__global__ void chunk_count_kernel(const int64_t* __restrict__ offsets, int64_t nv,
                                   int64_t* __restrict__ count) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < nv;
       v += int64_t(blockDim.x) * gridDim.x) {
    const int64_t entries = offsets[v + 1] - offsets[v];
    count[v] = entries > kSplatChunk ? (entries + kSplatChunk - 1) / kSplatChunk : 0;
  }
}

// range[c] = (first entry, end entry) of chunk c, for the chunks of every heavy vertex;
// chunk_end is the inclusive scan of count above, so vertex v owns chunks
// [chunk_end[v - 1], chunk_end[v]).
__global__ void chunk_range_kernel(const int64_t* __restrict__ offsets, int64_t nv,
                                   const int64_t* __restrict__ chunk_end,
                                   int64_t* __restrict__ range) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < nv;
       v += int64_t(blockDim.x) * gridDim.x) {
    const int64_t end = offsets[v + 1];
    int64_t e = offsets[v];
    for (int64_t c = v > 0 ? chunk_end[v - 1] : 0; c < chunk_end[v]; ++c, e += kSplatChunk) {
      range[2 * c] = e;
      range[2 * c + 1] = min(end, e + kSplatChunk);
    }
  }
}

// partial[c, k] = the splat sum over chunk c's entries, for c < n_chunks.
__global__ void splat_chunk_kernel(const float* __restrict__ values, int64_t m, int64_t n_chunks,
                                   const int64_t* __restrict__ range,
                                   const int32_t* __restrict__ points,
                                   const float* __restrict__ weights,
                                   const float* __restrict__ in_scale,
                                   float* __restrict__ partial) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_chunks * m;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t c = i / m;
    const int64_t k = i - c * m;
    partial[i] =
        splat_entries(values, m, k, range[2 * c], range[2 * c + 1], points, weights, in_scale);
  }
}

// buf[v, k] = sum over v's entries (w * (values[p, k] * in_scale[p])), for v < nv; row nv = 0.
// Vertices with chunks add their chunks' partial sums in chunk order.
__global__ void splat_kernel(const float* __restrict__ values, int64_t m, int64_t nv,
                             const int64_t* __restrict__ offsets,
                             const int32_t* __restrict__ points, const float* __restrict__ weights,
                             const float* __restrict__ in_scale,
                             const int64_t* __restrict__ chunk_end,
                             const float* __restrict__ partial, float* __restrict__ buf) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (nv + 1) * m;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t v = i / m;
    const int64_t k = i - v * m;
    float acc = 0.f;
    if (v < nv) {
      const int64_t e = offsets[v];
      const int64_t end = offsets[v + 1];
      if (end - e > kSplatChunk) {
        for (int64_t c = v > 0 ? chunk_end[v - 1] : 0; c < chunk_end[v]; ++c) {
          acc += partial[c * m + k];
        }
      } else {
        acc = splat_entries(values, m, k, e, end, points, weights, in_scale);
      }
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

// The chunks of a lattice's heavy vertices (see kSplatChunk): made once per lattice and call,
// and used by every filtering with that lattice in the call.
struct SplatChunks {
  at::Tensor chunk_end;  // (nv,) int64: inclusive scan of the per-vertex chunk counts
  at::Tensor range;      // (n_chunks, 2) int64: each chunk's first and end entry
  int64_t n_chunks = 0;
};

SplatChunks make_splat_chunks(const at::Tensor& splat_offsets) {
  const int64_t nv = splat_offsets.size(0) - 1;
  SplatChunks chunks;
  if (nv <= 0) return chunks;
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor count = at::empty({nv}, splat_offsets.options());
  chunk_count_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(splat_offsets.data_ptr<int64_t>(), nv,
                                                              count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  chunks.chunk_end = at::cumsum(count, 0);
  // The one device-to-host read of a filtering or mean-field call (the lattice build has its
  // own): it sizes the chunk table exactly and skips the chunk kernel where no vertex is heavy
  // (the gaussian term's lattice has none).
  chunks.n_chunks = chunks.chunk_end[nv - 1].item<int64_t>();
  if (chunks.n_chunks == 0) return chunks;
  chunks.range = at::empty({chunks.n_chunks, 2}, splat_offsets.options());
  chunk_range_kernel<<<blocks_for(nv), kThreads, 0, stream>>>(splat_offsets.data_ptr<int64_t>(), nv,
                                                              chunks.chunk_end.data_ptr<int64_t>(),
                                                              chunks.range.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return chunks;
}

// out = out_scale * alpha * slice(blur(splat(in_scale * values))); values (N, M) contiguous.
void filter_into(const at::Tensor& values, const at::Tensor& vertices, const at::Tensor& weights,
                 const at::Tensor& neighbors, const at::Tensor& splat_offsets,
                 const at::Tensor& splat_points, const at::Tensor& splat_weights,
                 const at::Tensor& in_scale, const at::Tensor& out_scale, const SplatChunks& chunks,
                 bool reverse, at::Tensor& out) {
  const int64_t n = values.size(0);
  const int64_t m = values.size(1);
  const int dp1 = static_cast<int>(vertices.size(1));
  const int d = dp1 - 1;
  const int64_t nv = neighbors.size(1);
  if (n == 0 || m == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor a = at::empty({nv + 1, m}, values.options());
  at::Tensor b = at::empty({nv + 1, m}, values.options());
  at::Tensor partial;
  if (chunks.n_chunks > 0) {
    partial = at::empty({chunks.n_chunks, m}, values.options());
    splat_chunk_kernel<<<blocks_for(chunks.n_chunks * m), kThreads, 0, stream>>>(
        values.data_ptr<float>(), m, chunks.n_chunks, chunks.range.data_ptr<int64_t>(),
        splat_points.data_ptr<int32_t>(), splat_weights.data_ptr<float>(), data_or_null(in_scale),
        partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int grid = blocks_for((nv + 1) * m);
  splat_kernel<<<grid, kThreads, 0, stream>>>(
      values.data_ptr<float>(), m, nv, splat_offsets.data_ptr<int64_t>(),
      splat_points.data_ptr<int32_t>(), splat_weights.data_ptr<float>(), data_or_null(in_scale),
      chunks.n_chunks > 0 ? chunks.chunk_end.data_ptr<int64_t>() : nullptr,
      chunks.n_chunks > 0 ? partial.data_ptr<float>() : nullptr, a.data_ptr<float>());
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
              out_scale.has_value() ? out_scale->contiguous() : at::Tensor(),
              make_splat_chunks(splat_offsets), reverse, out);
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
  std::vector<SplatChunks> chunks;
  for (const MeanFieldTerm& t : terms) {
    chunks.push_back(make_splat_chunks(t.splat_offsets));
  }
  for (int64_t it = 0; it < iterations; ++it) {
    at::Tensor logits = neg_unary.clone();
    for (size_t ti = 0; ti < terms.size(); ++ti) {
      const MeanFieldTerm& t = terms[ti];
      filter_into(q, t.vertices, t.weights, t.neighbors, t.splat_offsets, t.splat_points,
                  t.splat_weights, t.in_scale, t.out_scale, chunks[ti], /*reverse=*/false,
                  filtered);
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
