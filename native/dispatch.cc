// Run-time choice of the kernel table, and the scalar element conversions.
//
// The CPU is asked once (cpuid) which instruction sets it has, and the OS once (xgetbv) whether it
// saves the YMM/ZMM register state across context switches; an ISA needs both. A raw cpuid check
// alone would select AVX-512 on an OS that does not preserve ZMM and corrupt registers at random.
// Compiled without any -m flag: nothing here may execute an AVX instruction.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define WINA_X86 1
#include <cpuid.h>
#else
#define WINA_X86 0
#endif

enum {
  FEATURE_SCALAR = 1,
  FEATURE_AVX2 = 2,        // AVX2 + FMA + F16C, OS saves YMM
  FEATURE_AVX512 = 4,      // AVX-512 F/BW/VL/DQ, OS saves ZMM and opmask state
  FEATURE_AVX512_BF16 = 8  // AVX512_BF16 on top of FEATURE_AVX512
};

// ---- feature detection --------------------------------------------------------------------------

#if WINA_X86
static uint64_t xcr0_read(void) {
  uint32_t lo, hi;
  // Raw opcode form of xgetbv so this file needs no -mxsave.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

static int features_detect(void) {
  int features = FEATURE_SCALAR;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return features;
  bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !avx) return features;
  uint64_t xcr0 = xcr0_read();
  bool ymm_saved = (xcr0 & 0x6) == 0x6;    // SSE + AVX state
  bool zmm_saved = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return features;
  __cpuid_count(7, 0, a, b, c, d);
  bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  __cpuid_count(7, 1, a, b, c, d);
  bool avx512bf16 = a & (1u << 5);
  if (ymm_saved && avx2 && fma && f16c) features |= FEATURE_AVX2;
  if ((features & FEATURE_AVX2) && zmm_saved && avx512f && avx512dq && avx512bw && avx512vl)
    features |= FEATURE_AVX512;
  if ((features & FEATURE_AVX512) && avx512bf16) features |= FEATURE_AVX512_BF16;
  return features;
}
#else
static int features_detect(void) { return FEATURE_SCALAR; }
#endif

extern "C" int wina_cpu_features(void) {
  static const int features = features_detect();
  return features;
}

// ---- tables -------------------------------------------------------------------------------------

extern "C" const wina_kernels *wina_kernels_for(const char *isa) {
  if (!isa) return nullptr;
  int features = wina_cpu_features();
  if (strcmp(isa, "scalar") == 0) return &wina_kernels_scalar;
#if WINA_X86
  if (strcmp(isa, "avx2") == 0) return (features & FEATURE_AVX2) ? &wina_kernels_avx2 : nullptr;
  if (strcmp(isa, "avx512") == 0)
    return (features & FEATURE_AVX512) ? &wina_kernels_avx512 : nullptr;
#else
  (void)features;
#endif
  return nullptr;
}

static const wina_kernels *kernels_best(void) {
  const wina_kernels *k = wina_kernels_for("avx512");
  if (!k) k = wina_kernels_for("avx2");
  return k ? k : &wina_kernels_scalar;
}

static const wina_kernels *kernels_choose(void) {
  const wina_kernels *best = kernels_best();
  const char *forced = getenv("WINA_ISA");
  if (!forced || !*forced) return best;
  bool known = strcmp(forced, "scalar") == 0 || strcmp(forced, "avx2") == 0 ||
               strcmp(forced, "avx512") == 0;
  const wina_kernels *k = known ? wina_kernels_for(forced) : nullptr;
  if (k) return k;
  fprintf(stderr, "wina: WINA_ISA=%s is %s on this CPU; using %s\n", forced,
          known ? "not supported" : "unknown (scalar|avx2|avx512)", best->name);
  return best;
}

extern "C" const wina_kernels *wina_kernels_active(void) {
  static const wina_kernels *const active = kernels_choose();
  return active;
}

// ---- element conversions ------------------------------------------------------------------------

static uint32_t f32_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

static float f32_from_bits(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

extern "C" float wina_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

extern "C" uint16_t wina_f32_to_bf16(float f) {
  uint32_t b = f32_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u);  // quiet NaN
  b += 0x7fffu + ((b >> 16) & 1u);  // round to nearest, ties to even
  return (uint16_t)(b >> 16);
}

extern "C" float wina_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in f32
    float v = (float)mantissa * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

extern "C" uint16_t wina_f32_to_f16(float f) {
  uint32_t b = f32_bits(f);
  uint16_t sign = (uint16_t)((b >> 16) & 0x8000u);
  b &= 0x7fffffffu;
  if (b > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((b >> 13) & 0x3ffu);  // quiet NaN
  if (b >= 0x47800000u) return sign | 0x7c00u;  // >= 65536 (or inf): overflow to inf
  if (b >= 0x38800000u) {                      // normal half: rebias, round to nearest even
    b += 0x0fffu + ((b >> 13) & 1u);           // a carry into the exponent is still correct
    return sign | (uint16_t)((b - (112u << 23)) >> 13);
  }
  if (b < 0x33000000u) return sign;  // below half the smallest subnormal: rounds to zero
  // Subnormal half: value = h * 2^-24, h = significand >> (126 - exponent), rounded to even.
  uint32_t exponent = b >> 23, significand = (b & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - exponent;  // 14 .. 24
  uint32_t h = significand >> shift, rest = significand & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) h++;
  return sign | (uint16_t)h;
}
