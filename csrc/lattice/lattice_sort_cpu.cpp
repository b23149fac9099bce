#include "lattice/lattice_sort_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/large_buffer.h"
#include "common/parallel_dynamic.h"

namespace fastseg {
namespace lattice {
namespace cpu {
namespace {

// Field layout of packed keys. Every coordinate of a lattice vertex has the same remainder
// modulo d+1 (the remainder-0 vertex's coordinates are multiples of d+1, and vertex r adds r,
// or r - (d+1), to each), so a key is stored as that remainder and each coordinate's quotient:
// coordinate i = (d+1) (field_i + origin[i]) + remainder. That takes log2(d+1) bits fewer per
// coordinate than the coordinates themselves (33 bits instead of 45 for the bilateral term of
// a 512x512 photo: three radix passes instead of four). Quotient 0 is the highest field and
// the remainder the next: packed keys then sort exactly as the coordinates do
// lexicographically (coordinate 0 orders by quotient, then remainder), which keeps the later
// steps' random accesses as local as before (the remainder in the highest field made them 25%
// slower, eating the sort's gain).
struct KeyPacking {
  int d = 0;
  int bits = 0;  // bits in use
  int shift[kMaxDim] = {};
  int width[kMaxDim] = {};
  int64_t origin[kMaxDim] = {};
  int rem_shift = 0, rem_width = 0;      // the remainder's field
  uint64_t step_on[kMaxDim + 1] = {};    // packed "+" step along each direction, remainder >= 1
  uint64_t step_wrap[kMaxDim + 1] = {};  // the same from remainder 0
  // The same keys packed linearly, coordinate i - (d+1) origin[i] (below (d+1) 2^width[i]) in
  // a field of its own, where that fits in 64 bits: the coordinates' lexicographic order too,
  // and a "+" step adds one constant, linear_step[j], whatever the remainder.
  bool linear_fits = false;
  int linear_shift[kMaxDim] = {};
  uint64_t linear_step[kMaxDim + 1] = {};

  uint64_t rem_one() const { return uint64_t(1) << rem_shift; }
  uint64_t rem_mask() const { return ((uint64_t(1) << rem_width) - 1) << rem_shift; }
  void unpack(uint64_t packed, int32_t* key) const {
    const int64_t remainder = static_cast<int64_t>((packed & rem_mask()) >> rem_shift);
    for (int i = 0; i < d; ++i) {
      const uint64_t field = (packed >> shift[i]) & ((uint64_t(2) << (width[i] - 1)) - 1);
      key[i] =
          static_cast<int32_t>((static_cast<int64_t>(field) + origin[i]) * (d + 1) + remainder);
    }
  }
  // The linear key of a vertex's coordinates (unpacked keys), when linear_fits.
  uint64_t linear(const int32_t* key) const {
    uint64_t w = 0;
    for (int i = 0; i < d; ++i) {
      w += static_cast<uint64_t>(key[i] - origin[i] * (d + 1)) << linear_shift[i];
    }
    return w;
  }
};

// x / (d+1) without an integer division per element (tens of cycles each, and the build
// makes millions).
struct DivideByDp1 {
  int shift = 0;         // d+1 = 2^shift * odd
  uint32_t inverse = 1;  // odd * inverse = 1 modulo 2^32
  double reciprocal;
  explicit DivideByDp1(int dp1) : reciprocal(1.0 / dp1) {
    while ((dp1 >> shift) % 2 == 0) ++shift;
    const uint32_t odd = static_cast<uint32_t>(dp1 >> shift);
    for (int i = 0; i < 5; ++i) inverse *= 2 - odd * inverse;  // Newton: 1, 2, 4, ... 32 bits
  }
  // x a multiple of d+1, of either sign: the shift is exact, and multiplying by the odd part's
  // inverse modulo 2^32 undoes multiplying by it. (Garbage otherwise, which callers check.)
  int32_t exact(int32_t x) const {
    return static_cast<int32_t>(static_cast<uint32_t>(x >> shift) * inverse);
  }
  // floor(x / (d+1)) for 0 <= x < 2^31: (x + 1/2) / (d+1) is at least 1/34 from an integer,
  // and the double product is within 1e-7 of it.
  int64_t floor_nonnegative(int64_t x) const {
    return static_cast<int64_t>((static_cast<double>(x) + 0.5) * reciprocal);
  }
};

// Distinct packed vertex keys in increasing order, and the vertex each belongs to.
// The keys are KeyPacking::linear where it fits, else packed.
struct SortedVertices {
  std::vector<uint64_t> key;
  std::vector<int32_t> vertex;
};

// Work is split into a fixed number of contiguous chunks per step. Every step's output is
// uniquely defined, so the chunk count (which follows the thread count) never shows in it.
int64_t chunk_count(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), n / 16384));
}

// fn(c, begin, end) for chunk c = [n c / chunks, n (c+1) / chunks), chunks in parallel,
// handed out one at a time (see parallel_dynamic.h).
template <typename Fn>
void for_chunks(int64_t n, int64_t chunks, const Fn& fn) {
  parallel_for_dynamic(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) fn(c, n * c / chunks, n * (c + 1) / chunks);
  });
}

