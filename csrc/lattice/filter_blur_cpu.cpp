// The blur on the CPU (passes along each direction, in place along chains where a lattice has
// them), and splat_and_blur, which shares the terms' splats and blurs out between threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "common/large_buffer.h"
#include "common/parallel_dynamic.h"
#include "lattice/filter_steps_cpu.h"

namespace fastseg {
namespace lattice {
namespace cpu {

namespace {

template <int W>
FASTSEG_INLINE void blur_range_w(const int32_t* nb, const float* src, float* dst, int64_t s,
                                 int64_t v_begin, int64_t v_end) {
  for (int64_t v = v_begin; v < v_end; ++v) {
    if (v + kAhead < v_end) {
      prefetch_row(src + static_cast<int64_t>(nb[2 * (v + kAhead)]) * s, s);
      prefetch_row(src + static_cast<int64_t>(nb[2 * (v + kAhead) + 1]) * s, s);
    }
    const float* a = src + v * s;
    const float* n1 = src + static_cast<int64_t>(nb[2 * v]) * s;
    const float* n2 = src + static_cast<int64_t>(nb[2 * v + 1]) * s;
    float* out = dst + v * s;
    for (int64_t k = 0; k < s; k += W) {
      store<W>(out + k, load<W>(a + k) + 0.5f * (load<W>(n1 + k) + load<W>(n2 + k)));
    }
  }
}

FASTSEG_CLONES void blur_range(const int32_t* nb, const float* src, float* dst, int64_t s,
                               int64_t v_begin, int64_t v_end) {
  FASTSEG_BY_WIDTH(s, blur_range_w, nb, src, dst, s, v_begin, v_end);
}

// The same pass in place along chains [c_begin, c_end) of one direction: each chained vertex
// becomes x + 0.5 (previous + next) from the values before the pass, a missing neighbour read
// from the zero row: blur_range_w's expression on the same operands, so the same bits. `prev`
// (s floats) holds the previous vertex's value from before the pass. Unchained vertices keep
// their value, which blur_range_w computes as x + 0.5 (0 + 0): the same number (a -0 stays -0
// here and becomes +0 there; the two compare equal, and so do all later sums).
template <int W>
FASTSEG_INLINE void blur_chains_w(const int32_t* chain, const int64_t* starts, int64_t c_begin,
                                  int64_t c_end, float* x, int64_t s, float* prev,
                                  const float* zero) {
  const int64_t e_end = starts[c_end];
  for (int64_t c = c_begin; c < c_end; ++c) {
    const float* before = zero;
    const int64_t last = starts[c + 1] - 1;
    for (int64_t e = starts[c]; e <= last; ++e) {
      if (e + kAhead < e_end) prefetch_row(x + static_cast<int64_t>(chain[e + kAhead]) * s, s);
      float* cur = x + static_cast<int64_t>(chain[e]) * s;
      const float* after = e < last ? x + static_cast<int64_t>(chain[e + 1]) * s : zero;
      for (int64_t k = 0; k < s; k += W) {
        const typename Vec<W>::f old = load<W>(cur + k);
        store<W>(cur + k, old + 0.5f * (load<W>(before + k) + load<W>(after + k)));
        store<W>(prev + k, old);
      }
      before = prev;
    }
  }
}

FASTSEG_CLONES void blur_chains(const int32_t* chain, const int64_t* starts, int64_t c_begin,
                                int64_t c_end, float* x, int64_t s, float* prev,
                                const float* zero) {
  FASTSEG_BY_WIDTH(s, blur_chains_w, chain, starts, c_begin, c_end, x, s, prev, zero);
}

}  // namespace

// One direction's chains: a scan for first vertices (no previous neighbour, a next one), then
// a walk from each, checking that the table is symmetric (the next vertex's previous is the
// current one) and that every vertex with a neighbour ends up chained; false if not. Each step
// of a walk is a dependent load from a table of megabytes, so kWalkers walks advance in
// lockstep, each prefetching its next entry a round ahead: their cache misses overlap (1.5x
// faster than one walk at a time).
static bool chain_direction(const int32_t* nb, int64_t nv, std::vector<int32_t>* chain,
                            std::vector<int64_t>* starts) {
  constexpr int kWalkers = 16;
  // Branch-free scan (whether a vertex comes first in a chain is a coin flip to the predictor).
  int64_t linked = 0;  // vertices with at least one neighbour
  std::vector<int32_t> firsts(nv + 1);
  int64_t n_firsts = 0;
  for (int64_t v = 0; v < nv; ++v) {
    const int64_t before = nb[2 * v], after = nb[2 * v + 1];
    linked += (before != nv) | (after != nv);
    firsts[n_firsts] = static_cast<int32_t>(v);
    n_firsts += (before == nv) & (after != nv);
  }
  chain->reserve(linked);
  starts->reserve(n_firsts + 1);
  std::vector<int32_t> walk[kWalkers];
  for (int64_t f = 0; f < n_firsts; f += kWalkers) {
    const int n = static_cast<int>(std::min<int64_t>(kWalkers, n_firsts - f));
    // Walk w stands at vertex at[w], reached from prev[w] (nv for a first vertex), and has
    // prefetched its table entry; each round checks and records it, then moves on.
    int64_t at[kWalkers], prev[kWalkers];
    for (int w = 0; w < n; ++w) {
      at[w] = firsts[f + w];
      prev[w] = nv;
      walk[w].clear();
    }
    for (bool moving = true; moving;) {
      moving = false;
      for (int w = 0; w < n; ++w) {
        const int64_t u = at[w];
        if (u == nv) continue;
        if (u < 0 || u > nv || nb[2 * u] != prev[w]) return false;
        walk[w].push_back(static_cast<int32_t>(u));
        prev[w] = u;
        at[w] = nb[2 * u + 1];
        if (at[w] != nv) {
          __builtin_prefetch(nb + 2 * at[w]);
          moving = true;
        }
      }
    }
    for (int w = 0; w < n; ++w) {
      if (static_cast<int64_t>(chain->size() + walk[w].size()) > linked) return false;
      starts->push_back(static_cast<int64_t>(chain->size()));
      chain->insert(chain->end(), walk[w].begin(), walk[w].end());
    }
  }
  starts->push_back(static_cast<int64_t>(chain->size()));
  return static_cast<int64_t>(chain->size()) == linked;
}

BlurChains build_blur_chains(const LatticeView& lat) {
  const int64_t nv = lat.n_vertices;
  const int n_dirs = lat.d + 1;
  BlurChains chains;
  chains.vertices.resize(n_dirs);
  chains.starts.resize(n_dirs);
  std::vector<char> ok(n_dirs, 0);
  parallel_for_dynamic(n_dirs, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      ok[j] =
          chain_direction(lat.neighbors + j * nv * 2, nv, &chains.vertices[j], &chains.starts[j]);
    }
  });
  if (std::find(ok.begin(), ok.end(), 0) != ok.end()) return BlurChains{};
  return chains;
}

namespace {

// A blur pass is run in units: vertices when it reads one buffer and writes another, chains
// when the lattice has chains and the pass runs in place.
int64_t pass_units(const LatticeView& lat, int step, bool reverse) {
  if (lat.chains == nullptr) return lat.n_vertices;
  return static_cast<int64_t>(lat.chains->starts[reverse ? lat.d - step : step].size()) - 1;
}

// Blur pass `step` (of 0..d, in the order the directions run) over units [begin, end): from
// src into dst, or, with chains, in place in src (dst unused). Rows V of src and dst are zero.
void blur_pass_units(const LatticeView& lat, int step, bool reverse, float* src, float* dst,
                     int64_t s, int64_t begin, int64_t end) {
  const int j = reverse ? lat.d - step : step;
  if (lat.chains == nullptr) {
    const int32_t* nb = lat.neighbors + static_cast<int64_t>(j) * lat.n_vertices * 2;
    blur_range(nb, src, dst, s, begin, end);
    return;
  }
  std::unique_ptr<float[]> prev(new float[s]);
  blur_chains(lat.chains->vertices[j].data(), lat.chains->starts[j].data(), begin, end, src, s,
              prev.get(), src + lat.n_vertices * s);
}

// Blur passes of a, which holds their input; returns the buffer holding the result: a itself
// with chains, else a or b (the passes ping-pong between them). Directions run 0..d, or d..0
// when reverse (the transposed filter).
float* blur_passes(const LatticeView& lat, float* a, float* b, int64_t s, bool reverse) {
  const int64_t nv = lat.n_vertices;
  const bool in_place = lat.chains != nullptr;
  if (!in_place) std::fill(b + nv * s, b + (nv + 1) * s, 0.f);
  for (int step = 0; step <= lat.d; ++step) {
    parallel_for_dynamic(pass_units(lat, step, reverse),
                         in_place ? kDynamicChains : kDynamicVertices,
                         [&](int64_t begin, int64_t end) {
                           blur_pass_units(lat, step, reverse, a, b, s, begin, end);
                         });
    if (!in_place) std::swap(a, b);
  }
  return a;
}

// The blur passes of one term, shared out in chunks: threads that finish their own tasks early
// take chunks as soon as this term's splat is complete (they never wait for it), pass by pass,
// and whatever is left runs on every thread afterwards. Chunks are numbered across passes and
// handed out in order; a chunk of pass k runs once every chunk of the passes before is done
// (only chunks below it can complete first, so a count of completed chunks tells), and a
// thread waits at most for chunks that others are running. Any split computes every row the
// same way.
class SharedPasses {
 public:
  // Passes run in place in `a` with chains, else from a to b and back; rows V are zero.
  SharedPasses(const LatticeView& lat, bool reverse, float* a, float* b, int64_t s)
      : lat_(lat),
        reverse_(reverse),
        a_(a),
        b_(b),
        s_(s),
        n_passes_(lat.d + 1),
        chunk_(lat.chains != nullptr ? kDynamicChains : kDynamicVertices) {
    for (int step = 0; step < n_passes_; ++step) {
      first_chunk_.push_back(n_chunks_);
      n_chunks_ += (pass_units(lat, step, reverse) + chunk_ - 1) / chunk_;
    }
    first_chunk_.push_back(n_chunks_);
  }

