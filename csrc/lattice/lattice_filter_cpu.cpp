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
  const at::Tensor values = values_in.contiguous();
  const at::Tensor in_s = in_scale.has_value() ? in_scale->contiguous() : at::Tensor();
  const at::Tensor out_s = out_scale.has_value() ? out_scale->contiguous() : at::Tensor();
  const int64_t n = values.size(0);
  const int64_t m = values.size(1);
  at::Tensor out = empty_large({n, m}, values.options());
  if (m == 0) return out;

  const cpu::LatticeView lat = cpu::make_view(vertices, weights, neighbors, splat_offsets,
                                              splat_points, splat_weights, in_s, out_s);
  const int64_t s = cpu::row_stride(m);
  at::Tensor padded = empty_large({n, s}, values.options());
  at::Tensor buf_a = empty_large({lat.n_vertices + 1, s}, values.options());
  at::Tensor buf_b = empty_large({lat.n_vertices + 1, s}, values.options());
  cpu::pad_rows(values.data_ptr<float>(), n, m, s, padded.data_ptr<float>());
  const cpu::LatticeView* lats[] = {&lat};
  float* bufs[] = {buf_a.data_ptr<float>()};
  float* spare = buf_b.data_ptr<float>();
  cpu::splat_and_blur(lats, 1, padded.data_ptr<float>(), s, bufs, &spare, reverse);
  const float* result = bufs[0];
  cpu::slice(lat, result, s, padded.data_ptr<float>());
  cpu::unpad_rows(padded.data_ptr<float>(), n, m, s, out.data_ptr<float>());
  return out;
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) { m.impl("permutohedral_filter", &permutohedral_filter_cpu); }

}  // namespace lattice
}  // namespace fastseg
