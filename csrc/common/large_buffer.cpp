#include "common/large_buffer.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/irange.h>

#include <cstdlib>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastseg {

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef __linux__
  constexpr size_t kHugePage = size_t(2) << 20;
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (options.device().is_cpu() && bytes >= 2 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* ptr = std::aligned_alloc(kHugePage, rounded);
    if (ptr == nullptr) throw std::bad_alloc();
    madvise(ptr, rounded, MADV_HUGEPAGE);  // advice only: harmless where THP is off
    return at::from_blob(ptr, sizes, [](void* p) { std::free(p); }, options);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace fastseg
