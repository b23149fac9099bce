// CPU construction of the permutohedral lattice (see lattice.h for what it returns).
//
// The steps mirror the CUDA build (lattice_build_cuda.cu) and share its per-point and hash
// table code: embed every point, insert every (point, vertex) entry into the lock-free table,
// number vertices by first use (a prefix sum over "first entry of its key" flags), look up one
// blur neighbour per direction and derive the other by inverting that relation, and build the
// transposed (vertex -> point) index used for gather-based splatting. Every step's output is
// independent of the number of threads.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <vector>

#include "lattice/lattice.h"
#include "lattice/lattice_table.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {
namespace {

constexpr int64_t kGrain = 4096;

// Scratch arrays that every step fully overwrites: skip std::vector's zero fill.
template <typename T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

template <typename T>
void embed_points(const float* features, int64_t n, int d, int32_t* rem0, int8_t* rank,
                  float* bary) {
  const Embedding<T> emb = make_embedding<T>(d);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    Simplex s;
    for (int64_t p = begin; p < end; ++p) {
      embed_point<T>(features + p * d, emb, s);
      for (int i = 0; i <= d; ++i) {
        rem0[p * (d + 1) + i] = s.rem0[i];
        rank[p * (d + 1) + i] = static_cast<int8_t>(s.rank[i]);
        bary[p * (d + 1) + i] = s.bary[i];
      }
    }
  });
}

// Entries and lookups are processed in batches whose table slots are prefetched first: the
// table does not fit in cache and hashing scatters accesses, so overlapping the misses of a
// batch is what makes the CPU build fast.
constexpr int kBatch = 16;

// Inserts all entries; false if the table filled beyond 3/4 (the caller retries bigger).
bool insert_entries(const SimplexStore& store, int64_t n_entries, uint64_t* table,
                    int64_t capacity, uint32_t* entry_slot) {
  std::atomic<int64_t> claimed{0};
  std::atomic<bool> full{false};
  const int64_t max_fill = capacity - capacity / 4;
  const int d = store.d;
  at::parallel_for(0, n_entries, kGrain, [&](int64_t begin, int64_t end) {
    int32_t keys[kBatch][kMaxDim];
    uint32_t hashes[kBatch];
    int64_t local_claims = 0;
    for (int64_t b0 = begin; b0 < end && !full.load(std::memory_order_relaxed); b0 += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, end - b0));
      for (int i = 0; i < nb; ++i) {
        store.entry_key(b0 + i, keys[i]);
        hashes[i] = hash_key(keys[i], d);
        __builtin_prefetch(table + (hashes[i] & (capacity - 1)), 1);
      }
      for (int i = 0; i < nb; ++i) {
        int64_t slot = 0;
        const InsertResult r = table_insert(table, capacity, store, keys[i], hashes[i],
                                            static_cast<int32_t>(b0 + i), &slot);
        if (r == InsertResult::kFull) {
          full = true;
          break;
        }
        entry_slot[b0 + i] = static_cast<uint32_t>(slot);
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
// Pass 1 records each entry's owner (the first entry with its key) and counts first entries
// per chunk; the chunk counts' prefix sum is where each chunk's numbers start.
struct FirstEntries {
  std::unique_ptr<uint8_t[]> is_first;
  std::vector<int64_t> chunk_base;  // numbers of chunk c start at chunk_base[c]
  int64_t n_vertices;
};

FirstEntries mark_first_entries(int64_t n_entries, const uint64_t* table,
                                const uint32_t* entry_slot, int32_t* vertex_of_entry) {
  FirstEntries f{scratch<uint8_t>(n_entries), {}, 0};
  const int64_t n_chunks = std::max<int64_t>(1, (n_entries + kGrain - 1) / kGrain);
  f.chunk_base.assign(n_chunks + 1, 0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t count = 0;
      for (int64_t e = c * kGrain; e < std::min(n_entries, (c + 1) * kGrain); ++e) {
        const int32_t owner = slot_entry(table[entry_slot[e]]);
        vertex_of_entry[e] = owner;
        f.is_first[e] = owner == e;
        count += f.is_first[e];
      }
      f.chunk_base[c + 1] = count;
    }
  });
  for (int64_t c = 0; c < n_chunks; ++c) f.chunk_base[c + 1] += f.chunk_base[c];
  f.n_vertices = f.chunk_base[n_chunks];
  return f;
}

// Pass 2 numbers the first entries and writes their keys; pass 3 gives every other entry its
// owner's number (owners come first, so they are already numbered).
void assign_vertex_numbers(const SimplexStore& store, int64_t n_entries, const FirstEntries& f,
                           int32_t* vertex_of_entry, int32_t* vertex_keys) {
  const int64_t n_chunks = static_cast<int64_t>(f.chunk_base.size()) - 1;
  const int d = store.d;
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t next = static_cast<int32_t>(f.chunk_base[c]);
      for (int64_t e = c * kGrain; e < std::min(n_entries, (c + 1) * kGrain); ++e) {
        if (f.is_first[e]) {
          store.entry_key(e, vertex_keys + static_cast<int64_t>(next) * d);
          vertex_of_entry[e] = next++;
        }
      }
    }
  });
  at::parallel_for(0, n_entries, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      if (!f.is_first[e]) vertex_of_entry[e] = vertex_of_entry[vertex_of_entry[e]];
    }
  });
}

