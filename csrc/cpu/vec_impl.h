// Vector helpers shared by the CPU attention kernels (prefix_attention_impl.h, paged_attention_impl.h). Included
// INSIDE each kernel's ISA namespace (spct::cpu::SPCT_ISA, anonymous), so every instruction-set build gets its own
// copy: no include guard, and no standard-library templates (see the kernels' headers). Needs <cmath>, <cstdint>,
// <cstdlib> and <cstring>, included before the namespace.

constexpr int W = 16;  // floats per vector

// A growable buffer of trivially copyable T.
template <typename T>
struct Buf {
  T* p = nullptr;
  int64_t n = 0, cap = 0;
  Buf() = default;
  explicit Buf(int64_t size, T fill = T()) { assign(size, fill); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { free(p); }
  void resize(int64_t size) {
    if (size > cap) {
      T* grown = static_cast<T*>(realloc(p, sizeof(T) * size_t(size > 0 ? size : 1)));
      if (grown == nullptr) abort();
      p = grown;
      cap = size;
    }
    n = size;
  }
  void assign(int64_t size, T fill) {
    resize(size);
    for (int64_t i = 0; i < size; ++i) p[i] = fill;
  }
  T* data() { return p; }
  T& operator[](int64_t i) { return p[i]; }
};
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

inline vf loadv(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
inline void storev(float* p, vf v) { memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }

inline float from_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
inline uint16_t to_bf16(float f) {  // round to nearest even, as torch does
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return 0x7FC0;
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float load1(const float* p, int64_t i) { return p[i]; }
inline float load1(const uint16_t* p, int64_t i) { return from_bf16(p[i]); }
inline void store1(float* p, int64_t i, float v) { p[i] = v; }
inline void store1(uint16_t* p, int64_t i, float v) { p[i] = to_bf16(v); }

// exp(x) for x <= 0 (Cephes expf: range reduction by ln 2, degree-6 polynomial, relative error ~1e-7). Below -87
// it returns exp(-87) ~ 1.6e-38 instead of a smaller number: nothing measurable next to a running maximum's 1.
// Lane-wise.
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f);
  x = x < lo ? lo : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  const vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  memcpy(&scale, &e, sizeof scale);
  return y * scale;
}
// tanh(x), lane-wise (Cephes tanhf: |x| < 0.625: x + x^3 P(x^2), degree-4 P; else sign(x) (1 - e) / (1 + e) with
// e = exp(-2|x|) from vexp, which holds 1 - e to ~1e-7 as e <= exp(-1.25); e floors at exp(-87), so large |x| give
// +-1). Absolute error ~1e-7. NaN in a lane gives NaN there (the kernels select such lanes away).
inline vf vtanh(vf x) {
  const vf zero = splat(0.0f);
  const vf a = x < zero ? -x : x;
  const vf e = vexp(-2.0f * a);
  const vf big = (1.0f - e) / (1.0f + e);
  const vf s = x * x;
  vf p = splat(-5.70498872745e-3f);
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const vf small = p * s * x + x;
  return a < splat(0.625f) ? small : x < zero ? -big : big;
}
