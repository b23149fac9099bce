// Lock-free hash table of lattice vertices, shared by the CPU build (threads) and the CUDA
// build (one thread per entry).
//
// An *entry* is one (point, remainder) pair, e = point * (d+1) + remainder; its key is computed
// on demand from the point's simplex (rem0 and rank, see permutohedral_math.h), so keys are never
// stored per entry. A table slot is a 64-bit word: the key's 32-bit hash in the high half (a
// fingerprint that avoids most key comparisons) and an entry index in the low half. Inserts claim
// empty slots with compare-and-swap and then lower the slot to the smallest entry index with that
// key (an atomic minimum: the hash halves are equal, so the 64-bit minimum is the entry minimum).
// Which slot a key lands in depends on thread timing, but the entry a slot ends with does not,
// and vertex numbers are derived from those entries only: the lattice is deterministic.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "lattice/permutohedral_math.h"

namespace fastseg {
namespace lattice {

constexpr uint64_t kEmptySlot = ~0ull;

C10_HOST_DEVICE inline uint64_t make_slot(uint32_t hash, int32_t entry) {
  return (static_cast<uint64_t>(hash) << 32) | static_cast<uint32_t>(entry);
}
C10_HOST_DEVICE inline int32_t slot_entry(uint64_t slot) {
  return static_cast<int32_t>(slot & 0xffffffffu);
}
C10_HOST_DEVICE inline uint32_t slot_hash(uint64_t slot) {
  return static_cast<uint32_t>(slot >> 32);
}

C10_HOST_DEVICE inline uint64_t atomic_load_slot(const uint64_t* addr) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const volatile unsigned long long*>(addr);
#else
  return __atomic_load_n(addr, __ATOMIC_ACQUIRE);
#endif
}

// Returns the value held before the call (equal to `expected` on success).
C10_HOST_DEVICE inline uint64_t atomic_cas_slot(uint64_t* addr, uint64_t expected,
                                                uint64_t desired) {
#ifdef __CUDA_ARCH__
  return atomicCAS(reinterpret_cast<unsigned long long*>(addr), expected, desired);
#else
  __atomic_compare_exchange_n(addr, &expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  return expected;
#endif
}

C10_HOST_DEVICE inline void atomic_min_slot(uint64_t* addr, uint64_t value) {
#ifdef __CUDA_ARCH__
  atomicMin(reinterpret_cast<unsigned long long*>(addr), static_cast<unsigned long long>(value));
#else
  uint64_t cur = __atomic_load_n(addr, __ATOMIC_ACQUIRE);
  while (value < cur && !__atomic_compare_exchange_n(addr, &cur, value, false, __ATOMIC_ACQ_REL,
                                                     __ATOMIC_ACQUIRE)) {
  }
#endif
}

// Per-point simplices, stored compactly: rem0 (N, d+1) int32 and rank (N, d+1) int8.
struct SimplexStore {
  const int32_t* rem0;
  const int8_t* rank;
  int d;

  // Key of the vertex of remainder r of the point's simplex.
  C10_HOST_DEVICE inline void vertex_key(int64_t point, int r, int32_t* key) const {
    const int32_t* p_rem0 = rem0 + point * (d + 1);
    const int8_t* p_rank = rank + point * (d + 1);
    for (int i = 0; i < d; ++i) {
      key[i] = p_rem0[i] + (p_rank[i] <= d - r ? r : r - (d + 1));
    }
  }

  // Key of entry point * (d+1) + r.
  C10_HOST_DEVICE inline void entry_key(int64_t entry, int32_t* key) const {
    const int64_t point = entry / (d + 1);
    vertex_key(point, static_cast<int>(entry - point * (d + 1)), key);
  }

  C10_HOST_DEVICE inline bool entry_has_key(int64_t entry, const int32_t* key) const {
    int32_t other[kMaxDim];
    entry_key(entry, other);
    return keys_equal(other, key, d);
  }
};

enum class InsertResult { kExisting, kClaimed, kFull };

// Inserts entry `entry` with key `key` (hash `hash`); writes the slot it ended in and the
// smallest entry with the key that the slot held when it looked (itself if none was smaller).
C10_HOST_DEVICE inline InsertResult table_insert(uint64_t* table, int64_t capacity,
                                                 const SimplexStore& store, const int32_t* key,
                                                 uint32_t hash, int32_t entry, int64_t* slot_out,
                                                 int32_t* owner_out) {
  const uint64_t mine = make_slot(hash, entry);
  int64_t slot = hash & (capacity - 1);
  for (int64_t probes = 0; probes < capacity; ++probes) {
    uint64_t cur = atomic_load_slot(table + slot);
    if (cur == kEmptySlot) {
      cur = atomic_cas_slot(table + slot, kEmptySlot, mine);
      if (cur == kEmptySlot) {
        *slot_out = slot;
        *owner_out = entry;
        return InsertResult::kClaimed;
      }
      // Lost the race: `cur` is the winner, which may carry our key.
    }
    if (slot_hash(cur) == hash && store.entry_has_key(slot_entry(cur), key)) {
      if (mine < cur) atomic_min_slot(table + slot, mine);
      *slot_out = slot;
      *owner_out = mine < cur ? entry : slot_entry(cur);
      return InsertResult::kExisting;
    }
    slot = (slot + 1) & (capacity - 1);
  }
  return InsertResult::kFull;
}

// Read-only lookup (after all inserts): the entry that owns `key`, or -1.
C10_HOST_DEVICE inline int32_t table_find(const uint64_t* table, int64_t capacity,
                                          const SimplexStore& store, const int32_t* key,
                                          uint32_t hash) {
  int64_t slot = hash & (capacity - 1);
  for (int64_t probes = 0; probes < capacity; ++probes) {
    const uint64_t cur = table[slot];
    if (cur == kEmptySlot) return -1;
    if (slot_hash(cur) == hash && store.entry_has_key(slot_entry(cur), key)) {
      return slot_entry(cur);
    }
    slot = (slot + 1) & (capacity - 1);
  }
  return -1;
}

}  // namespace lattice
}  // namespace fastseg
