// CPU construction of the permutohedral lattice (see lattice.h for what it returns).
//
// Every point is embedded with the per-point code the CUDA build shares
// (permutohedral_math.h). Then, when the lattice keys pack into 64 bits (the usual case), the
// rest is done by sorting entries (lattice_sort_cpu.h); otherwise as on the GPU (and sharing
// its hash table code, lattice_table.h): insert every (point, vertex) entry into a lock-free
// table, number vertices by first use, build the transposed (vertex -> point) index and look
// up each vertex's blur neighbours. Both paths give the same lattice, and every step's output
// is independent of the number of threads.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include "common/large_buffer.h"
#include "common/parallel_dynamic.h"
#include "lattice/lattice.h"
#include "lattice/lattice_sort_cpu.h"
#include "lattice/lattice_table.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {
namespace {

constexpr int64_t kGrain = 4096;

// kD > 0: the feature dimension as a compile-time constant, so that every per-coordinate loop
// of the embedding unrolls and its small arrays live in registers (same operations in the same
// order: same bits). The bilateral term's d = 5 embedding ran 1.6x faster so.
template <typename T, int kD>
void embed_points_d(const float* features, int64_t n, int d_runtime, int32_t* rem0, int8_t* rank,
                    float* bary) {
  const int d = kD > 0 ? kD : d_runtime;
  const Embedding<T> emb = make_embedding<T>(d);
  parallel_for_dynamic(n, kGrain, [&](int64_t begin, int64_t end) {
    Simplex s;
    for (int64_t p = begin; p < end; ++p) {
      embed_point<T, kD>(features + p * d, emb, s);
      for (int i = 0; i <= d; ++i) {
        rem0[p * (d + 1) + i] = s.rem0[i];
        rank[p * (d + 1) + i] = static_cast<int8_t>(s.rank[i]);
        bary[p * (d + 1) + i] = s.bary[i];
      }
    }
  });
}

// Dispatches d = 1..kMaxUnrolledDim to its compile-time instance (kD counts up from 1); larger
// d take the generic code.
constexpr int kMaxUnrolledDim = 6;

template <typename T, int kD = 1>
void embed_points(const float* features, int64_t n, int d, int32_t* rem0, int8_t* rank,
                  float* bary) {
  if constexpr (kD > kMaxUnrolledDim) {
    embed_points_d<T, 0>(features, n, d, rem0, rank, bary);
  } else if (d == kD) {
    embed_points_d<T, kD>(features, n, d, rem0, rank, bary);
  } else {
    embed_points<T, kD + 1>(features, n, d, rem0, rank, bary);
  }
}

// Entries and lookups are processed in batches whose table slots are prefetched first: the
// table does not fit in cache and hashing scatters accesses, so overlapping the misses of a
// batch is what makes the CPU build fast.
constexpr int kBatch = 16;

// Inserts all entries; false if the table filled beyond 3/4 (the caller retries bigger).
// Writes each entry's slot, and an entry with the same key that is no later than it (itself
// when it claimed the slot or lowered it: a candidate for "first entry of its key").
//
// Neighbouring points mostly share vertices, so each thread keeps a small direct-mapped cache
// of the keys it has seen: a hit names an earlier entry with the key, whose slot can then only
// hold that entry or an earlier one, so the table need not be touched at all.
bool insert_entries(const SimplexStore& store, int64_t n_entries, uint64_t* table, int64_t capacity,
                    uint32_t* entry_slot, int32_t* seen_owner) {
  constexpr int kCacheBits = 12;
  struct CacheLine {
    uint64_t word;  // make_slot(hash, entry) of an entry with this key, or kEmptySlot
    uint32_t slot;
  };
  std::atomic<int64_t> claimed{0};
  std::atomic<bool> full{false};
  const int64_t max_fill = capacity - capacity / 4;
  const int d = store.d;
  at::parallel_for(0, n_entries, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<CacheLine> cache(size_t(1) << kCacheBits, CacheLine{kEmptySlot, 0});
    int32_t keys[kBatch][kMaxDim];
    uint32_t hashes[kBatch];
    int64_t local_claims = 0;
    for (int64_t b0 = begin; b0 < end && !full.load(std::memory_order_relaxed); b0 += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, end - b0));
      for (int i = 0; i < nb; ++i) {
        store.entry_key(b0 + i, keys[i]);
        hashes[i] = hash_key(keys[i], d);
        const uint64_t cached = cache[hashes[i] & ((1u << kCacheBits) - 1)].word;
        if (cached == kEmptySlot || slot_hash(cached) != hashes[i]) {  // will go to the table
          __builtin_prefetch(table + (hashes[i] & (capacity - 1)), 1);
        }
      }
      for (int i = 0; i < nb; ++i) {
        const int64_t e = b0 + i;
        CacheLine& line = cache[hashes[i] & ((1u << kCacheBits) - 1)];
        if (line.word != kEmptySlot && slot_hash(line.word) == hashes[i] &&
            store.entry_has_key(slot_entry(line.word), keys[i])) {
          entry_slot[e] = line.slot;
          seen_owner[e] = slot_entry(line.word);
          continue;
        }
        int64_t slot = 0;
        int32_t owner = 0;
        const InsertResult r = table_insert(table, capacity, store, keys[i], hashes[i],
                                            static_cast<int32_t>(e), &slot, &owner);
        if (r == InsertResult::kFull) {
          full = true;
          break;
        }
        entry_slot[e] = static_cast<uint32_t>(slot);
        seen_owner[e] = owner;
        line = CacheLine{make_slot(hashes[i], owner), static_cast<uint32_t>(slot)};
        local_claims += r == InsertResult::kClaimed;
      }
      if (local_claims >= 1024) {
        if (claimed.fetch_add(local_claims) + local_claims > max_fill) full = true;
        local_claims = 0;
      }
    }
    if (claimed.fetch_add(local_claims) + local_claims > max_fill) full = true;
  });
  return !full;
}

