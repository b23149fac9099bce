// Parallel loops whose chunks are handed out one at a time.
//
// at::parallel_for splits a range statically, one part per thread: a thread that the
// operating system or the hypervisor holds back (another process, another tenant of a shared
// VM) holds up the whole loop, and the other threads wait at its end. Handing out small chunks
// from a counter lets the threads that do run take over the work of the one that does not.
// Chunk boundaries do not depend on the thread count and every output row is computed by
// exactly one thread, so results stay bitwise the same.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fastseg {

// fn(begin, end) for consecutive chunks [begin, end) of [0, n), each at most `chunk` long.
// Each worker calls worker_done() once when no chunk is left for it, while others may still be
// running theirs: work that can start as soon as a thread is free goes there (splat_and_blur's
// shared blur passes).
template <typename Fn, typename Done>
void parallel_for_dynamic(int64_t n, int64_t chunk, const Fn& fn, const Done& worker_done) {
  if (n <= 0) return;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  const int64_t n_threads = std::min<int64_t>(at::get_num_threads(), n_chunks);
  at::parallel_for(0, n_threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) {
      fn(c * chunk, std::min(n, (c + 1) * chunk));
    }
    worker_done();
  });
}

template <typename Fn>
void parallel_for_dynamic(int64_t n, int64_t chunk, const Fn& fn) {
  parallel_for_dynamic(n, chunk, fn, [] {});
}

}  // namespace fastseg
