// Sorting-based pieces of the CPU lattice build (lattice_build_cpu.cpp).
//
// When a lattice's keys fit in 64 bits (each coordinate stored as its remainder modulo d+1,
// shared by all of a vertex's coordinates, and its quotient, as an offset from the smallest in
// as many bits as their range needs), the "+" neighbour along direction j is the packed key plus
// one of two constants. Sorting packed keys then replaces hashing on the CPU: a stable radix
// sort of every (point, vertex) entry groups the entries of each vertex, in point order, with
// sequential memory traffic only, and one merge of the sorted keys with themselves per
// direction find every blur neighbour. Hashing's random probes into a table much larger than
// the caches cost several times more.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "lattice/lattice_table.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {
namespace cpu {

// Everything the build makes after the embedding, by sorting entries (see the top of this
// file). Returns false, having written nothing, when the keys do not pack into 64 bits.
// On success vertex_of_entry (N(d+1),) holds each entry's vertex, numbered by first use.
struct SortedBuild {
  at::Tensor keys, splat_offsets, splat_points, splat_weights, neighbors;
};
bool build_by_sorting(const SimplexStore& store, int64_t n_points, const float* bary,
                      int32_t* vertex_of_entry, const at::TensorOptions& float_options,
                      SortedBuild* out);

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
