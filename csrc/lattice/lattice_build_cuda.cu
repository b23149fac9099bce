// CUDA construction of the permutohedral lattice (see lattice.h for what it returns).
//
// The same steps as lattice_build_cpu.cpp, one thread per point, entry or vertex, with the
// shared per-point math (permutohedral_math.h) and hash table (lattice_table.h). Vertex numbers
// come from a prefix sum over "first entry of its key" flags and the transposed index from a
// stable sort, so the result is deterministic and identical to the CPU build's.
#include <ATen/ops/arange.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lattice/lattice.h"
#include "lattice/lattice_table.h"
#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20));
}

template <typename T>
__global__ void embed_kernel(const float* __restrict__ features, int64_t n, Embedding<T> emb,
                             int32_t* __restrict__ rem0, int8_t* __restrict__ rank,
                             float* __restrict__ bary) {
  const int d = emb.d;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < n;
       p += int64_t(blockDim.x) * gridDim.x) {
    Simplex s;
    embed_point<T>(features + p * d, emb, s);
    for (int i = 0; i <= d; ++i) {
      rem0[p * (d + 1) + i] = s.rem0[i];
      rank[p * (d + 1) + i] = static_cast<int8_t>(s.rank[i]);
      bary[p * (d + 1) + i] = s.bary[i];
    }
  }
}

// status[0]: set when a probe sequence wrapped (table full); status[1]: slots claimed.
__global__ void insert_kernel(SimplexStore store, int64_t n_entries, uint64_t* table,
                              int64_t capacity, int64_t* __restrict__ entry_slot,
                              unsigned long long* status) {
  int32_t key[kMaxDim];
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n_entries;
       e += int64_t(blockDim.x) * gridDim.x) {
    store.entry_key(e, key);
    int64_t slot = 0;
    int32_t owner = 0;  // unused here: owner_kernel reads the final owners from the table
    const InsertResult r = table_insert(table, capacity, store, key, hash_key(key, store.d),
                                        static_cast<int32_t>(e), &slot, &owner);
    if (r == InsertResult::kFull) {
      atomicExch(status, 1ull);
      return;
    }
    entry_slot[e] = slot;
    if (r == InsertResult::kClaimed) atomicAdd(status + 1, 1ull);
  }
}

// owner[e] = the smallest entry with e's key (what the table kept); first[e] = owner == e.
__global__ void owner_kernel(const uint64_t* __restrict__ table,
                             const int64_t* __restrict__ entry_slot, int64_t n_entries,
                             int32_t* __restrict__ owner, int32_t* __restrict__ first) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n_entries;
       e += int64_t(blockDim.x) * gridDim.x) {
    const int32_t o = slot_entry(table[entry_slot[e]]);
    owner[e] = o;
    first[e] = o == e;
  }
}

// First entries take their number (inclusive prefix sum - 1) and write their vertex's key.
__global__ void number_first_kernel(SimplexStore store, int64_t n_entries,
                                    const int32_t* __restrict__ first,
                                    const int32_t* __restrict__ first_cumsum,
                                    int32_t* __restrict__ vertex_of_entry,
                                    int32_t* __restrict__ keys) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n_entries;
       e += int64_t(blockDim.x) * gridDim.x) {
    if (first[e]) {
      const int32_t v = first_cumsum[e] - 1;
      vertex_of_entry[e] = v;
      store.entry_key(e, keys + static_cast<int64_t>(v) * store.d);
    }
  }
}

// Other entries copy their owner's number (owners were numbered by the previous kernel).
__global__ void number_rest_kernel(int64_t n_entries, const int32_t* __restrict__ first,
                                   const int32_t* __restrict__ owner,
                                   int32_t* __restrict__ vertex_of_entry) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n_entries;
       e += int64_t(blockDim.x) * gridDim.x) {
    if (!first[e]) vertex_of_entry[e] = vertex_of_entry[owner[e]];
  }
}

// "+" neighbour of every (vertex, direction); the "-" neighbour is the inverse relation.
__global__ void neighbors_kernel(SimplexStore store, const uint64_t* __restrict__ table,
                                 int64_t capacity, const int32_t* __restrict__ keys,
                                 const int32_t* __restrict__ vertex_of_entry, int64_t nv,
                                 int32_t* __restrict__ neighbors) {
  const int d = store.d;
  int32_t nkey[kMaxDim];
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < nv * (d + 1);
       q += int64_t(blockDim.x) * gridDim.x) {
    const int64_t v = q / (d + 1);
    const int j = static_cast<int>(q - v * (d + 1));
    neighbour_key(keys + v * d, d, j, nkey);
    const int32_t entry = table_find(table, capacity, store, nkey, hash_key(nkey, d));
    if (entry >= 0) {
      const int32_t u = vertex_of_entry[entry];
      neighbors[(j * nv + v) * 2 + 0] = u;
      neighbors[(j * nv + u) * 2 + 1] = static_cast<int32_t>(v);
    }
  }
}

}  // namespace