// In-place exclusive prefix sum of counts[0..n), returning the total.
int64_t exclusive_prefix(int64_t* counts, int64_t n) {
  int64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t here = counts[i];
    counts[i] = sum;
    sum += here;
  }
  return sum;
}

// Radix digits of up to 12 bits: fewer passes over the data beat the scatter's extra spread
// (measured: 4 passes of 12 bits sort a 45-bit lattice 20% faster than 5 passes of 9).
constexpr int kMaxDigitBits = 12;

// Plans fields for vertices whose coordinate quotients (coordinate div d+1, see KeyPacking)
// lie in [lo[i], hi[i]], such that their "+" neighbours pack too. False if that needs more
// than 64 bits.
bool plan_packing(const int64_t* lo, const int64_t* hi, int d, KeyPacking* out) {
  KeyPacking p;
  p.d = d;
  // A "+" step moves a quotient by at most one either way: field i stores q - (lo - 1).
  auto add_field = [&p](int width) {
    const int shift = p.bits;
    p.bits += width;
    return shift;
  };
  auto width_of = [](uint64_t range) {
    int width = 1;
    while (width < 64 && (range >> width) != 0) ++width;
    return width;
  };
  for (int i = d - 1; i >= 0; --i) {
    if (i == 0) {  // the remainder goes just below quotient 0 (see KeyPacking)
      p.rem_width = width_of(static_cast<uint64_t>(d));
      p.rem_shift = add_field(p.rem_width);
    }
    p.width[i] = width_of(static_cast<uint64_t>(hi[i] + 1 - (lo[i] - 1)));
    p.origin[i] = lo[i] - 1;
    p.shift[i] = add_field(p.width[i]);
    if (p.bits > 64) return false;
  }
  // Along direction j coordinate j gains d and the others lose 1: from remainder r >= 1 that is
  // quotient j + 1 and remainder r - 1; from remainder 0, every other quotient - 1 and
  // remainder d. (Direction d moves the implied last coordinate, which has no field.) Sums are
  // modulo 2^64, exact once added to a key whose neighbour packs.
  uint64_t all_fields = 0;
  for (int i = 0; i < d; ++i) all_fields += uint64_t(1) << p.shift[i];
  for (int j = 0; j <= d; ++j) {
    const uint64_t field_j = j < d ? uint64_t(1) << p.shift[j] : 0;
    p.step_on[j] = field_j - p.rem_one();
    p.step_wrap[j] = static_cast<uint64_t>(d) * p.rem_one() - (all_fields - field_j);
  }
  int linear_bits = 0;
  for (int i = d - 1; i >= 0; --i) {
    p.linear_shift[i] = linear_bits;
    linear_bits += p.width[i] + p.rem_width;
  }
  p.linear_fits = linear_bits <= 64;
  for (int j = 0; j <= d && p.linear_fits; ++j) {
    for (int i = 0; i < d; ++i) {  // modulo 2^64, exact once added to a key whose neighbour packs
      p.linear_step[j] += static_cast<uint64_t>(i == j ? d : -1) << p.linear_shift[i];
    }
  }
  *out = p;
  return true;
}

// Stable LSD radix sort of (key, value) pairs by the low `bits` bits of the keys, in parallel.
// A stable sort has one possible output, so the result does not depend on the thread count.
// The passes ping-pong between the arrays and scratch ones; after an odd number the scratch
// arrays, which then hold the result, take the arrays' place (no copy back).
using KeyArray = std::unique_ptr<uint64_t[], FreeDeleter>;
using ValueArray = std::unique_ptr<int32_t[], FreeDeleter>;