// Vertices are numbered by first use: an entry is "first" when the table kept it for its key.
// Only candidates (entries that saw themselves as their key's owner while inserting) can be
// first, so only they read the table; every other entry already names an earlier entry with
// its key. One ordered pass then numbers first entries and gives every other entry the number
// of the earlier entry it names, which is already set. Returns the number of vertices.
int64_t number_vertices(int64_t n_entries, const uint64_t* table, const uint32_t* entry_slot,
                        int32_t* vertex_of_entry, std::vector<int32_t>& first_entries) {
  auto is_first = scratch_large<uint8_t>(n_entries);
  at::parallel_for(0, n_entries, kGrain, [&](int64_t begin, int64_t end) {
    constexpr int64_t kAhead = 16;  // candidates' table slots are random: overlap their misses
    for (int64_t e = begin; e < end; ++e) {
      if (e + kAhead < end && vertex_of_entry[e + kAhead] == e + kAhead) {
        __builtin_prefetch(table + entry_slot[e + kAhead]);
      }
      is_first[e] = 0;
      if (vertex_of_entry[e] == e) {
        const int32_t owner = slot_entry(table[entry_slot[e]]);
        is_first[e] = owner == e;
        vertex_of_entry[e] = owner;  // lost the race to an earlier entry: name that one
      }
    }
  });
  int32_t next = 0;
  for (int64_t e = 0; e < n_entries; ++e) {
    if (is_first[e]) {
      first_entries.push_back(static_cast<int32_t>(e));
      vertex_of_entry[e] = next++;
    } else {
      vertex_of_entry[e] = vertex_of_entry[vertex_of_entry[e]];
    }
  }
  return next;
}

// Each vertex's key, from its first entry.
void write_vertex_keys(const SimplexStore& store, const std::vector<int32_t>& first_entries,
                       int32_t* keys) {
  const int64_t nv = static_cast<int64_t>(first_entries.size());
  at::parallel_for(0, nv, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) store.entry_key(first_entries[v], keys + v * store.d);
  });
}

// Transposed index: for each vertex, its entries in entry (= point) order. Each task owns a
// contiguous range of vertices and scans all entries, so the fill is parallel and stable.
void build_splat_index(const int32_t* vertex_of_entry, const float* bary, int64_t n_entries, int d,
                       int64_t nv, int64_t* offsets, int32_t* points, float* weights) {
  const int64_t n_tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), 8));
  auto task_range = [&](int64_t t) {
    return std::make_pair(nv * t / n_tasks, nv * (t + 1) / n_tasks);
  };
  std::fill(offsets, offsets + nv + 1, 0);
  at::parallel_for(0, n_tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto [lo, hi] = task_range(t);
      for (int64_t e = 0; e < n_entries; ++e) {
        const int32_t v = vertex_of_entry[e];
        if (v >= lo && v < hi) ++offsets[v + 1];
      }
    }
  });
  for (int64_t v = 0; v < nv; ++v) offsets[v + 1] += offsets[v];
  at::parallel_for(0, n_tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto [lo, hi] = task_range(t);
      std::vector<int64_t> cursor(offsets + lo, offsets + hi);
      for (int64_t e = 0; e < n_entries; ++e) {
        const int32_t v = vertex_of_entry[e];
        if (v >= lo && v < hi) {
          const int64_t pos = cursor[v - lo]++;
          points[pos] = static_cast<int32_t>(e / (d + 1));
          weights[pos] = bary[e];
        }
      }
    }
  });
}

