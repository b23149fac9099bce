// CPU kernel of fastseg::mean_field: pydensecrf's mean-field inference with every buffer
// allocated once per call, and the per-pixel part of each iteration (slice of every term,
// compatibility, unary, softmax) fused into one pass over the pixels.
//
// One iteration, as pydensecrf computes it: for every term, filter Q with the term's lattice and
// normalisation; logits = -unary + sum of compat(filtered); Q = softmax(logits).
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/large_buffer.h"
#include "lattice/filter_loops_cpu.h"
#include "lattice/lattice.h"

namespace fastseg {
namespace lattice {

at::Tensor mean_field_cpu(const at::Tensor& unary_in, const c10::optional<at::Tensor>& q_init,
                          at::TensorList vertices, at::TensorList weights, at::TensorList neighbors,
                          at::TensorList splat_offsets, at::TensorList splat_points,
                          at::TensorList splat_weights,
                          const c10::List<c10::optional<at::Tensor>>& in_scales,
                          const c10::List<c10::optional<at::Tensor>>& out_scales,
                          at::TensorList compats, int64_t iterations) {
  const std::vector<MeanFieldTerm> terms =
      collect_terms(unary_in, vertices, weights, neighbors, splat_offsets, splat_points,
                    splat_weights, in_scales, out_scales, compats, q_init, iterations);
  const int64_t n = unary_in.size(0);
  const int64_t m = unary_in.size(1);
  const auto opts = unary_in.options();
  // A label-major (M, N) unary passed transposed gives a label-major Q: neither is ever
  // transposed in memory on its own.
  at::Tensor result =
      is_label_major(unary_in) ? empty_large({m, n}, opts).t() : empty_large({n, m}, opts);
  if (m == 0) return result;
  auto unpad_result = [&](const at::Tensor& rows, int64_t s) {
    cpu::unpad_rows(rows.data_ptr<float>(), n, m, s, result.data_ptr<float>(), result.stride(0),
                    result.stride(1));
  };

  // Rows are padded to whole vector chunks (see filter_loops_cpu.h); padded lanes stay zero.
  const int64_t s = cpu::row_stride(m);
  at::Tensor unary = empty_large({n, s}, opts);
  cpu::pad_rows(unary_in.data_ptr<float>(), unary_in.stride(0), unary_in.stride(1), n, m, s,
                unary.data_ptr<float>());
  at::Tensor q = empty_large({n, s}, opts);
  if (q_init.has_value()) {
    cpu::pad_rows(q_init->data_ptr<float>(), q_init->stride(0), q_init->stride(1), n, m, s,
                  q.data_ptr<float>());
  } else {
    cpu::softmax_neg(unary.data_ptr<float>(), n, m, s, q.data_ptr<float>());
  }
  if (terms.empty() && iterations > 0) {
    // Without pairwise terms every iteration gives softmax(-unary) again.
    cpu::softmax_neg(unary.data_ptr<float>(), n, m, s, q.data_ptr<float>());
  }
  if (terms.empty() || iterations == 0) {
    unpad_result(q, s);
    return result;
  }

  const int n_terms = static_cast<int>(terms.size());
  std::vector<cpu::LatticeView> views;
  std::vector<at::Tensor> compats_padded;
  int64_t max_rows = 0;
  const bool for_tasks = !cpu::one_term_in_parallel(n_terms);
  for (const MeanFieldTerm& t : terms) {
    views.push_back(cpu::make_view(t.vertices, t.weights, t.neighbors, t.splat_offsets,
                                   t.splat_points, t.splat_weights, t.in_scale, t.out_scale,
                                   for_tasks));
    max_rows = std::max(max_rows, views.back().n_vertices + 1);
    // Zero-padded to s (and s x s): padded lanes contribute nothing.
    at::Tensor c =
        at::zeros(t.compat.dim() == 1 ? std::vector<int64_t>{s} : std::vector<int64_t>{s, s}, opts);
    if (t.compat.dim() == 1) {
      c.narrow(0, 0, m).copy_(t.compat);
    } else {
      c.narrow(0, 0, m).narrow(1, 0, m).copy_(t.compat);
    }
    compats_padded.push_back(c);
  }
  std::vector<const cpu::LatticeView*> view_ptrs;
  for (const auto& v : views) view_ptrs.push_back(&v);
  // Terms blurred by passes run them in place along blur chains, which skip the vertices with
  // no neighbour along a pass's direction and need no second buffer. Built once here (9-14 ms
  // for astronaut's bilateral lattice on two threads, a third of an iteration with 21 labels),
  // they serve every iteration: 11-14% off a whole call with 21 and with 182 labels, on one
  // thread and on two. A single iteration would not repay the build.
  std::vector<cpu::BlurChains> chains(n_terms);
  bool need_spare = false;
  for (int t = 0; t < n_terms; ++t) {
    if (!cpu::blurs_by_passes(view_ptrs.data(), n_terms, t, s)) continue;
    if (iterations >= 2) chains[t] = cpu::build_blur_chains(views[t]);
    if (!chains[t].vertices.empty()) {
      views[t].chains = &chains[t];
    } else {
      need_spare = true;
    }
  }
  // One vertex buffer per term holds its filtered result until the per-pixel pass, plus a
  // spare for passes without chains; a term whose result lands in the spare swaps buffers
  // with it.
  std::vector<at::Tensor> buffers;
  std::vector<float*> buf;
  for (int t = 0; t <= n_terms; ++t) {
    const bool needed = t < n_terms || need_spare;
    buffers.push_back(needed ? empty_large({max_rows, s}, opts) : at::Tensor());
    buf.push_back(needed ? buffers.back().data_ptr<float>() : nullptr);
  }
  // Matrix compatibilities mix labels: those terms are sliced and multiplied by the matrix
  // (a GEMM) before the per-pixel pass, which adds the resulting message.
  std::vector<at::Tensor> filtered(n_terms), messages(n_terms);
  for (int t = 0; t < n_terms; ++t) {
    if (terms[t].compat.dim() == 2) {
      filtered[t] = empty_large({n, s}, opts);
      messages[t] = empty_large({n, s}, opts);
    }
  }

  std::vector<cpu::TermUpdate> updates(n_terms);
  for (int64_t it = 0; it < iterations; ++it) {
    cpu::splat_and_blur(view_ptrs.data(), n_terms, q.data_ptr<float>(), s, buf.data(),
                        &buf[n_terms], /*reverse=*/false);
    for (int t = 0; t < n_terms; ++t) {
      updates[t] = {&views[t], buf[t], nullptr, nullptr};
      if (compats_padded[t].dim() == 2) {
        cpu::slice(views[t], buf[t], s, filtered[t].data_ptr<float>());
        at::mm_out(messages[t], filtered[t], compats_padded[t]);
        updates[t].dense_message = messages[t].data_ptr<float>();
      } else {
        updates[t].label_compat = compats_padded[t].data_ptr<float>();
      }
    }
    cpu::update_rows(updates.data(), n_terms, unary.data_ptr<float>(), n, m, s,
                     q.data_ptr<float>());
  }
  unpad_result(q, s);
  return result;
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) { m.impl("mean_field", &mean_field_cpu); }

}  // namespace lattice
}  // namespace fastseg