void radix_sort_pairs(KeyArray* key_array, ValueArray* value_array, int64_t n, int bits) {
  if (n < 2 || bits <= 0) return;
  const int passes = (bits + kMaxDigitBits - 1) / kMaxDigitBits;
  const int digit_bits = (bits + passes - 1) / passes;
  const int64_t buckets = int64_t(1) << digit_bits;
  const uint64_t mask = static_cast<uint64_t>(buckets - 1);
  const int64_t chunks = chunk_count(n);
  auto key_tmp = scratch_large<uint64_t>(n);
  auto value_tmp = scratch_large<int32_t>(n);
  uint64_t* key_src = key_array->get();
  int32_t* value_src = value_array->get();
  uint64_t* key_dst = key_tmp.get();
  int32_t* value_dst = value_tmp.get();
  std::vector<int64_t> count(chunks * buckets);  // bucket-major: count[b * chunks + c]
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * digit_bits;
    for_chunks(n, chunks, [&](int64_t c, int64_t begin, int64_t end) {
      std::vector<int64_t> hist(buckets, 0);
      for (int64_t i = begin; i < end; ++i) ++hist[(key_src[i] >> shift) & mask];
      for (int64_t b = 0; b < buckets; ++b) count[b * chunks + c] = hist[b];
    });
    bool one_bucket = false;  // the digit is the same everywhere: nothing to reorder
    for (int64_t b = 0; b < buckets && !one_bucket; ++b) {
      int64_t total = 0;
      for (int64_t c = 0; c < chunks; ++c) total += count[b * chunks + c];
      one_bucket = total == n;
    }
    if (one_bucket) continue;
    // Bucket-major prefix: bucket b of chunk c lands after all smaller buckets and after
    // bucket b of earlier chunks, which is what keeps the sort stable.
    exclusive_prefix(count.data(), chunks * buckets);
    for_chunks(n, chunks, [&](int64_t c, int64_t begin, int64_t end) {
      std::vector<int64_t> cursor(buckets);
      for (int64_t b = 0; b < buckets; ++b) cursor[b] = count[b * chunks + c];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t pos = cursor[(key_src[i] >> shift) & mask]++;
        key_dst[pos] = key_src[i];
        value_dst[pos] = value_src[i];
      }
    });
    std::swap(key_src, key_dst);
    std::swap(value_src, value_dst);
  }
  if (key_src != key_array->get()) {  // an odd number of passes ran
    std::swap(*key_array, key_tmp);
    std::swap(*value_array, value_tmp);
  }
}

// Sets the blur neighbours of sorted keys t, given the position `at` of the first key >= the
// target of t (kept by the caller between calls, as targets increase with t).
inline void link_if_equal(const SortedVertices& sorted, int64_t nv, int64_t t, uint64_t target,
                          const uint64_t* key, int64_t* at, int32_t* nb) {
  int64_t a = *at;
  while (a < nv && key[a] < target) ++a;
  *at = a;
  if (a < nv && key[a] == target) {
    nb[int64_t(sorted.vertex[t]) * 2 + 0] = sorted.vertex[a];
    nb[int64_t(sorted.vertex[a]) * 2 + 1] = sorted.vertex[t];
  }
}

// Writes each vertex's two blur neighbours along each direction into neighbors (d+1, nv, 2),
// prefilled with nv ("missing"): the "+" neighbour of sorted key t along direction j is the
// key equal to key[t] + step, found by merging the sorted keys with themselves.
//
// The step is one constant for remainders 1..d and another for remainder 0 (KeyPacking): a
// merge pointer for each kind of key would do, but two interleaved pointers took 25% longer
// than one. So where they fit in 64 bits, the sorted keys are packed linearly
// (KeyPacking::linear), along which a step adds one constant.
void find_neighbors_sorted(const SortedVertices& sorted, const KeyPacking& packing, int64_t nv,
                           int32_t* neighbors) {
  const int d = packing.d;
  const uint64_t* key = sorted.key.data();
  parallel_for_dynamic(d + 1, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      int32_t* nb = neighbors + j * nv * 2;
      if (packing.linear_fits) {
        int64_t at = 0;
        for (int64_t t = 0; t < nv; ++t) {
          link_if_equal(sorted, nv, t, key[t] + packing.linear_step[j], key, &at, nb);
        }
        continue;
      }
      const uint64_t rem_mask = packing.rem_mask();
      const uint64_t step[2] = {packing.step_wrap[j], packing.step_on[j]};
      int64_t at[2] = {0, 0};
      for (int64_t t = 0; t < nv; ++t) {
        const int kind = (key[t] & rem_mask) != 0;
        link_if_equal(sorted, nv, t, key[t] + step[kind], key, &at[kind], nb);
      }
    }
  });
}

}  // namespace

