// The permutohedral lattice as data, and the operators that build and filter with it.
//
// permutohedral_build(features (N, d) float32) returns, for V lattice vertices and
// E = N (d+1) (point, vertex) pairs:
//   vertices      (N, d+1) int32    vertex of each point's simplex, by remainder
//   weights       (N, d+1) float32  barycentric weight of each of those vertices
//   neighbors     (d+1, V, 2) int32 each vertex's two blur neighbours along each lattice
//                                   direction; V (one past the last vertex) when missing
//   splat_offsets (V+1,) int64      CSR row pointers of the transposed (vertex -> point) index
//   splat_points  (E,) int32        points splatting into each vertex, in point order
//   splat_weights (E,) float32      their barycentric weights
//   keys          (V, d) int32      lattice coordinates of each vertex (the last is implied)
// Vertices are numbered in order of first use by the points (as pydensecrf's hash table does),
// which keeps neighbouring pixels' vertices close in memory and makes the numbering
// independent of thread count and device.
//
// permutohedral_filter(values (N, M), <lattice>, in_scale, out_scale, reverse) computes
//   out = out_scale * alpha * slice(blur(splat(in_scale * values)))
// with alpha = 1 / (1 + 2^-d), blur passes over directions 0..d (d..0 when reverse), each
// new[v] = old[v] + 0.5 (old[n1] + old[n2]). Splat is a gather over the transposed index, so
// every output value is summed by one thread in a fixed order: results are bitwise identical
// for any thread count, on the CPU and (without float atomics) on the GPU.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace fastseg {
namespace lattice {

using LatticeTensors =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Checks shared by both devices; the Python layer has already given friendlier messages.
void check_features(const at::Tensor& features);
void check_filter_args(const at::Tensor& values, const at::Tensor& vertices,
                       const at::Tensor& weights, const at::Tensor& neighbors,
                       const at::Tensor& splat_offsets, const at::Tensor& splat_points,
                       const at::Tensor& splat_weights, const c10::optional<at::Tensor>& in_scale,
                       const c10::optional<at::Tensor>& out_scale);

// One pairwise term of fastseg::mean_field, validated against the unary (N, M): its lattice,
// its normalisation (undefined tensors when absent) and its label compatibility, either a
// per-label vector (M,) added as logits += compat * filtered, or a matrix (M, M) added as
// logits += filtered @ compat.
struct MeanFieldTerm {
  at::Tensor vertices, weights, neighbors, splat_offsets, splat_points, splat_weights;
  at::Tensor in_scale, out_scale, compat;
};

std::vector<MeanFieldTerm> collect_terms(
    const at::Tensor& unary, at::TensorList vertices, at::TensorList weights,
    at::TensorList neighbors, at::TensorList splat_offsets, at::TensorList splat_points,
    at::TensorList splat_weights, const c10::List<c10::optional<at::Tensor>>& in_scales,
    const c10::List<c10::optional<at::Tensor>>& out_scales, at::TensorList compats,
    const c10::optional<at::Tensor>& q_init, int64_t iterations);

// Whether an (N, M) tensor is the transposed view of a contiguous (M, N) one: mean_field then
// returns Q in that label-major layout too (any other unary gets a contiguous Q).
inline bool is_label_major(const at::Tensor& t) {
  return t.dim() == 2 && t.size(0) > 1 && t.size(1) > 1 && t.stride(0) == 1 &&
         t.stride(1) == t.size(0);
}

// Largest |elevated coordinate| the features can produce (see permutohedral_math.h); throws if
// it is not finite or would overflow the lattice keys.
double checked_elevated_bound(const at::Tensor& features);

// Table capacity for a first attempt at hashing E entries of N points, and for the retry.
int64_t table_capacity(int64_t n_points, int64_t n_entries, bool retry);

}  // namespace lattice
}  // namespace fastseg
