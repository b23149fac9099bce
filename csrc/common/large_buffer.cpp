#include "common/large_buffer.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastseg {
namespace {
constexpr size_t kHugePage = size_t(2) << 20;
}  // namespace

void FreeDeleter::operator()(void* p) const { std::free(p); }

void* allocate_large(size_t bytes) {
  void* ptr = nullptr;
#ifdef __linux__
  if (bytes >= 2 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    ptr = std::aligned_alloc(kHugePage, rounded);
    if (ptr != nullptr) madvise(ptr, rounded, MADV_HUGEPAGE);  // advice only
  } else {
    ptr = std::malloc(bytes > 0 ? bytes : 1);
  }
#else
  ptr = std::malloc(bytes > 0 ? bytes : 1);
#endif
  if (ptr == nullptr) throw std::bad_alloc();
  return ptr;
}

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (!options.device().is_cpu() || bytes < 2 * kHugePage) return at::empty(sizes, options);
  void* ptr = allocate_large(bytes);
  return at::from_blob(ptr, sizes, [](void* p) { std::free(p); }, options);
}

}  // namespace fastseg