  void mark_ready() { ready_.store(true, std::memory_order_release); }

  void help() {
    if (!ready_.load(std::memory_order_acquire)) return;
    for (int64_t c = next_.fetch_add(1); c < n_chunks_; c = next_.fetch_add(1)) run_chunk(c);
  }

  // Runs what is left on every thread; returns the buffer that holds the result.
  float* finish() {
    mark_ready();
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { help(); });
    return lat_.chains != nullptr || n_passes_ % 2 == 0 ? a_ : b_;
  }

 private:
  void run_chunk(int64_t c) {
    int step = 0;
    while (c >= first_chunk_[step + 1]) ++step;
    while (completed_.load(std::memory_order_acquire) < first_chunk_[step]) spin_pause();
    const int64_t begin = (c - first_chunk_[step]) * chunk_;
    const int64_t end = std::min(pass_units(lat_, step, reverse_), begin + chunk_);
    float* src = lat_.chains != nullptr || step % 2 == 0 ? a_ : b_;
    float* dst = src == a_ ? b_ : a_;
    blur_pass_units(lat_, step, reverse_, src, dst, s_, begin, end);
    completed_.fetch_add(1, std::memory_order_release);
  }

  static void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  const LatticeView& lat_;
  const bool reverse_;
  float* a_;
  float* b_;
  const int64_t s_;
  const int n_passes_;
  const int64_t chunk_;
  int64_t n_chunks_ = 0;
  std::vector<int64_t> first_chunk_;   // first chunk of each pass, then the total
  std::atomic<int64_t> next_{0};       // next chunk to hand out
  std::atomic<int64_t> completed_{0};  // chunks done
  std::atomic<bool> ready_{false};
};

// A term's splat, and its whole blur when it has a sweep plan.
void splat_term(const LatticeView& lat, const SweepPlan* plan_or_null, const float* values,
                int64_t s, float* buf, bool reverse) {
  if (plan_or_null == nullptr) {
    splat_scatter(lat, values, s, buf);
    return;
  }
  const SweepPlan& plan = *plan_or_null;
  // Every ring row is written before it is read: no initialisation. (Up to 24 MB: pooled, so
  // the next iteration reuses mapped pages.)
  auto rings = scratch_large<float>((lat.d * plan.ring + plan.splat_ring) * s);
  const std::vector<float> zero(s, 0.f);
  if (plan.splat_ring > 0) {
    std::fill(buf + lat.n_vertices * s, buf + (lat.n_vertices + 1) * s, 0.f);
    sweep_blur(lat, values, buf, s, reverse, plan, rings.get(), zero.data());
  } else {
    splat_scatter(lat, values, s, buf);
    sweep_blur(lat, nullptr, buf, s, reverse, plan, rings.get(), zero.data());
  }
}

// Whether splat_and_blur sweeps term t, and with which plan.
bool sweeps(const LatticeView* const* lats, int n_terms, int t, int64_t s, SweepPlan* plan) {
  return !one_term_in_parallel(n_terms) && plan_sweep(*lats[t], s, /*fuse_splat=*/true, plan);
}

}  // namespace