bool build_by_sorting(const SimplexStore& store, int64_t n_points, const float* bary,
                      int32_t* vertex_of_entry, const at::TensorOptions& float_options,
                      SortedBuild* out) {
  const int d = store.d;
  const int dp1 = d + 1;
  const int64_t n_entries = n_points * dp1;
  const DivideByDp1 by_dp1(dp1);

  // Quotient ranges, exactly: an entry's coordinate i is rem0[i] + r - (d+1) [rank[i] > d - r]
  // with rem0[i] a multiple of d+1 (permutohedral_math.h), so its quotient is rem0[i] / (d+1)
  // or one less. A rem0 off the multiples (never, by construction) leaves the build to hashing.
  const int64_t point_chunks = chunk_count(n_points);
  std::vector<int64_t> chunk_lo(point_chunks * d), chunk_hi(point_chunks * d);
  std::vector<char> chunk_exact(point_chunks, 1);
  for_chunks(n_points, point_chunks, [&](int64_t c, int64_t begin, int64_t end) {
    int64_t lo[kMaxDim], hi[kMaxDim];
    std::fill(lo, lo + d, std::numeric_limits<int64_t>::max());
    std::fill(hi, hi + d, std::numeric_limits<int64_t>::min());
    bool exact = true;
    for (int64_t p = begin; p < end; ++p) {
      for (int i = 0; i < d; ++i) {
        const int32_t r0 = store.rem0[p * dp1 + i];
        const int64_t q = by_dp1.exact(r0);
        exact &= q * dp1 == static_cast<int64_t>(r0);
        lo[i] = std::min(lo[i], q - 1);
        hi[i] = std::max(hi[i], q);
      }
    }
    std::copy(lo, lo + d, &chunk_lo[c * d]);
    std::copy(hi, hi + d, &chunk_hi[c * d]);
    chunk_exact[c] = exact;
  });
  if (std::find(chunk_exact.begin(), chunk_exact.end(), 0) != chunk_exact.end()) return false;
  int64_t lo[kMaxDim], hi[kMaxDim];
  for (int i = 0; i < d; ++i) {
    lo[i] = std::numeric_limits<int64_t>::max();
    hi[i] = std::numeric_limits<int64_t>::min();
    for (int64_t c = 0; c < point_chunks; ++c) {
      lo[i] = std::min(lo[i], chunk_lo[c * d + i]);
      hi[i] = std::max(hi[i], chunk_hi[c * d + i]);
    }
  }
  KeyPacking packing;
  if (!plan_packing(lo, hi, d, &packing)) return false;

  // Every entry's packed key, sorted stably: each vertex's entries end up together, in entry
  // (= point) order, so the first of each run is the vertex's first use.
  auto key = scratch_large<uint64_t>(n_entries);
  auto entry = scratch_large<int32_t>(n_entries);
  // Packed keys of a point's d+1 vertices, one from the next: vertex r has remainder r and
  // quotient i rem0[i] / (d+1) - [rank[i] > d - r] (SimplexStore::vertex_key), so going from r
  // to r+1 adds one to the remainder and takes one from the quotient whose rank is d - r (ranks
  // are a permutation of 0..d; rank d - r may belong to the implied last coordinate). Exact:
  // every step lands on a key that packs (plan_packing covers them all).
  uint64_t field_one[kMaxDim];
  for (int i = 0; i < d; ++i) field_one[i] = uint64_t(1) << packing.shift[i];
  const uint64_t rem_one = packing.rem_one();
  parallel_for_dynamic(n_points, 4096, [&](int64_t begin, int64_t end) {
    uint64_t drop_at_rank[kMaxDim + 1];
    for (int64_t p = begin; p < end; ++p) {
      const int32_t* rem0 = store.rem0 + p * dp1;
      const int8_t* rank = store.rank + p * dp1;
      uint64_t packed = 0;
      drop_at_rank[rank[d]] = 0;
      for (int i = 0; i < d; ++i) {
        packed += static_cast<uint64_t>(by_dp1.exact(rem0[i]) - packing.origin[i])
                  << packing.shift[i];
        drop_at_rank[rank[i]] = field_one[i];
      }
      for (int r = 0; r <= d; ++r) {
        const int64_t e = p * dp1 + r;
        key[e] = packed;
        entry[e] = static_cast<int32_t>(e);
        packed += rem_one - drop_at_rank[d - r];
      }
    }
  });
  radix_sort_pairs(&key, &entry, n_entries, packing.bits);

  // Number vertices by first use: mark each run's first entry, then count marks in entry order.
  auto is_first = scratch_large<uint8_t>(n_entries);
  std::memset(is_first.get(), 0, n_entries);
  parallel_for_dynamic(n_entries, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i == 0 || key[i] != key[i - 1]) is_first[entry[i]] = 1;
    }
  });
  const int64_t entry_chunks = chunk_count(n_entries);
  std::vector<int64_t> first_before(entry_chunks);
  for_chunks(n_entries, entry_chunks, [&](int64_t c, int64_t begin, int64_t end) {
    int64_t n_first = 0;
    for (int64_t e = begin; e < end; ++e) n_first += is_first[e];
    first_before[c] = n_first;
  });
  const int64_t nv = exclusive_prefix(first_before.data(), entry_chunks);
  for_chunks(n_entries, entry_chunks, [&](int64_t c, int64_t begin, int64_t end) {
    int32_t next = static_cast<int32_t>(first_before[c]);
    for (int64_t e = begin; e < end; ++e) {
      if (is_first[e]) vertex_of_entry[e] = next++;
    }
  });

  // Runs of equal keys, split into chunks that start at a run: every entry gets its run's
  // vertex, and each run records its key, vertex, start and its vertex's key coordinates.
  std::vector<int64_t> bound(entry_chunks + 1);
  for (int64_t c = 0; c <= entry_chunks; ++c) {
    int64_t b = n_entries * c / entry_chunks;
    while (b > 0 && b < n_entries && key[b] == key[b - 1]) ++b;
    bound[c] = b;
  }
  std::vector<int64_t> runs_before(entry_chunks);
  parallel_for_dynamic(entry_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t n_runs = 0;
      for (int64_t i = bound[c]; i < bound[c + 1]; ++i) n_runs += i == 0 || key[i] != key[i - 1];
      runs_before[c] = n_runs;
    }
  });
  TORCH_CHECK(exclusive_prefix(runs_before.data(), entry_chunks) == nv,
              "permutohedral_build: inconsistent vertex count (internal error)");
  SortedVertices sorted{std::vector<uint64_t>(nv), std::vector<int32_t>(nv)};
  std::vector<int64_t> run_start(nv + 1);
  run_start[nv] = n_entries;
  const auto int_options = float_options.dtype(at::kInt);
  at::Tensor keys = empty_large({nv, d}, int_options);
  int32_t* keys_ptr = keys.data_ptr<int32_t>();
  parallel_for_dynamic(entry_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t run = runs_before[c] - 1;
      int32_t v = 0;
      for (int64_t i = bound[c]; i < bound[c + 1]; ++i) {
        if (i == 0 || key[i] != key[i - 1]) {
          v = vertex_of_entry[entry[i]];
          ++run;
          int32_t* coordinates = keys_ptr + int64_t(v) * d;
          packing.unpack(key[i], coordinates);
          sorted.key[run] = packing.linear_fits ? packing.linear(coordinates) : key[i];
          sorted.vertex[run] = v;
          run_start[run] = i;
        } else {
          vertex_of_entry[entry[i]] = v;
        }
      }
    }
  });

  // Transposed (vertex -> point) index: run lengths give the CSR offsets in vertex order.
  at::Tensor splat_offsets = empty_large({nv + 1}, float_options.dtype(at::kLong));
  int64_t* offsets = splat_offsets.data_ptr<int64_t>();
  parallel_for_dynamic(nv, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      offsets[sorted.vertex[r]] = run_start[r + 1] - run_start[r];
  });
  offsets[nv] = 0;
  exclusive_prefix(offsets, nv + 1);
  at::Tensor splat_points = empty_large({n_entries}, int_options);
  at::Tensor splat_weights = empty_large({n_entries}, float_options);
  int32_t* points = splat_points.data_ptr<int32_t>();
  float* weights = splat_weights.data_ptr<float>();
  parallel_for_dynamic(nv, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t pos = offsets[sorted.vertex[r]];
      for (int64_t i = run_start[r]; i < run_start[r + 1]; ++i, ++pos) {
        points[pos] = static_cast<int32_t>(by_dp1.floor_nonnegative(entry[i]));
        weights[pos] = bary[entry[i]];
      }
    }
  });

  at::Tensor neighbors = empty_large({dp1, nv, 2}, int_options);
  int32_t* nb = neighbors.data_ptr<int32_t>();
  parallel_for_dynamic(dp1 * nv * 2, 65536, [&](int64_t begin, int64_t end) {
    std::fill(nb + begin, nb + end, static_cast<int32_t>(nv));
  });
  find_neighbors_sorted(sorted, packing, nv, neighbors.data_ptr<int32_t>());

  out->keys = keys;
  out->splat_offsets = splat_offsets;
  out->splat_points = splat_points;
  out->splat_weights = splat_weights;
  out->neighbors = neighbors;
  return true;
}

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