// Transposed index: for each vertex, its entries in entry (= point) order. Each task owns a
// contiguous range of vertices and scans all entries, so the fill is parallel and stable.
void build_splat_index(const int32_t* vertex_of_entry, const float* bary, int64_t n_entries,
                       int d, int64_t nv, int64_t* offsets, int32_t* points, float* weights) {
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

// Blur neighbours: look up the "+" neighbour along each direction; the "-" neighbour is the
// inverse relation (one-to-one), so it is written by the vertex that found it.
void find_neighbors(const SimplexStore& store, const uint64_t* table, int64_t capacity,
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
  auto rem0 = scratch<int32_t>(n_entries);
  auto rank = scratch<int8_t>(n_entries);
  at::Tensor weights = at::empty({n, d + 1}, features.options());
  if (bound < kMaxFloatElevated) {
    embed_points<float>(features.data_ptr<float>(), n, d, rem0.get(), rank.get(),
                        weights.data_ptr<float>());
  } else {
    embed_points<double>(features.data_ptr<float>(), n, d, rem0.get(), rank.get(),
                         weights.data_ptr<float>());
  }
  const SimplexStore store{rem0.get(), rank.get(), d};

  auto entry_slot = scratch<uint32_t>(n_entries);
  std::vector<uint64_t> table;
  int64_t capacity = 0;
  for (bool retry : {false, true}) {
    capacity = table_capacity(n, n_entries, retry);
    table.assign(capacity, kEmptySlot);
    if (insert_entries(store, n_entries, table.data(), capacity, entry_slot.get())) break;
    TORCH_CHECK(!retry, "permutohedral_build: hash table overflow (internal error)");
  }

  at::Tensor vertices = at::empty({n, d + 1}, int_opts);
  const FirstEntries first =
      mark_first_entries(n_entries, table.data(), entry_slot.get(), vertices.data_ptr<int32_t>());
  const int64_t nv = first.n_vertices;
  at::Tensor keys = at::empty({nv, d}, int_opts);
  assign_vertex_numbers(store, n_entries, first, vertices.data_ptr<int32_t>(),
                        keys.data_ptr<int32_t>());

  at::Tensor splat_offsets = at::empty({nv + 1}, features.options().dtype(at::kLong));
  at::Tensor splat_points = at::empty({n_entries}, int_opts);
  at::Tensor splat_weights = at::empty({n_entries}, features.options());
  build_splat_index(vertices.data_ptr<int32_t>(), weights.data_ptr<float>(), n_entries, d, nv,
                    splat_offsets.data_ptr<int64_t>(), splat_points.data_ptr<int32_t>(),
                    splat_weights.data_ptr<float>());

  at::Tensor neighbors = at::full({d + 1, nv, 2}, static_cast<int32_t>(nv), int_opts);
  find_neighbors(store, table.data(), capacity, keys.data_ptr<int32_t>(),
                 vertices.data_ptr<int32_t>(), nv, neighbors.data_ptr<int32_t>());
  return {vertices, weights, neighbors, splat_offsets, splat_points, splat_weights, keys};
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("permutohedral_build", &permutohedral_build_cpu);
}

}  // namespace lattice
}  // namespace fastseg
