// Operator schemas of the lattice family and the checks both devices share. The CPU kernels
// are registered in lattice_build_cpu.cpp / lattice_filter_cpu.cpp, the CUDA ones in
// lattice_cuda.cu, the fake (meta) kernels and autograd in fastseg/ops/lattice.py.
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/parallel_dynamic.h"
#include "lattice/lattice.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {

void check_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 2, "permutohedral_build: features must be (N, d), got shape ",
              features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat,
              "permutohedral_build: features must be float32, got ", features.scalar_type());
  TORCH_CHECK(features.size(0) >= 1, "permutohedral_build: features must have at least one point");
  TORCH_CHECK(features.size(1) >= 1 && features.size(1) <= kMaxDim,
              "permutohedral_build: feature dimension d must be in [1, ", kMaxDim, "], got ",
              features.size(1));
  TORCH_CHECK(features.size(0) * (features.size(1) + 1) < std::numeric_limits<int32_t>::max(),
              "permutohedral_build: N*(d+1) = ", features.size(0) * (features.size(1) + 1),
              " lattice entries do not fit in int32 indices");
}

namespace {

// Largest |feature| of each dimension; NaN or Inf anywhere in a dimension gives NaN there. On
// the CPU one pass over contiguous rows (torch's amax(abs(x), 0) over an (N, 5) tensor took
// ~4.5 ms for 262144 points, as much as a tenth of the whole lattice build).
std::vector<double> max_abs_per_dimension(const at::Tensor& features) {
  const int d = static_cast<int>(features.size(1));
  if (!features.device().is_cpu() || !features.is_contiguous()) {  // the GPU build's case
    const at::Tensor max_abs = at::amax(at::abs(features), {0}).to(at::kDouble).cpu();
    return std::vector<double>(max_abs.data_ptr<double>(), max_abs.data_ptr<double>() + d);
  }
  const float* f = features.data_ptr<float>();
  const int64_t n = features.size(0);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(64, n / 16384));
  std::vector<float> chunk_max(chunks * d, 0.f);
  std::vector<char> chunk_bad(chunks * d, 0);
  parallel_for_dynamic(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float mx[kMaxDim] = {};
      bool bad[kMaxDim] = {};
      for (int64_t p = n * c / chunks; p < n * (c + 1) / chunks; ++p) {
        for (int i = 0; i < d; ++i) {
          const float a = std::fabs(f[p * d + i]);
          mx[i] = a > mx[i] ? a : mx[i];
          bad[i] |= !(a <= std::numeric_limits<float>::max());  // NaN or Inf
        }
      }
      std::copy(mx, mx + d, &chunk_max[c * d]);
      std::copy(bad, bad + d, &chunk_bad[c * d]);
    }
  });
  std::vector<double> m(d, 0.0);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int i = 0; i < d; ++i) {
      m[i] = chunk_bad[c * d + i] || std::isnan(m[i])
                 ? std::nan("")
                 : std::max<double>(m[i], chunk_max[c * d + i]);
    }
  }
  return m;
}

}  // namespace

double checked_elevated_bound(const at::Tensor& features) {
  const int d = static_cast<int>(features.size(1));
  const std::vector<double> m = max_abs_per_dimension(features);
  for (int i = 0; i < d; ++i) {
    TORCH_CHECK(std::isfinite(m[i]), "permutohedral_build: features contain NaN or Inf (dimension ",
                i, ")");
  }
  const double bound = elevated_bound(m.data(), d, make_embedding<double>(d));
  TORCH_CHECK(bound < kMaxElevated,
              "permutohedral_build: features are too large for the lattice "
              "(elevated coordinates up to ",
              bound, ", limit ", kMaxElevated, "); use larger standard deviations");
  return bound;
}

int64_t table_capacity(int64_t n_points, int64_t n_entries, bool retry) {
  const int64_t want = 2 * (retry ? n_entries : n_points) + 16;
  int64_t capacity = 1;
  while (capacity < want) capacity <<= 1;
  return capacity;
}

