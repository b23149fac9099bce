// Large CPU buffers: backed by transparent huge pages where the kernel allows it, and reused
// across calls.
//
// A fresh 4 KiB-page allocation costs about 0.4 ms per MB in page faults on the machines we
// measure on (huge pages: about 0.06 ms per MB, still 15-30 ms for one 512x512 CRF call); the
// lattice's vertex buffers are 10-500 MB and are written once per call. So blocks of 4 MB or
// more are huge-page advised, and freed ones of at most 64 MB are cached (up to
// FASTSEG_BUFFER_CACHE_MB in all, default 512; 0 disables) for the next call of the same size;
// release_cached_buffers() (Python: fastseg.empty_cache()) returns them to the system.
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
void free_large(void* ptr);

// Frees every cached block; returns the bytes released.
int64_t release_cached_buffers();

template <typename T>
std::unique_ptr<T[], FreeDeleter> scratch_large(int64_t n) {
  return std::unique_ptr<T[], FreeDeleter>(
      static_cast<T*>(allocate_large(static_cast<size_t>(n) * sizeof(T))));
}

}  // namespace fastseg
