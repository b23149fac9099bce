// Large CPU tensors backed by transparent huge pages where the kernel allows it.
//
// A fresh 4 KiB-page allocation costs about 0.4 ms per MB in page faults on the machines we
// measure on; the lattice's vertex buffers are 10-500 MB and are written once per call, so
// faulting them in 4 KiB pages costs as much as the filtering. Huge pages cut that ~3x.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastseg {

// at::empty for CPU tensors, with huge-page advice for allocations of 4 MB or more.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace fastseg