void check_filter_args(const at::Tensor& values, const at::Tensor& vertices,
                       const at::Tensor& weights, const at::Tensor& neighbors,
                       const at::Tensor& splat_offsets, const at::Tensor& splat_points,
                       const at::Tensor& splat_weights, const c10::optional<at::Tensor>& in_scale,
                       const c10::optional<at::Tensor>& out_scale) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kFloat,
              "permutohedral_filter: values must be a float32 (N, M) tensor");
  const int64_t n = values.size(0);
  TORCH_CHECK(vertices.dim() == 2 && vertices.size(0) == n && vertices.scalar_type() == at::kInt,
              "permutohedral_filter: vertices must be int32 (N, d+1) with N = ", n);
  const int64_t dp1 = vertices.size(1);
  TORCH_CHECK(weights.sizes() == vertices.sizes() && weights.scalar_type() == at::kFloat,
              "permutohedral_filter: weights must be float32 with the shape of vertices");
  TORCH_CHECK(neighbors.dim() == 3 && neighbors.size(0) == dp1 && neighbors.size(2) == 2 &&
                  neighbors.scalar_type() == at::kInt,
              "permutohedral_filter: neighbors must be int32 (d+1, V, 2)");
  const int64_t v = neighbors.size(1);
  TORCH_CHECK(splat_offsets.dim() == 1 && splat_offsets.size(0) == v + 1 &&
                  splat_offsets.scalar_type() == at::kLong,
              "permutohedral_filter: splat_offsets must be int64 (V+1,)");
  TORCH_CHECK(splat_points.dim() == 1 && splat_points.size(0) == n * dp1 &&
                  splat_points.scalar_type() == at::kInt,
              "permutohedral_filter: splat_points must be int32 (N*(d+1),)");
  TORCH_CHECK(
      splat_weights.sizes() == splat_points.sizes() && splat_weights.scalar_type() == at::kFloat,
      "permutohedral_filter: splat_weights must be float32 (N*(d+1),)");
  for (const auto* scale : {&in_scale, &out_scale}) {
    if (scale->has_value()) {
      TORCH_CHECK(
          (*scale)->dim() == 1 && (*scale)->size(0) == n && (*scale)->scalar_type() == at::kFloat,
          "permutohedral_filter: in_scale/out_scale must be float32 (N,)");
    }
  }
  const auto device = values.device();
  for (const at::Tensor* t :
       {&vertices, &weights, &neighbors, &splat_offsets, &splat_points, &splat_weights}) {
    TORCH_CHECK(t->device() == device, "permutohedral_filter: all tensors must be on ", device);
    TORCH_CHECK(t->is_contiguous(), "permutohedral_filter: lattice tensors must be contiguous");
  }
  for (const auto* scale : {&in_scale, &out_scale}) {
    if (scale->has_value()) {
      TORCH_CHECK((*scale)->device() == device,
                  "permutohedral_filter: in_scale/out_scale must be on ", device);
    }
  }
}

std::vector<MeanFieldTerm> collect_terms(
    const at::Tensor& unary, at::TensorList vertices, at::TensorList weights,
    at::TensorList neighbors, at::TensorList splat_offsets, at::TensorList splat_points,
    at::TensorList splat_weights, const c10::List<c10::optional<at::Tensor>>& in_scales,
    const c10::List<c10::optional<at::Tensor>>& out_scales, at::TensorList compats,
    const c10::optional<at::Tensor>& q_init, int64_t iterations) {
  TORCH_CHECK(unary.dim() == 2 && unary.scalar_type() == at::kFloat,
              "mean_field: unary must be a float32 (N, M) tensor");
  const int64_t m = unary.size(1);
  TORCH_CHECK(iterations >= 0, "mean_field: iterations must be >= 0, got ", iterations);
  if (q_init.has_value()) {
    TORCH_CHECK(q_init->sizes() == unary.sizes() && q_init->scalar_type() == at::kFloat &&
                    q_init->device() == unary.device(),
                "mean_field: q_init must be float32 with the shape and device of unary");
  }
  const size_t n_terms = vertices.size();
  for (size_t size : {weights.size(), neighbors.size(), splat_offsets.size(), splat_points.size(),
                      splat_weights.size(), in_scales.size(), out_scales.size(), compats.size()}) {
    TORCH_CHECK(size == n_terms, "mean_field: every per-term list must have ", n_terms, " entries");
  }
  std::vector<MeanFieldTerm> terms;
  for (size_t t = 0; t < n_terms; ++t) {
    const c10::optional<at::Tensor> in_s = in_scales.get(t), out_s = out_scales.get(t);
    check_filter_args(unary, vertices[t], weights[t], neighbors[t], splat_offsets[t],
                      splat_points[t], splat_weights[t], in_s, out_s);
    const at::Tensor& c = compats[t];
    TORCH_CHECK(c.scalar_type() == at::kFloat && c.device() == unary.device() &&
                    ((c.dim() == 1 && c.size(0) == m) ||
                     (c.dim() == 2 && c.size(0) == m && c.size(1) == m)),
                "mean_field: compats[", t, "] must be float32 (M,) or (M, M) with M = ", m);
    terms.push_back({vertices[t], weights[t], neighbors[t], splat_offsets[t], splat_points[t],
                     splat_weights[t], in_s.has_value() ? in_s->contiguous() : at::Tensor(),
                     out_s.has_value() ? out_s->contiguous() : at::Tensor(), c.contiguous()});
  }
  return terms;
}

}  // namespace lattice
}  // namespace fastseg

TORCH_LIBRARY(fastseg, m) {
  m.def(
      "permutohedral_build(Tensor features) -> (Tensor vertices, Tensor weights, "
      "Tensor neighbors, Tensor splat_offsets, Tensor splat_points, Tensor splat_weights, "
      "Tensor keys)");
  m.def(
      "permutohedral_filter(Tensor values, Tensor vertices, Tensor weights, Tensor neighbors, "
      "Tensor splat_offsets, Tensor splat_points, Tensor splat_weights, Tensor? in_scale=None, "
      "Tensor? out_scale=None, bool reverse=False) -> Tensor");
  m.def(
      "mean_field(Tensor unary, Tensor? q_init, Tensor[] vertices, Tensor[] weights, "
      "Tensor[] neighbors, Tensor[] splat_offsets, Tensor[] splat_points, "
      "Tensor[] splat_weights, Tensor?[] in_scales, Tensor?[] out_scales, Tensor[] compats, "
      "int iterations) -> Tensor");
}
