// CPU kernel of fastseg::permutohedral_filter: splat, blur, slice with a built lattice.
#include <torch/library.h>

#include "common/large_buffer.h"
#include "lattice/filter_loops_cpu.h"
#include "lattice/lattice.h"

namespace fastseg {
namespace lattice {

at::Tensor permutohedral_filter_cpu(const at::Tensor& values_in, const at::Tensor& vertices,
                                    const at::Tensor& weights, const at::Tensor& neighbors,
                                    const at::Tensor& splat_offsets, const at::Tensor& splat_points,
                                    const at::Tensor& splat_weights,
                                    const c10::optional<at::Tensor>& in_scale,
                                    const c10::optional<at::Tensor>& out_scale, bool reverse) {
  check_filter_args(values_in, vertices, weights, neighbors, splat_offsets, splat_points,
                    splat_weights, in_scale, out_scale);
  const at::Tensor in_s = in_scale.has_value() ? in_scale->contiguous() : at::Tensor();
  const at::Tensor out_s = out_scale.has_value() ? out_scale->contiguous() : at::Tensor();
  const int64_t n = values_in.size(0);
  const int64_t m = values_in.size(1);
  const auto opts = values_in.options();
  at::Tensor out = empty_large({n, m}, opts);
  if (m == 0) return out;

  const cpu::LatticeView lat =
      cpu::make_view(vertices, weights, neighbors, splat_offsets, splat_points, splat_weights, in_s,
                     out_s, /*for_tasks=*/!cpu::one_term_in_parallel(1));
  // Rows whose width is already a whole number of vector chunks (one value, multiples of 8)
  // are read and written in place; others go through zero-padded copies.
  const int64_t s = cpu::row_stride(m);
  const bool exact_rows = s == m;
  const bool direct_in = exact_rows && values_in.is_contiguous();
  at::Tensor padded = direct_in ? at::Tensor() : empty_large({n, s}, opts);
  if (!direct_in) {
    cpu::pad_rows(values_in.data_ptr<float>(), values_in.stride(0), values_in.stride(1), n, m, s,
                  padded.data_ptr<float>());
  }
  const float* values = direct_in ? values_in.data_ptr<float>() : padded.data_ptr<float>();
  at::Tensor buf_a = empty_large({lat.n_vertices + 1, s}, opts);
  at::Tensor buf_b = empty_large({lat.n_vertices + 1, s}, opts);
  const cpu::LatticeView* lats[] = {&lat};
  float* bufs[] = {buf_a.data_ptr<float>()};
  float* spare = buf_b.data_ptr<float>();
  // Plain passes, no blur chains: one blur does not repay building them.
  cpu::splat_and_blur(lats, 1, values, s, bufs, &spare, reverse);
  if (exact_rows) {
    cpu::slice(lat, bufs[0], s, out.data_ptr<float>());
  } else {
    cpu::slice(lat, bufs[0], s, padded.data_ptr<float>());
    cpu::unpad_rows(padded.data_ptr<float>(), n, m, s, out.data_ptr<float>(), m, 1);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) { m.impl("permutohedral_filter", &permutohedral_filter_cpu); }

}  // namespace lattice
}  // namespace fastseg
