// Large CPU buffers kept for reuse between calls: a caching allocator, as CUDA's is.
//
// glibc hands blocks of tens of MB back to the OS when they are freed (munmap, or a trim of
// the heap top), so a tensor of that size allocated afresh on every call pays its first-touch
// page faults on every call: about 1.7 us per 4 KiB page on a KVM guest, 10 ms for 24 MB,
// a third of a mamba3_siso forward at b1 L2048 h24 n128. Tensors made by cached_empty() take
// their storage from this cache: a block of at least kMinBytes returns here when its tensor is
// freed and is handed out again for a request it fits with at most an eighth to spare. Freed
// blocks stay cached up to a limit (env HJSEQ_CPU_CACHE_MB, read once; default 1/8 of
// physical memory, at most 4 GiB; 0 turns caching off); past it, the largest cached blocks go
// back to the OS first. Smaller requests go to torch's CPU allocator. Each extension that includes this header has its own cache;
// release_cached() empties it (hjseq.ops.empty_cpu_cache calls it on every loaded one).
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <iterator>
#include <unordered_map>
#include <vector>
#include <unistd.h>

namespace hjseq {

class BlockCache final : public c10::Allocator {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kRound = size_t(1) << 16;  // sizes within 64 KiB share a block size

  // never destroyed: a tensor may be freed during static destruction at exit
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache;
    return *cache;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kRound - 1) / kRound * kRound;
    void* p = nullptr;
    size_t block = bytes;
    {
      std::lock_guard<std::mutex> lock(m_);
      // the smallest cached block that fits and wastes at most an eighth of it
      const auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first - bytes <= it->first / 8) {
        block = it->first;
        p = it->second;
        free_.erase(it);
        cached_ -= block;
      }
    }
    if (p == nullptr) p = c10::alloc_cpu(block);
    {
      std::lock_guard<std::mutex> lock(m_);
      live_.emplace(p, block);
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(m_);
    return cached_;
  }

  // Frees every cached block; blocks in use return to the cache as usual when freed.
  void release_cached() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(m_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (const auto& b : blocks) c10::free_cpu(b.second);
  }

 private:
  static void release(void* p) { get().give_back(p); }

  // A freed block is cached; when that would pass the limit, the largest cached blocks go
  // back to the OS first (blocks of sizes no longer asked for must not hold the cache).
  void give_back(void* p) {
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(m_);
      const auto it = live_.find(p);
      const size_t bytes = it->second;
      live_.erase(it);
      if (bytes > limit_) {
        to_free.push_back(p);
      } else {
        while (cached_ + bytes > limit_) {
          const auto largest = std::prev(free_.end());
          cached_ -= largest->first;
          to_free.push_back(largest->second);
          free_.erase(largest);
        }
        free_.emplace(bytes, p);
        cached_ += bytes;
      }
    }
    for (void* q : to_free) c10::free_cpu(q);
  }

  static size_t default_limit() {
    if (const char* env = std::getenv("HJSEQ_CPU_CACHE_MB"))
      return static_cast<size_t>(std::max(0LL, std::atoll(env))) << 20;
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    const size_t phys = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : size_t(0);
    return std::min(phys / 8, size_t(4) << 30);
  }

  std::mutex m_;
  std::multimap<size_t, void*> free_;      // cached blocks by size
  std::unordered_map<void*, size_t> live_;  // blocks in use and their sizes
  size_t cached_ = 0;
  const size_t limit_ = default_limit();
};

// at::empty(sizes, options) on the CPU, with storage from BlockCache (contiguous).
inline at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr c10::DispatchKeySet cpu_ks(c10::DispatchKey::CPU);
  return at::detail::empty_generic(sizes, &BlockCache::get(), cpu_ks,
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

inline at::Tensor cached_empty_like(const at::Tensor& t) {
  return cached_empty(t.sizes(), t.options());
}

// The extension's cached_bytes() and release_cached(), for its PYBIND11_MODULE.
inline void def_block_cache(pybind11::module_& m) {
  m.def("cached_bytes", [] { return BlockCache::get().cached_bytes(); },
        "bytes of freed blocks this extension keeps for reuse");
  m.def("release_cached", [] { BlockCache::get().release_cached(); },
        "free the blocks this extension keeps for reuse");
}

}  // namespace hjseq
