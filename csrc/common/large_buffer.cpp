#include "common/large_buffer.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastseg {
namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kLargeBytes = 2 * kHugePage;  // pooled and huge-page advised from here on

constexpr size_t kDefaultCacheBytes = size_t(512) << 20;
// Larger blocks are never cached: they belong to calls whose compute dwarfs their page faults
// (182 labels: 200 MB buffers, 5 s per call), and keeping them would add their size to the
// memory the caller sees in use after the call.
constexpr size_t kMaxCachedBlock = size_t(64) << 20;

size_t cache_limit_bytes() {
  const char* env = std::getenv("FASTSEG_BUFFER_CACHE_MB");
  if (env == nullptr || *env == '\0') return kDefaultCacheBytes;
  try {
    return static_cast<size_t>(std::max(0LL, std::stoll(env))) << 20;
  } catch (const std::exception&) {
    return kDefaultCacheBytes;
  }
}

// Freed large blocks, kept for the next call that asks for as much: a repeated call (the next
// image of the same size) then reuses memory that is already mapped instead of faulting in
// hundreds of MB again. Policy: best fit; a request no cached block can serve first returns
// the whole cache to the system, so caching never adds to the peak of a call whose sizes
// differ from the last one's.
struct BufferPool {
  std::mutex mutex;
  std::multimap<size_t, void*> cached;     // size -> block
  std::unordered_map<void*, size_t> live;  // large blocks in use -> size
  size_t cached_bytes = 0;
  const size_t limit = cache_limit_bytes();

  size_t release_cached_locked() {
    const size_t released = cached_bytes;
    for (const auto& entry : cached) std::free(entry.second);
    cached.clear();
    cached_bytes = 0;
    return released;
  }
};

// Never destroyed: tensors freed during interpreter shutdown may still return blocks to it.
BufferPool& pool() {
  static BufferPool* instance = new BufferPool();
  return *instance;
}

void* allocate_pooled(size_t bytes) {
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  BufferPool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.cached.lower_bound(rounded);
    if (it != p.cached.end()) {
      void* ptr = it->second;
      p.live.emplace(ptr, it->first);
      p.cached_bytes -= it->first;
      p.cached.erase(it);
      return ptr;
    }
    p.release_cached_locked();
  }
  void* ptr = std::aligned_alloc(kHugePage, rounded);
  if (ptr == nullptr) throw std::bad_alloc();
#ifdef __linux__
  madvise(ptr, rounded, MADV_HUGEPAGE);  // advice only
#endif
  std::lock_guard<std::mutex> lock(p.mutex);
  p.live.emplace(ptr, rounded);
  return ptr;
}

}  // namespace

void FreeDeleter::operator()(void* p) const { free_large(p); }

void* allocate_large(size_t bytes) {
  if (bytes >= kLargeBytes) return allocate_pooled(bytes);
  void* ptr = std::malloc(bytes > 0 ? bytes : 1);
  if (ptr == nullptr) throw std::bad_alloc();
  return ptr;
}

void free_large(void* ptr) {
  if (ptr == nullptr) return;
  BufferPool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.live.find(ptr);
    if (it != p.live.end()) {
      const size_t size = it->second;
      p.live.erase(it);
      if (size <= kMaxCachedBlock && p.cached_bytes + size <= p.limit) {
        p.cached.emplace(size, ptr);
        p.cached_bytes += size;
        return;
      }
    }
  }
  std::free(ptr);
}

int64_t release_cached_buffers() {
  BufferPool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return static_cast<int64_t>(p.release_cached_locked());
}

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (!options.device().is_cpu() || bytes < kLargeBytes) return at::empty(sizes, options);
  void* ptr = allocate_large(bytes);
  return at::from_blob(ptr, sizes, [](void* p) { free_large(p); }, options);
}

}  // namespace fastseg