LatticeTensors permutohedral_build_cuda(const at::Tensor& features_in) {
  check_features(features_in);
  const c10::cuda::CUDAGuard guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const int64_t n = features.size(0);
  const int d = static_cast<int>(features.size(1));
  const int64_t n_entries = n * (d + 1);
  const double bound = checked_elevated_bound(features);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto int_opts = features.options().dtype(at::kInt);
  const auto long_opts = features.options().dtype(at::kLong);

  at::Tensor rem0 = at::empty({n, d + 1}, int_opts);
  at::Tensor rank = at::empty({n, d + 1}, features.options().dtype(at::kChar));
  at::Tensor weights = at::empty({n, d + 1}, features.options());
  if (bound < kMaxFloatElevated) {
    embed_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(
        features.data_ptr<float>(), n, make_embedding<float>(d), rem0.data_ptr<int32_t>(),
        rank.data_ptr<int8_t>(), weights.data_ptr<float>());
  } else {
    embed_kernel<double><<<blocks_for(n), kThreads, 0, stream>>>(
        features.data_ptr<float>(), n, make_embedding<double>(d), rem0.data_ptr<int32_t>(),
        rank.data_ptr<int8_t>(), weights.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const SimplexStore store{rem0.data_ptr<int32_t>(), rank.data_ptr<int8_t>(), d};

  at::Tensor entry_slot = at::empty({n_entries}, long_opts);
  at::Tensor table;
  int64_t capacity = 0;
  for (bool retry : {false, true}) {
    capacity = table_capacity(n, n_entries, retry);
    table = at::full({capacity}, -1, long_opts);  // all bits set: kEmptySlot
    at::Tensor status = at::zeros({2}, long_opts);
    insert_kernel<<<blocks_for(n_entries), kThreads, 0, stream>>>(
        store, n_entries, reinterpret_cast<uint64_t*>(table.data_ptr<int64_t>()), capacity,
        entry_slot.data_ptr<int64_t>(),
        reinterpret_cast<unsigned long long*>(status.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor host = status.cpu();
    const int64_t full = host.data_ptr<int64_t>()[0];
    const int64_t claimed = host.data_ptr<int64_t>()[1];
    if (!full && claimed <= capacity - capacity / 4) break;
    TORCH_CHECK(!retry, "permutohedral_build: hash table overflow (internal error)");
  }
  const uint64_t* table_p = reinterpret_cast<const uint64_t*>(table.data_ptr<int64_t>());

  at::Tensor owner = at::empty({n_entries}, int_opts);
  at::Tensor first = at::empty({n_entries}, int_opts);
  owner_kernel<<<blocks_for(n_entries), kThreads, 0, stream>>>(
      table_p, entry_slot.data_ptr<int64_t>(), n_entries, owner.data_ptr<int32_t>(),
      first.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor first_cumsum = at::cumsum(first, 0, at::kInt);
  const int64_t nv = first_cumsum[n_entries - 1].item<int32_t>();

  at::Tensor vertices = at::empty({n, d + 1}, int_opts);
  at::Tensor keys = at::empty({nv, d}, int_opts);
  number_first_kernel<<<blocks_for(n_entries), kThreads, 0, stream>>>(
      store, n_entries, first.data_ptr<int32_t>(), first_cumsum.data_ptr<int32_t>(),
      vertices.data_ptr<int32_t>(), keys.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  number_rest_kernel<<<blocks_for(n_entries), kThreads, 0, stream>>>(
      n_entries, first.data_ptr<int32_t>(), owner.data_ptr<int32_t>(),
      vertices.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Transposed index: a stable sort of the entries by vertex keeps each vertex's points in
  // point order; offsets are where each vertex number starts in the sorted list.
  const at::Tensor flat_vertices = vertices.reshape({-1});
  auto [sorted, perm] = at::sort(flat_vertices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor splat_points = at::div(perm, d + 1, "floor").to(at::kInt);
  const at::Tensor splat_weights = weights.reshape({-1}).index_select(0, perm);
  const at::Tensor splat_offsets =
      at::searchsorted(sorted, at::arange(nv + 1, int_opts), /*out_int32=*/false);

  at::Tensor neighbors = at::full({d + 1, nv, 2}, static_cast<int32_t>(nv), int_opts);
  if (nv > 0) {
    neighbors_kernel<<<blocks_for(nv * (d + 1)), kThreads, 0, stream>>>(
        store, table_p, capacity, keys.data_ptr<int32_t>(), vertices.data_ptr<int32_t>(), nv,
        neighbors.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {vertices, weights, neighbors, splat_offsets, splat_points, splat_weights, keys};
}

TORCH_LIBRARY_IMPL(fastseg, CUDA, m) { m.impl("permutohedral_build", &permutohedral_build_cuda); }

}  // namespace lattice
}  // namespace fastseg
