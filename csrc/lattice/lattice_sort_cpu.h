// Sorting-based pieces of the CPU lattice build (lattice_build_cpu.cpp).
//
// When a lattice's keys fit in 64 bits (each coordinate stored as an offset from its minimum,
// in as many bits as its range needs), packed keys order vertices lexicographically, and the
// "+" neighbour along direction j is the packed key plus a constant. Sorting packed keys then
// replaces hashing on the CPU: a stable radix sort of every (point, vertex) entry groups the
// entries of each vertex, in point order, with sequential memory traffic only, and one merge
// of the sorted keys with themselves per direction finds every blur neighbour. Hashing's
// random probes into a table much larger than the caches cost several times more.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "lattice/lattice_table.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {
namespace cpu {

// Field layout of packed keys: coordinate i is stored as key[i] - origin[i] in bits
// [shift[i], shift[i] + width), coordinate 0 in the highest field.
struct KeyPacking {
  int d = 0;
  int bits = 0;  // bits in use
  int shift[kMaxDim] = {};
  int width[kMaxDim] = {};
  int64_t origin[kMaxDim] = {};
  uint64_t delta[kMaxDim + 1] = {};  // packed "+" step along each direction

  uint64_t pack(const int32_t* key) const {
    uint64_t packed = 0;
    for (int i = 0; i < d; ++i) packed += static_cast<uint64_t>(key[i] - origin[i]) << shift[i];
    return packed;
  }
  void unpack(uint64_t packed, int32_t* key) const {
    for (int i = 0; i < d; ++i) {
      const uint64_t field = (packed >> shift[i]) & ((uint64_t(2) << (width[i] - 1)) - 1);
      key[i] = static_cast<int32_t>(static_cast<int64_t>(field) + origin[i]);
    }
  }
};

// Plans fields for keys with coordinates in [lo[i], hi[i]] such that their "+" neighbours
// (every coordinate -1, one of them +d) pack too. False if that needs more than 64 bits.
bool plan_packing(const int64_t* lo, const int64_t* hi, int d, KeyPacking* out);

// Stable LSD radix sort of (key, value) pairs by the low `bits` bits of the keys, in parallel.
// A stable sort has one possible output, so the result does not depend on the thread count.
void radix_sort_pairs(uint64_t* key, int32_t* value, int64_t n, int bits);

// Distinct packed vertex keys in increasing order, and the vertex each belongs to.
struct SortedVertices {
  std::vector<uint64_t> key;
  std::vector<int32_t> vertex;
};

// Writes each vertex's two blur neighbours along each direction into neighbors (d+1, nv, 2),
// which must be prefilled with nv ("missing").
void find_neighbors_sorted(const SortedVertices& sorted, const KeyPacking& packing, int64_t nv,
                           int32_t* neighbors);

// Everything the build makes after the embedding, by sorting entries (see the top of this
// file). Returns false, having written nothing, when the keys do not pack into 64 bits.
// On success vertex_of_entry (N(d+1),) holds each entry's vertex, numbered by first use.
struct SortedBuild {
  int64_t n_vertices = 0;
  at::Tensor keys, splat_offsets, splat_points, splat_weights, neighbors;
};
bool build_by_sorting(const SimplexStore& store, int64_t n_points, const float* bary,
                      int32_t* vertex_of_entry, const at::TensorOptions& float_options,
                      SortedBuild* out);

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
