// Per-point permutohedral-lattice arithmetic, written once and compiled for both the CPU
// loops (lattice_build_cpu.cpp) and the CUDA kernels (lattice_cuda.cu).
//
// The embedding follows Adams, Baek & Davis (2010) exactly as pydensecrf's SSE code computes
// it (same scale factors, same operation order, round-half-to-even), so that fastseg puts every
// point in the same simplex with the same barycentric weights as the reference. Products and
// sums go through rn_* helpers: on the GPU they are the non-contracting __fmul_rn/__fadd_rn
// intrinsics, because a fused multiply-add can move a point across a simplex boundary near a
// tie; on the host the build passes -ffp-contract=off.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace fastseg {
namespace lattice {

// Largest feature dimension d the lattice supports (the vertex keys of a point are d ints).
constexpr int kMaxDim = 16;

// Beyond this magnitude of the elevated coordinates the lattice arithmetic is no longer exact
// enough (doubles keep 2^-22 resolution up to 2^30) and int32 keys could overflow: refuse.
constexpr double kMaxElevated = 1073741824.0;  // 2^30
// Up to this magnitude pydensecrf's float arithmetic is exact to well below a lattice unit and
// fastseg computes in float, bit for bit like the reference; above it, in double.
constexpr double kMaxFloatElevated = 32768.0;  // 2^15, pydensecrf's own (int16 key) range

C10_HOST_DEVICE inline float rn_mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline float rn_add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
C10_HOST_DEVICE inline float rn_sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
C10_HOST_DEVICE inline double rn_mul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline double rn_add(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
C10_HOST_DEVICE inline double rn_sub(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
// Round half to even, as SSE's cvtps2dq does under the default rounding mode. On the host,
// adding and subtracting 1.5 * 2^23 (2^52 for double) rounds the same way without a libm
// call (baseline x86-64 has no rounding instruction); exact for |v| < 2^22 (2^51), far above
// the magnitudes the embedding is used for (see kMaxFloatElevated, kMaxElevated). IEEE
// arithmetic keeps (v + c) - c as written: never build this with -ffast-math.
C10_HOST_DEVICE inline float round_even(float v) {
#ifdef __CUDA_ARCH__
  return rintf(v);
#else
  return (v + 12582912.0f) - 12582912.0f;
#endif
}
C10_HOST_DEVICE inline double round_even(double v) {
#ifdef __CUDA_ARCH__
  return rint(v);
#else
  return (v + 6755399441055744.0) - 6755399441055744.0;
#endif
}

// Diagonal of the elevation matrix E and the constants of the rounding step, in the precision
// T the points are embedded in. Built on the host by make_embedding(); passed by value to kernels.
template <typename T>
struct Embedding {
  int d;
  T scale[kMaxDim];  // (d+1) sqrt(2/3) / sqrt((i+1)(i+2)), computed as pydensecrf does
  T inv_dp1;         // 1 / (d+1)
  T dp1;             // d + 1
};

template <typename T>
inline Embedding<T> make_embedding(int d) {
  Embedding<T> e{};
  e.d = d;
  // pydensecrf: float inv_std_dev = sqrt(2.0/3.0)*(d+1); scale = 1.0/sqrt((i+2)*(i+1))*inv_std_dev
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * (d + 1));
  for (int i = 0; i < d; ++i) {
    const double s = 1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev;
    e.scale[i] = static_cast<T>(static_cast<float>(s));
  }
  e.inv_dp1 = static_cast<T>(1.0f / static_cast<float>(d + 1));
  e.dp1 = static_cast<T>(d + 1);
  return e;
}

// Bound on |elevated coordinate| given the largest |feature| in each dimension; used to pick
// float or double embedding and to reject inputs whose keys would overflow.
inline double elevated_bound(const double* max_abs, int d, const Embedding<double>& e) {
  double bound = 0.0, tail = 0.0;  // tail = sum of |cf_i| for i >= j
  for (int j = d; j > 0; --j) {
    const double cf = max_abs[j - 1] * e.scale[j - 1];
    bound = fmax(bound, tail + j * cf);
    tail += cf;
  }
  return fmax(bound, tail);
}

// The simplex a point lies in: its remainder-0 vertex (rem0, d+1 coords summing to zero),
// the rank of each coordinate, and the barycentric weight of each of its d+1 vertices.
struct Simplex {
  int32_t rem0[kMaxDim + 1];
  int32_t rank[kMaxDim + 1];
  float bary[kMaxDim + 1];
};

// Embeds one point f[0..d) (Adams et al. 2010, sections 3.1-3.2).
// kD > 0 fixes d = kD at compile time (loops unroll); kD = 0 reads it from e.
template <typename T, int kD = 0>
C10_HOST_DEVICE inline void embed_point(const float* f, const Embedding<T>& e, Simplex& s) {
  const int d = kD > 0 ? kD : e.d;
  T elevated[kMaxDim + 1];
  T rem0[kMaxDim + 1];
  // Elevate onto the plane sum(x) = 0: y = E f.
  T sm = T(0);
  for (int j = d; j > 0; --j) {
    const T cf = rn_mul(static_cast<T>(f[j - 1]), e.scale[j - 1]);
    elevated[j] = rn_sub(sm, rn_mul(static_cast<T>(j), cf));
    sm = rn_add(sm, cf);
  }
  elevated[0] = sm;
  // Nearest remainder-0 point: round each coordinate to a multiple of d+1.
  T sum = T(0);
  for (int i = 0; i <= d; ++i) {
    const T v = round_even(rn_mul(e.inv_dp1, elevated[i]));
    rem0[i] = rn_mul(v, e.dp1);
    sum = rn_add(sum, v);
  }
  // Rank the differences from that point (ties go to the later coordinate, as in pydensecrf).
  int rank[kMaxDim + 1];
  for (int i = 0; i <= d; ++i) rank[i] = 0;
  // (Branch-free: these comparisons are data-dependent coin flips.)
  T diff[kMaxDim + 1];
  for (int i = 0; i <= d; ++i) diff[i] = rn_sub(elevated[i], rem0[i]);
  for (int i = 0; i < d; ++i) {
    for (int j = i + 1; j <= d; ++j) {
      const int less = diff[i] < diff[j];
      rank[i] += less;
      rank[j] += 1 - less;
    }
  }
  // If the rounded point is off the plane (sum != 0), walk it back.
  const int isum = static_cast<int>(sum);
  for (int i = 0; i <= d; ++i) {
    rank[i] += isum;
    const int wrap = (rank[i] < 0) - (rank[i] > d);  // +1, -1 or 0
    rank[i] += wrap * (d + 1);
    if (wrap != 0) rem0[i] = rn_add(rem0[i], static_cast<T>(wrap) * e.dp1);
  }
  // Barycentric coordinates (p. 10), accumulated in pydensecrf's order.
  T bary[kMaxDim + 2];
  for (int i = 0; i <= d + 1; ++i) bary[i] = T(0);
  for (int i = 0; i <= d; ++i) {
    const T v = rn_mul(rn_sub(elevated[i], rem0[i]), e.inv_dp1);
    bary[d - rank[i]] = rn_add(bary[d - rank[i]], v);
    bary[d - rank[i] + 1] = rn_sub(bary[d - rank[i] + 1], v);
  }
  bary[0] = rn_add(bary[0], rn_add(T(1), bary[d + 1]));
  for (int i = 0; i <= d; ++i) {
    s.rem0[i] = static_cast<int32_t>(rem0[i]);
    s.rank[i] = rank[i];
    s.bary[i] = static_cast<float>(bary[i]);
  }
}

// Key (first d coordinates; the last is implied by the zero sum) of vertex `remainder` of the
// simplex: rem0 + the canonical simplex's vertex, permuted by rank.
C10_HOST_DEVICE inline void vertex_key(const Simplex& s, int d, int remainder, int32_t* key) {
  for (int i = 0; i < d; ++i) {
    key[i] = s.rem0[i] + (s.rank[i] <= d - remainder ? remainder : remainder - (d + 1));
  }
}

// Key of the neighbour of `key` one step along lattice direction j (0 <= j <= d), in the
// "+" sense: every coordinate -1, coordinate j +d. The "-" neighbour is the inverse relation,
// so only this one is ever looked up.
C10_HOST_DEVICE inline void neighbour_key(const int32_t* key, int d, int j, int32_t* out) {
  for (int i = 0; i < d; ++i) out[i] = key[i] - 1;
  if (j < d) out[j] = key[j] + d;
}

C10_HOST_DEVICE inline uint32_t hash_key(const int32_t* key, int d) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < d; ++i) {
    h ^= static_cast<uint32_t>(key[i]);
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  return static_cast<uint32_t>(h ^ (h >> 32));
}

C10_HOST_DEVICE inline bool keys_equal(const int32_t* a, const int32_t* b, int d) {
  for (int i = 0; i < d; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

}  // namespace lattice
}  // namespace fastseg