bool one_term_in_parallel(int n_terms) { return n_terms == 1 && at::get_num_threads() >= 2; }

bool blurs_by_passes(const LatticeView* const* lats, int n_terms, int t, int64_t s) {
  SweepPlan plan;
  return !sweeps(lats, n_terms, t, s, &plan);
}

void splat_and_blur(const LatticeView* const* lats, int n_terms, const float* values, int64_t s,
                    float** bufs, float** spare, bool reverse) {
  if (one_term_in_parallel(n_terms)) {
    splat(*lats[0], values, s, bufs[0]);
    float* result = blur_passes(*lats[0], bufs[0], *spare, s, reverse);
    if (result != bufs[0]) std::swap(bufs[0], *spare);
    return;
  }
  // One task per term: splat in scatter form (same bits as the gather, streaming through the
  // values), then, where the lattice allows it, the cache-resident sweep blur. With two terms
  // on two threads the gaussian term's splat and sweep overlap the bilateral splat, and the
  // thread done first starts the bilateral term's blur passes: with 182 labels the gaussian
  // task is the longer one by ~30%. Sharing the first pass took 4-9% off a call (no change
  // with 21 labels, where the two tasks are even); going on with the later passes as soon as
  // each is complete, another 1-4% (182 labels 3525/3921 -> 3482/3745 ms, min/median of 8
  // alternating rounds; 21 labels 353/480 -> 338/473 of 14).
  // Only one term at a time can be mid-blur (a pass without chains needs the spare buffer):
  // the first one blurred by passes.
  std::vector<SweepPlan> plans(n_terms);
  std::vector<char> swept(n_terms, 0);
  int early = -1;
  for (int t = 0; t < n_terms; ++t) {
    swept[t] = sweeps(lats, n_terms, t, s, &plans[t]);
    if (!swept[t] && early < 0) early = t;
  }
  std::unique_ptr<SharedPasses> early_passes;
  if (early >= 0) {
    const LatticeView& lat = *lats[early];
    float* b = nullptr;  // in place along chains
    if (lat.chains == nullptr) {
      b = *spare;
      std::fill(b + lat.n_vertices * s, b + (lat.n_vertices + 1) * s, 0.f);
    }
    early_passes.reset(new SharedPasses(lat, reverse, bufs[early], b, s));
  }
  // Terms are handed out one at a time (more terms than threads: whoever is free next); a
  // thread with no term left helps with the early term's passes.
  parallel_for_dynamic(
      n_terms, 1,
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          splat_term(*lats[t], swept[t] ? &plans[t] : nullptr, values, s, bufs[t], reverse);
          if (t == early) early_passes->mark_ready();
        }
      },
      [&] {
        if (early_passes) early_passes->help();
      });
  for (int t = 0; t < n_terms; ++t) {
    if (swept[t]) continue;
    float* result =
        t == early ? early_passes->finish() : blur_passes(*lats[t], bufs[t], *spare, s, reverse);
    if (result != bufs[t]) std::swap(bufs[t], *spare);
  }
}

}  // namespace cpu
}  // namespace lattice
}  // namespace fastseg
