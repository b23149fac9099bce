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

// Distinct packed vertex keys in increasing order, and the vertex each belongs to.
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

// Plans fields for keys with coordinates in [lo[i], hi[i]] such that their "+" neighbours
// (every coordinate -1, one of them +d) pack too. False if that needs more than 64 bits.
bool plan_packing(const int64_t* lo, const int64_t* hi, int d, KeyPacking* out) {
  KeyPacking p;
  p.d = d;
  // Neighbour keys range over [lo - 1, hi + d]: field i stores key - (lo - 1).
  for (int i = d - 1; i >= 0; --i) {
    const uint64_t range = static_cast<uint64_t>(hi[i] + d - (lo[i] - 1));
    int width = 1;
    while (width < 64 && (range >> width) != 0) ++width;
    p.shift[i] = p.bits;
    p.width[i] = width;
    p.origin[i] = lo[i] - 1;
    p.bits += width;
    if (p.bits > 64) return false;
  }
  for (int j = 0; j <= d; ++j) {
    uint64_t delta = 0;
    for (int i = 0; i < d; ++i) {
      const int64_t step = i == j ? d : -1;
      delta += static_cast<uint64_t>(step) << p.shift[i];  // modulo 2^64, exact once summed
    }
    p.delta[j] = delta;
  }
  *out = p;
  return true;
}

// Stable LSD radix sort of (key, value) pairs by the low `bits` bits of the keys, in parallel.
// A stable sort has one possible output, so the result does not depend on the thread count.
void radix_sort_pairs(uint64_t* key, int32_t* value, int64_t n, int bits) {
  if (n < 2 || bits <= 0) return;
  const int passes = (bits + kMaxDigitBits - 1) / kMaxDigitBits;
  const int digit_bits = (bits + passes - 1) / passes;
  const int64_t buckets = int64_t(1) << digit_bits;
  const uint64_t mask = static_cast<uint64_t>(buckets - 1);
  const int64_t chunks = chunk_count(n);
  auto key_tmp = scratch_large<uint64_t>(n);
  auto value_tmp = scratch_large<int32_t>(n);
  uint64_t* key_src = key;
  int32_t* value_src = value;
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
  if (key_src != key) {  // an odd number of passes ran: the result is in the scratch arrays
    parallel_for_dynamic(n, 65536, [&](int64_t begin, int64_t end) {
      std::copy(key_src + begin, key_src + end, key + begin);
      std::copy(value_src + begin, value_src + end, value + begin);
    });
  }
}

// Writes each vertex's two blur neighbours along each direction into neighbors (d+1, nv, 2),
// prefilled with nv ("missing"): the "+" neighbour of sorted key t along direction j is the
// key equal to key[t] + delta[j], found by one merge of the sorted keys with themselves.
void find_neighbors_sorted(const SortedVertices& sorted, const KeyPacking& packing, int64_t nv,
                           int32_t* neighbors) {
  const int d = packing.d;
  parallel_for_dynamic(d + 1, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      int32_t* nb = neighbors + j * nv * 2;
      int64_t a = 0;
      for (int64_t t = 0; t < nv; ++t) {
        const uint64_t target = sorted.key[t] + packing.delta[j];
        while (a < nv && sorted.key[a] < target) ++a;
        if (a == nv) break;
        if (sorted.key[a] == target) {
          nb[int64_t(sorted.vertex[t]) * 2 + 0] = sorted.vertex[a];
          nb[int64_t(sorted.vertex[a]) * 2 + 1] = sorted.vertex[t];
        }
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

  // Key ranges, exactly: an entry's coordinate i is rem0[i] + offset with offset running over
  // [-rank[i], d - rank[i]] as the entry's remainder runs over 0..d.
  const int64_t point_chunks = chunk_count(n_points);
  std::vector<int64_t> chunk_lo(point_chunks * d), chunk_hi(point_chunks * d);
  for_chunks(n_points, point_chunks, [&](int64_t c, int64_t begin, int64_t end) {
    int64_t lo[kMaxDim], hi[kMaxDim];
    std::fill(lo, lo + d, std::numeric_limits<int64_t>::max());
    std::fill(hi, hi + d, std::numeric_limits<int64_t>::min());
    for (int64_t p = begin; p < end; ++p) {
      for (int i = 0; i < d; ++i) {
        const int64_t r0 = store.rem0[p * dp1 + i], rk = store.rank[p * dp1 + i];
        lo[i] = std::min(lo[i], r0 - rk);
        hi[i] = std::max(hi[i], r0 + d - rk);
      }
    }
    std::copy(lo, lo + d, &chunk_lo[c * d]);
    std::copy(hi, hi + d, &chunk_hi[c * d]);
  });
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
  // Packed keys of a point's d+1 vertices, one from the next: vertex r's coordinate i is
  // rem0[i] + r - (d+1) [rank[i] > d - r] (SimplexStore::vertex_key), so going from r to r+1
  // adds 1 to every field and takes d+1 from the one coordinate whose rank is d - r (ranks are
  // a permutation of 0..d; rank d - r may belong to the implied last coordinate). Exact: every
  // step lands on a key that packs (plan_packing covers them all).
  uint64_t field_one[kMaxDim], all_ones = 0;
  for (int i = 0; i < d; ++i) {
    field_one[i] = uint64_t(1) << packing.shift[i];
    all_ones += field_one[i];
  }
  parallel_for_dynamic(n_points, 4096, [&](int64_t begin, int64_t end) {
    uint64_t drop_at_rank[kMaxDim + 1];
    for (int64_t p = begin; p < end; ++p) {
      const int32_t* rem0 = store.rem0 + p * dp1;
      const int8_t* rank = store.rank + p * dp1;
      uint64_t packed = 0;
      drop_at_rank[rank[d]] = 0;
      for (int i = 0; i < d; ++i) {
        packed += static_cast<uint64_t>(rem0[i] - packing.origin[i]) << packing.shift[i];
        drop_at_rank[rank[i]] = static_cast<uint64_t>(dp1) * field_one[i];
      }
      for (int r = 0; r <= d; ++r) {
        const int64_t e = p * dp1 + r;
        key[e] = packed;
        entry[e] = static_cast<int32_t>(e);
        packed += all_ones - drop_at_rank[d - r];
      }
    }
  });
  radix_sort_pairs(key.get(), entry.get(), n_entries, packing.bits);

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
          sorted.key[run] = key[i];
          sorted.vertex[run] = v;
          run_start[run] = i;
          packing.unpack(key[i], keys_ptr + int64_t(v) * d);
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
        points[pos] = entry[i] / dp1;
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