// Neighbours by the table (the hashing path): look up the "+" neighbour along each direction; the
// "-" neighbour is the inverse relation (one-to-one), so it is written by the vertex that found it.
void find_neighbors_hashed(const SimplexStore& store, const uint64_t* table, int64_t capacity,
                           const int32_t* vertex_keys, const int32_t* vertex_of_entry, int64_t nv,
                           int32_t* neighbors) {
  const int d = store.d;
  const int64_t n_lookups = nv * (d + 1);  // lookup q: vertex q / (d+1), direction q % (d+1)
  at::parallel_for(0, n_lookups, kGrain, [&](int64_t begin, int64_t end) {
    int32_t keys[kBatch][kMaxDim];
    uint32_t hashes[kBatch];
    for (int64_t b0 = begin; b0 < end; b0 += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, end - b0));
      for (int i = 0; i < nb; ++i) {
        const int64_t v = (b0 + i) / (d + 1);
        neighbour_key(vertex_keys + v * d, d, static_cast<int>(b0 + i - v * (d + 1)), keys[i]);
        hashes[i] = hash_key(keys[i], d);
        __builtin_prefetch(table + (hashes[i] & (capacity - 1)), 0);
      }
      for (int i = 0; i < nb; ++i) {
        const int32_t entry = table_find(table, capacity, store, keys[i], hashes[i]);
        if (entry >= 0) {
          const int64_t v = (b0 + i) / (d + 1);
          const int64_t j = b0 + i - v * (d + 1);
          const int32_t u = vertex_of_entry[entry];
          neighbors[(j * nv + v) * 2 + 0] = u;
          neighbors[(j * nv + u) * 2 + 1] = static_cast<int32_t>(v);
        }
      }
    }
  });
}

// FASTSEG_BUILD_BY_HASHING=1 takes the hashing path even when keys pack, so that the tests
// can check both paths against the reference on the same inputs.
bool hashing_forced() {
  const char* value = std::getenv("FASTSEG_BUILD_BY_HASHING");
  return value != nullptr && value[0] == '1';
}

}  // namespace

LatticeTensors permutohedral_build_cpu(const at::Tensor& features_in) {
  check_features(features_in);
  TORCH_CHECK(features_in.device().is_cpu(), "permutohedral_build: expected a CPU tensor");
  const at::Tensor features = features_in.contiguous();
  const int64_t n = features.size(0);
  const int d = static_cast<int>(features.size(1));
  const int64_t n_entries = n * (d + 1);
  const double bound = checked_elevated_bound(features);

  const auto int_opts = features.options().dtype(at::kInt);
  auto rem0 = scratch_large<int32_t>(n_entries);
  auto rank = scratch_large<int8_t>(n_entries);
  at::Tensor weights = empty_large({n, d + 1}, features.options());
  if (bound < kMaxFloatElevated) {
    embed_points<float>(features.data_ptr<float>(), n, d, rem0.get(), rank.get(),
                        weights.data_ptr<float>());
  } else {
    embed_points<double>(features.data_ptr<float>(), n, d, rem0.get(), rank.get(),
                         weights.data_ptr<float>());
  }
  const SimplexStore store{rem0.get(), rank.get(), d};
  at::Tensor vertices = empty_large({n, d + 1}, int_opts);

  cpu::SortedBuild sorted_build;
  if (!hashing_forced() &&
      cpu::build_by_sorting(store, n, weights.data_ptr<float>(), vertices.data_ptr<int32_t>(),
                            features.options(), &sorted_build)) {
    return {vertices,
            weights,
            sorted_build.neighbors,
            sorted_build.splat_offsets,
            sorted_build.splat_points,
            sorted_build.splat_weights,
            sorted_build.keys};
  }

  // Keys too wide to pack: hash every entry instead. `vertices` holds each entry's seen owner
  // while inserting, then its vertex number.
  auto entry_slot = scratch_large<uint32_t>(n_entries);
  std::vector<uint64_t> table;
  int64_t capacity = 0;
  for (bool retry : {false, true}) {
    capacity = table_capacity(n, n_entries, retry);
    table.assign(capacity, kEmptySlot);
    if (insert_entries(store, n_entries, table.data(), capacity, entry_slot.get(),
                       vertices.data_ptr<int32_t>())) {
      break;
    }
    TORCH_CHECK(!retry, "permutohedral_build: hash table overflow (internal error)");
  }

  std::vector<int32_t> first_entries;
  const int64_t nv = number_vertices(n_entries, table.data(), entry_slot.get(),
                                     vertices.data_ptr<int32_t>(), first_entries);
  at::Tensor keys = at::empty({nv, d}, int_opts);
  write_vertex_keys(store, first_entries, keys.data_ptr<int32_t>());

  at::Tensor splat_offsets = at::empty({nv + 1}, features.options().dtype(at::kLong));
  at::Tensor splat_points = at::empty({n_entries}, int_opts);
  at::Tensor splat_weights = at::empty({n_entries}, features.options());
  build_splat_index(vertices.data_ptr<int32_t>(), weights.data_ptr<float>(), n_entries, d, nv,
                    splat_offsets.data_ptr<int64_t>(), splat_points.data_ptr<int32_t>(),
                    splat_weights.data_ptr<float>());

  at::Tensor neighbors = at::full({d + 1, nv, 2}, static_cast<int32_t>(nv), int_opts);
  find_neighbors_hashed(store, table.data(), capacity, keys.data_ptr<int32_t>(),
                        vertices.data_ptr<int32_t>(), nv, neighbors.data_ptr<int32_t>());
  return {vertices, weights, neighbors, splat_offsets, splat_points, splat_weights, keys};
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) { m.impl("permutohedral_build", &permutohedral_build_cpu); }

}  // namespace lattice
}  // namespace fastseg
