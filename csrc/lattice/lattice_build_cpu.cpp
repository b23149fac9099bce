// CPU construction of the permutohedral lattice (see lattice.h for what it returns).
//
// The steps mirror the CUDA build: embed every point (shared per-point math), insert every
// (point, vertex) entry into an open-addressing table whose slots keep the smallest entry index
// of their key (lock-free, so any thread order gives the same table contents), number vertices
// by first use, look up one blur neighbour per direction and derive the other by inversion,
// and build the transposed (vertex -> point) index for gather-based splatting.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "lattice/lattice.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {
namespace {

constexpr int64_t kGrain = 2048;

template <typename T>
void embed_points(const float* features, int64_t n, int d, int32_t* entry_keys, float* bary) {
  const Embedding<T> emb = make_embedding<T>(d);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    Simplex s;
    for (int64_t p = begin; p < end; ++p) {
      embed_point<T>(features + p * d, emb, s);
      for (int r = 0; r <= d; ++r) {
        const int64_t entry = p * (d + 1) + r;
        vertex_key(s, d, r, entry_keys + entry * d);
        bary[entry] = s.bary[r];
      }
    }
  });
}

// Inserts every entry; table[slot] ends as the smallest entry index with that slot's key.
// Returns false (and leaves the table unusable) if the table got too full.
bool insert_entries(const int32_t* entry_keys, int64_t n_entries, int d, int32_t* table,
                    int64_t capacity, int32_t* entry_slot) {
  std::atomic<int64_t> claimed{0};
  std::atomic<bool> overflow{false};
  const int64_t max_fill = capacity - capacity / 4;
  at::parallel_for(0, n_entries, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end && !overflow.load(std::memory_order_relaxed); ++e) {
      const int32_t* key = entry_keys + e * d;
      int64_t slot = hash_key(key, d) & (capacity - 1);
      const int32_t entry = static_cast<int32_t>(e);
      for (int64_t probes = 0;; ++probes) {
        if (probes == capacity) {
          overflow = true;
          break;
        }
        int32_t cur = __atomic_load_n(table + slot, __ATOMIC_ACQUIRE);
        if (cur == kEmpty) {
          if (__atomic_compare_exchange_n(table + slot, &cur, entry, false, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE)) {
            if (claimed.fetch_add(1, std::memory_order_relaxed) + 1 > max_fill) overflow = true;
            entry_slot[e] = static_cast<int32_t>(slot);
            break;
          }
          // Lost the race: `cur` now holds the winner, which may carry our key.
        }
        if (keys_equal(entry_keys + static_cast<int64_t>(cur) * d, key, d)) {
          // Keep the smaller entry index (an atomic min).
          while (entry < cur && !__atomic_compare_exchange_n(table + slot, &cur, entry, false,
                                                             __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
          }
          entry_slot[e] = static_cast<int32_t>(slot);
          break;
        }
        slot = (slot + 1) & (capacity - 1);
      }
    }
  });
  return !overflow;
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

  auto int_opts = features.options().dtype(at::kInt);
  at::Tensor entry_keys = at::empty({n_entries, d}, int_opts);
  at::Tensor weights = at::empty({n, d + 1}, features.options());
  if (bound < kMaxFloatElevated) {
    embed_points<float>(features.data_ptr<float>(), n, d, entry_keys.data_ptr<int32_t>(),
                        weights.data_ptr<float>());
  } else {
    embed_points<double>(features.data_ptr<float>(), n, d, entry_keys.data_ptr<int32_t>(),
                         weights.data_ptr<float>());
  }
  const int32_t* keys_p = entry_keys.data_ptr<int32_t>();

  at::Tensor entry_slot = at::empty({n_entries}, int_opts);
  at::Tensor table;
  int64_t capacity = 0;
  for (bool retry : {false, true}) {
    capacity = table_capacity(n, n_entries, retry);
    table = at::full({capacity}, kEmpty, int_opts);
    if (insert_entries(keys_p, n_entries, d, table.data_ptr<int32_t>(), capacity,
                       entry_slot.data_ptr<int32_t>())) {
      break;
    }
    TORCH_CHECK(!retry, "permutohedral_build: hash table overflow (internal error)");
  }
  const int32_t* table_p = table.data_ptr<int32_t>();
  const int32_t* slot_p = entry_slot.data_ptr<int32_t>();

  // Number vertices by first use. The first entry of a key is the one the table kept; every
  // later entry of that key comes after it, so one ordered pass suffices.
  at::Tensor vertices = at::empty({n, d + 1}, int_opts);
  int32_t* vert_p = vertices.data_ptr<int32_t>();
  int32_t n_vertices = 0;
  for (int64_t e = 0; e < n_entries; ++e) {
    const int32_t first = table_p[slot_p[e]];
    vert_p[e] = first == e ? n_vertices++ : vert_p[first];
  }
  const int64_t nv = n_vertices;

  at::Tensor keys = at::empty({nv, d}, int_opts);
  at::Tensor splat_offsets = at::zeros({nv + 1}, features.options().dtype(at::kLong));
  int32_t* vkeys_p = keys.data_ptr<int32_t>();
  int64_t* offs_p = splat_offsets.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_entries; ++e) {
    const int32_t v = vert_p[e];
    if (table_p[slot_p[e]] == e) {
      for (int i = 0; i < d; ++i) vkeys_p[v * d + i] = keys_p[e * d + i];
    }
    ++offs_p[v + 1];
  }
  for (int64_t v = 0; v < nv; ++v) offs_p[v + 1] += offs_p[v];

  // Transposed index, each vertex's points in point order (stable counting sort).
  at::Tensor splat_points = at::empty({n_entries}, int_opts);
  at::Tensor splat_weights = at::empty({n_entries}, features.options());
  {
    std::vector<int64_t> cursor(offs_p, offs_p + nv);
    int32_t* pts_p = splat_points.data_ptr<int32_t>();
    float* sw_p = splat_weights.data_ptr<float>();
    const float* w_p = weights.data_ptr<float>();
    for (int64_t e = 0; e < n_entries; ++e) {
      const int64_t pos = cursor[vert_p[e]]++;
      pts_p[pos] = static_cast<int32_t>(e / (d + 1));
      sw_p[pos] = w_p[e];
    }
  }

  // Blur neighbours: look up the "+" neighbour along each direction, invert for the "-" one.
  at::Tensor neighbors = at::full({d + 1, nv, 2}, static_cast<int32_t>(nv), int_opts);
  int32_t* nb_p = neighbors.data_ptr<int32_t>();
  at::parallel_for(0, nv, kGrain, [&](int64_t begin, int64_t end) {
    int32_t nkey[kMaxDim];
    for (int64_t v = begin; v < end; ++v) {
      for (int j = 0; j <= d; ++j) {
        neighbour_key(vkeys_p + v * d, d, j, nkey);
        const int64_t slot = table_find(table_p, capacity, keys_p, nkey, d);
        if (slot >= 0) {
          const int32_t u = vert_p[table_p[slot]];
          nb_p[(j * nv + v) * 2 + 0] = u;
          nb_p[(j * nv + u) * 2 + 1] = static_cast<int32_t>(v);  // the relation is one-to-one
        }
      }
    }
  });

  return {vertices, weights, neighbors, splat_offsets, splat_points, splat_weights, keys};
}

TORCH_LIBRARY_IMPL(fastseg, CPU, m) {
  m.impl("permutohedral_build", &permutohedral_build_cpu);
}

}  // namespace lattice
}  // namespace fastseg
