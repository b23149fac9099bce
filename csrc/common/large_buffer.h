// Large CPU tensors backed by transparent huge pages where the kernel allows it.
//
// A fresh 4 KiB-page allocation costs about 0.4 ms per MB in page faults on the machines we
// measure on; the lattice's vertex buffers are 10-500 MB and are written once per call, so
// faulting them in 4 KiB pages costs as much as the filtering. Huge pages cut that ~3x.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>

namespace fastseg {

// at::empty for CPU tensors, with huge-page advice for allocations of 4 MB or more.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

// Uninitialised scratch memory for n trivially constructible T, huge-page advised when large.
struct FreeDeleter {
  void operator()(void* p) const;
};
void* allocate_large(size_t bytes);

template <typename T>
std::unique_ptr<T[], FreeDeleter> scratch_large(int64_t n) {
  return std::unique_ptr<T[], FreeDeleter>(
      static_cast<T*>(allocate_large(static_cast<size_t>(n) * sizeof(T))));
}

}  // namespace fastseg
