// Kernel tests: every kernel of every ISA table this CPU can run, for f32, bf16 and f16 weights,
// against the scalar reference and against exact double-precision sums computed here; the
// threaded linear layers against the single-threaded kernels; selection against a plain sort.
//
// Tolerances. bf16 -> f32 and f16 -> f32 are exact, so every dtype gets the same bound: two fp32
// sums of the same n products, in different orders, differ from the exact sum by at most
// gamma(n) = n * 2^-24 times sum |x_i * w_i| each (the classic worst-case bound), so results are
// compared as |a - b| <= 2 * (n + 2) * 2^-24 * sum |x_i * w_i|. Test sizes keep n <= ~600 where a
// single missing or doubled term would exceed that bound many times over. Selection and gating
// scores must match exactly.
//
// Prints "N passed, N failed" and exits non-zero on any failure.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "linear.h"

// ---- harness ------------------------------------------------------------------------------------

static int n_passed = 0, n_failed = 0;

static void check(bool ok, const char *fmt, ...) {
  if (ok) {
    n_passed++;
    return;
  }
  n_failed++;
  va_list args;
  va_start(args, fmt);
  fprintf(stderr, "FAIL: ");
  vfprintf(stderr, fmt, args);
  fprintf(stderr, "\n");
  va_end(args);
}

static std::mt19937 rng(12345);

static float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

static const char *dtype_name(int dtype) {
  return dtype == WINA_BF16 ? "bf16" : dtype == WINA_F16 ? "f16" : "f32";
}

static const float kSentinel = 12345.0f;
static const double kUnit = 1.0 / 16777216.0;  // 2^-24

static double bound(int64_t n, double magnitude) { return 2.0 * (double)(n + 2) * kUnit * magnitude + 1e-30; }

// ---- weights in any dtype -----------------------------------------------------------------------

// rows x ld elements of one dtype; padding columns [cols, ld) hold NaN so a kernel that reads
// past `out` poisons its result.
struct Weights {
  int dtype;
  int64_t rows, cols, ld;
  std::vector<uint16_t> h;  // bf16 / f16
  std::vector<float> f;     // f32
  std::vector<double> exact;  // the value each element converts to, for references

  Weights(int dtype_, int64_t rows_, int64_t cols_, int64_t ld_)
      : dtype(dtype_), rows(rows_), cols(cols_), ld(ld_), exact((size_t)(rows_ * ld_)) {
    if (dtype == WINA_F32) f.resize((size_t)(rows * ld));
    else h.resize((size_t)(rows * ld));
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < ld; c++) set(r, c, c < cols ? uniform(-1.0f, 1.0f) : NAN);
  }
  void set(int64_t r, int64_t c, float v) {
    size_t e = (size_t)(r * ld + c);
    if (dtype == WINA_F32) {
      f[e] = v;
      exact[e] = v;
    } else if (dtype == WINA_BF16) {
      h[e] = wina_f32_to_bf16(v);
      exact[e] = wina_bf16_to_f32(h[e]);
    } else {
      h[e] = wina_f32_to_f16(v);
      exact[e] = wina_f16_to_f32(h[e]);
    }
  }
  const void *data() const { return dtype == WINA_F32 ? (const void *)f.data() : (const void *)h.data(); }
  double at(int64_t r, int64_t c) const { return exact[(size_t)(r * ld + c)]; }
};

static std::vector<float> random_vector(int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v((size_t)n);
  for (float &e : v) e = uniform(lo, hi);
  return v;
}

// |a[i] - b[i]| <= bound(n, magnitude[i]) for i < count; returns the first failing index or -1.
static int64_t first_mismatch(const float *a, const float *b, const std::vector<double> &magnitude,
                              int64_t n_terms, int64_t count) {
  for (int64_t i = 0; i < count; i++) {
    double diff = fabs((double)a[i] - (double)b[i]);
    if (!(diff <= bound(n_terms, magnitude[(size_t)i]))) return i;
  }
  return -1;
}

// ---- the tables under test ----------------------------------------------------------------------

static std::vector<const wina_kernels *> tables() {
  std::vector<const wina_kernels *> t;
  for (const char *name : {"scalar", "avx2", "avx512"})
    if (const wina_kernels *k = wina_kernels_for(name)) t.push_back(k);
  return t;
}

static const int kDtypes[] = {WINA_F32, WINA_BF16, WINA_F16};

// ---- conversions --------------------------------------------------------------------------------

__attribute__((target("f16c"))) static uint16_t f16_hardware(float f) {
  return (uint16_t)_cvtss_sh(f, 0);  // round to nearest even
}

static float float_of(uint32_t b) {
  float f;
  memcpy(&f, &b, 4);
  return f;
}

static void test_conversions() {
  // bf16: known rounding cases (round to nearest, ties to even), NaN stays NaN.
  check(wina_f32_to_bf16(1.0f) == 0x3f80, "bf16(1.0)");
  check(wina_f32_to_bf16(float_of(0x3f808000)) == 0x3f80, "bf16 tie rounds to even (down)");
  check(wina_f32_to_bf16(float_of(0x3f818000)) == 0x3f82, "bf16 tie rounds to even (up)");
  check(wina_f32_to_bf16(float_of(0x3f808001)) == 0x3f81, "bf16 above tie rounds up");
  check(wina_f32_to_bf16(float_of(0x7f7fffff)) == 0x7f80, "bf16 max float rounds to inf");
  check(isnan(wina_bf16_to_f32(wina_f32_to_bf16(float_of(0x7f800001)))), "bf16 keeps a low-payload NaN");
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = wina_bf16_to_f32((uint16_t)h);
    if (isnan(f)) continue;
    if (wina_f32_to_bf16(f) != h) bad++;
  }
  check(bad == 0, "bf16 round trip of all 65536 values (%d wrong)", bad);

  // f16: exhaustive round trip, then against the F16C instruction where the CPU has it.
  bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = wina_f16_to_f32((uint16_t)h);
    if (isnan(f)) continue;
    if (wina_f32_to_f16(f) != h) bad++;
  }
  check(bad == 0, "f16 round trip of all 65536 values (%d wrong)", bad);
  check(wina_f32_to_f16(65519.0f) == 0x7bff && wina_f32_to_f16(65520.0f) == 0x7c00, "f16 overflow edge");
  check(wina_f32_to_f16(ldexpf(1.0f, -25)) == 0 && wina_f32_to_f16(ldexpf(1.5f, -25)) == 1,
        "f16 smallest subnormal edge");
  check(isnan(wina_f16_to_f32(wina_f32_to_f16(NAN))), "f16 NaN");
  if (__builtin_cpu_supports("f16c")) {
    bad = 0;
    std::uniform_int_distribution<uint32_t> any_bits;
    for (int i = 0; i < 2000000; i++) {
      // Random bit patterns cover every exponent; then finite values near the f16 range.
      float f = i & 1 ? float_of(any_bits(rng)) : ldexpf(uniform(-1.0f, 1.0f), (int)(i % 48) - 30);
      if (isnan(f)) continue;
      if (wina_f32_to_f16(f) != f16_hardware(f)) bad++;
    }
    check(bad == 0, "f16 conversion equals F16C on 2M values (%d differ)", bad);
  }
}

// ---- dispatch -----------------------------------------------------------------------------------

// Runs this executable with WINA_ISA set; the child reports "<active ISA> <best ISA>" as it sees
// the CPU (under an emulator a child may run natively, so its own best is the reference).
static std::string run_self(const std::string &self, const char *isa, std::string *best) {
  std::string cmd = std::string("WINA_ISA=") + isa + " '" + self + "' --print-active-isa 2>/dev/null";
  FILE *p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char active[64] = {0}, child_best[64] = {0};
  if (fscanf(p, "%63s %63s", active, child_best) != 2) active[0] = 0;
  pclose(p);
  *best = child_best;
  return active;
}

static const char *best_isa_name() {
  int features = wina_cpu_features();
  return (features & 4) ? "avx512" : (features & 2) ? "avx2" : "scalar";
}

static void test_dispatch(const std::string &self) {
  int features = wina_cpu_features();
  check(features & 1, "scalar always supported");
  check((wina_kernels_for("avx2") != nullptr) == ((features & 2) != 0), "avx2 table iff feature bit");
  check((wina_kernels_for("avx512") != nullptr) == ((features & 4) != 0), "avx512 table iff feature bit");
  check(wina_kernels_for("sse9") == nullptr && wina_kernels_for(nullptr) == nullptr, "unknown ISA is NULL");
  check(strcmp(wina_kernels_active()->name, best_isa_name()) == 0 || getenv("WINA_ISA"), "active is the best ISA");
  std::string best;
  check(run_self(self, "scalar", &best) == "scalar", "WINA_ISA=scalar forces scalar");
  std::string active = run_self(self, "avx2", &best);
  check(active == (best == "scalar" ? "scalar" : "avx2"), "WINA_ISA=avx2 (got %s, best %s)", active.c_str(),
        best.c_str());
  active = run_self(self, "avx512", &best);
  check(active == best && !best.empty(), "WINA_ISA=avx512 (falls back when unsupported)");
  active = run_self(self, "nonsense", &best);
  check(active == best && !best.empty(), "unknown WINA_ISA keeps the best ISA");
}

// ---- norms and scores ---------------------------------------------------------------------------

static void test_col_norms(const wina_kernels *k) {
  for (int dtype : kDtypes)
    for (int64_t out : {1, 7, 16, 33, 100, 4097}) {
      int64_t n_in = 5, ld = out + 3;
      Weights w(dtype, n_in, out, ld);
      std::vector<float> c((size_t)n_in + 1, kSentinel);
      k->col_norms(dtype, w.data(), ld, n_in, out, c.data());
      bool ok = c[(size_t)n_in] == kSentinel;
      for (int64_t i = 0; i < n_in; i++) {
        double sum = 0;
        for (int64_t o = 0; o < out; o++) sum += w.at(i, o) * w.at(i, o);
        ok = ok && fabs(c[(size_t)i] - sqrt(sum)) <= bound(out, sqrt(sum));
      }
      check(ok, "%s col_norms %s out=%lld", k->name, dtype_name(dtype), (long long)out);
    }
}

static void test_gating_scores(const wina_kernels *k) {
  for (int64_t n : {1, 7, 15, 16, 17, 33, 4097}) {
    std::vector<float> x = random_vector(n), c = random_vector(n, 0.0f, 3.0f);
    std::vector<float> s((size_t)n + 1, kSentinel), s_plain((size_t)n + 1, kSentinel);
    k->gating_scores(x.data(), c.data(), n, s.data());
    k->gating_scores(x.data(), nullptr, n, s_plain.data());
    bool ok = s[(size_t)n] == kSentinel && s_plain[(size_t)n] == kSentinel;
    for (int64_t i = 0; i < n; i++)
      ok = ok && s[(size_t)i] == fabsf(x[(size_t)i]) * c[(size_t)i] && s_plain[(size_t)i] == fabsf(x[(size_t)i]);
    check(ok, "%s gating_scores n=%lld", k->name, (long long)n);
  }
}

// ---- selection ----------------------------------------------------------------------------------

// Scores of several shapes: random, heavy ties, all zero, one histogram bin, a wide dynamic range,
// alternating small/large.
static std::vector<float> scores(int kind, int64_t n) {
  std::vector<float> s((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    float v;
    switch (kind) {
      case 0: v = uniform(0.0f, 2.0f); break;
      case 1: v = (float)(rng() % 4) * 0.5f; break;
      case 2: v = 0.0f; break;
      case 3: v = float_of(0x3f800000u + (uint32_t)(rng() % 4096)); break;  // [1, 1.0005)
      case 4: v = ldexpf(uniform(0.5f, 1.0f), (int)(rng() % 200) - 140); break;  // incl. subnormal
      // Small at even, large at odd indices: a strided sample sees only the small ones, which
      // defeats a sampled bracket (exercises the exact fallback of the AVX-512 top-k).
      default: v = i % 2 ? uniform(1.0f, 2.0f) : uniform(0.0f, 0.01f); break;
    }
    s[(size_t)i] = v;
  }
  return s;
}

static std::vector<int32_t> topk_by_sort(const std::vector<float> &s, int64_t k) {
  std::vector<int32_t> order(s.size());
  for (size_t i = 0; i < s.size(); i++) order[i] = (int32_t)i;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[(size_t)a] > s[(size_t)b]; });
  if (k > (int64_t)order.size()) k = (int64_t)order.size();
  order.resize((size_t)(k < 0 ? 0 : k));
  std::sort(order.begin(), order.end());
  return order;
}

static void test_select_threshold(const wina_kernels *k) {
  for (int kind = 0; kind < 6; kind++)
    for (int64_t n : {0, 1, 7, 15, 16, 17, 33, 100, 4097, 14336}) {
      std::vector<float> s = scores(kind, n);
      std::vector<float> ts = {-1.0f, 0.0f, 0.5f, 1.0f, 1.00025f, 3.0f};
      if (n > 0) ts.push_back(s[(size_t)(n / 2)]);
      for (float t : ts) {
        std::vector<int32_t> expect;
        for (int64_t i = 0; i < n; i++)
          if (s[(size_t)i] > t) expect.push_back((int32_t)i);
        std::vector<int32_t> idx((size_t)n + 16, -7);
        int64_t count = k->select_threshold(s.data(), n, t, idx.data());
        bool ok = count == (int64_t)expect.size() && std::equal(expect.begin(), expect.end(), idx.begin()) &&
                  std::all_of(idx.begin() + count, idx.end(), [](int32_t v) { return v == -7; });
        check(ok, "%s select_threshold kind=%d n=%lld t=%g (count %lld, expected %zu)", k->name, kind,
              (long long)n, t, (long long)count, expect.size());
      }
    }
}

static void test_select_topk(const wina_kernels *k) {
  for (int kind = 0; kind < 6; kind++)
    for (int64_t n : {0, 1, 7, 16, 17, 33, 100, 4097, 14336}) {
      std::vector<float> s = scores(kind, n);
      for (int64_t kk : {(int64_t)0, (int64_t)1, n / 3, n / 2, n - 1, n, n + 5}) {
        if (kk < 0) continue;
        std::vector<int32_t> expect = topk_by_sort(s, kk);
        std::vector<int32_t> idx((size_t)n + 16, -7), scratch((size_t)n + 1);
        int64_t count = k->select_topk(s.data(), n, kk, idx.data(), scratch.data());
        bool ok = count == (int64_t)expect.size() && std::equal(expect.begin(), expect.end(), idx.begin()) &&
                  std::all_of(idx.begin() + count, idx.end(), [](int32_t v) { return v == -7; });
        check(ok, "%s select_topk kind=%d n=%lld k=%lld (count %lld, expected %zu)", k->name, kind,
              (long long)n, (long long)kk, (long long)count, expect.size());
      }
    }
}

// ---- input-major gemv ---------------------------------------------------------------------------

// y (random start values) += sum over rows of x[i] * W[i][col0 : col0 + out], checked against the
// exact sum and with y's slot past `out` untouched. col0 > 0 addresses a sub-range of a fused matrix.
static void test_gemv(const wina_kernels *k, bool sparse) {
  for (int dtype : kDtypes)
    for (int64_t out : {1, 7, 16, 31, 33, 64, 100, 4097})
      for (int64_t n_rows : {0, 1, 7, 8, 9, 17, 301}) {
        int64_t col0 = out % 3, ld = col0 + out + 5, n_in = sparse ? 2 * n_rows + 3 : n_rows + 4;
        Weights w(dtype, n_in, col0 + out, ld);
        std::vector<float> x = random_vector(n_in);
        std::vector<int32_t> idx;
        int64_t i0 = 2, i1 = 2 + n_rows;  // dense: a sub-range of input rows, as split-k uses it
        if (sparse) {
          for (int64_t i = 0; i < n_in && (int64_t)idx.size() < n_rows; i++)
            if (rng() % 2 || n_in - i <= n_rows - (int64_t)idx.size()) idx.push_back((int32_t)i);
        } else {
          for (int64_t i = i0; i < i1; i++) idx.push_back((int32_t)i);
        }
        std::vector<float> y0 = random_vector(out), y(y0);
        y.push_back(kSentinel);
        const void *base = (const char *)w.data() + col0 * (dtype == WINA_F32 ? 4 : 2);
        if (sparse)
          k->gemv_sparse(dtype, base, ld, out, x.data(), idx.data(), (int64_t)idx.size(), y.data());
        else
          k->gemv_dense(dtype, base, ld, out, x.data(), i0, i1, y.data());
        std::vector<float> expect((size_t)out);
        std::vector<double> magnitude((size_t)out);
        for (int64_t o = 0; o < out; o++) {
          double sum = y0[(size_t)o], mag = fabs(y0[(size_t)o]);
          for (int32_t i : idx) {
            sum += (double)x[(size_t)i] * w.at(i, col0 + o);
            mag += fabs((double)x[(size_t)i] * w.at(i, col0 + o));
          }
          expect[(size_t)o] = (float)sum;
          magnitude[(size_t)o] = mag;
        }
        int64_t bad = first_mismatch(y.data(), expect.data(), magnitude, (int64_t)idx.size() + 1, out);
        check(bad < 0 && y[(size_t)out] == kSentinel, "%s %s %s out=%lld rows=%lld (first bad %lld)", k->name,
              sparse ? "gemv_sparse" : "gemv_dense", dtype_name(dtype), (long long)out, (long long)n_rows,
              (long long)bad);
      }
}

// ---- prefill GEMM -------------------------------------------------------------------------------

static void test_gemm(const wina_kernels *k) {
  for (int dtype : kDtypes)
    for (int64_t out : {1, 7, 33, 64, 100, 130})
      for (int64_t n_in : {0, 1, 7, 129, 300})
        for (int64_t T : {1, 2, 6, 7, 13}) {
          int64_t ld = out + 3, ldx = n_in + 2, ldy = out + 4;
          int64_t o0 = out > 8 ? 3 : 0, o1 = out > 8 ? out - 2 : out;
          Weights w(dtype, n_in, out, ld);
          std::vector<float> x = random_vector(T * ldx), y((size_t)(T * ldy), kSentinel);
          k->gemm(dtype, w.data(), ld, n_in, o0, o1, x.data(), ldx, T, y.data(), ldy);
          bool ok = true;
          for (int64_t t = 0; t < T && ok; t++)
            for (int64_t o = 0; o < ldy && ok; o++) {
              float got = y[(size_t)(t * ldy + o)];
              if (o < o0 || o >= o1) {
                ok = got == kSentinel;
                continue;
              }
              double sum = 0, mag = 0;
              for (int64_t i = 0; i < n_in; i++) {
                double p = (double)x[(size_t)(t * ldx + i)] * w.at(i, o);
                sum += p;
                mag += fabs(p);
              }
              ok = fabs(got - sum) <= bound(n_in, mag);
            }
          check(ok, "%s gemm %s out=%lld n_in=%lld T=%lld", k->name, dtype_name(dtype), (long long)out,
                (long long)n_in, (long long)T);
        }
}

// ---- row-major gemv -----------------------------------------------------------------------------

static void test_gemv_rows(const wina_kernels *k) {
  for (int dtype : kDtypes)
    for (int64_t cols : {1, 7, 16, 31, 33, 100, 301})
      for (int64_t rows : {1, 3, 4, 5, 9}) {
        int64_t ld = cols + 2, r0 = rows > 3 ? 1 : 0, r1 = rows > 3 ? rows - 1 : rows;
        Weights w(dtype, rows, cols, ld);
        std::vector<float> x = random_vector(cols), y((size_t)rows, kSentinel);
        k->gemv_rows(dtype, w.data(), ld, cols, x.data(), r0, r1, y.data());
        bool ok = true;
        for (int64_t r = 0; r < rows; r++) {
          if (r < r0 || r >= r1) {
            ok = ok && y[(size_t)r] == kSentinel;
            continue;
          }
          double sum = 0, mag = 0;
          for (int64_t c = 0; c < cols; c++) {
            sum += w.at(r, c) * x[(size_t)c];
            mag += fabs(w.at(r, c) * x[(size_t)c]);
          }
          ok = ok && fabs(y[(size_t)r] - sum) <= bound(cols, mag);
        }
        check(ok, "%s gemv_rows %s cols=%lld rows=%lld", k->name, dtype_name(dtype), (long long)cols,
              (long long)rows);
      }
}

// ---- vector helpers -----------------------------------------------------------------------------

static void test_helpers(const wina_kernels *k) {
  for (int64_t n : {0, 1, 7, 15, 16, 17, 33, 100, 4097}) {
    std::vector<float> a = random_vector(n), b = random_vector(n);
    double sum = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
      sum += (double)a[(size_t)i] * b[(size_t)i];
      mag += fabs((double)a[(size_t)i] * b[(size_t)i]);
    }
    check(fabs(k->dot_f32(a.data(), b.data(), n) - sum) <= bound(n, mag), "%s dot_f32 n=%lld", k->name,
          (long long)n);

    std::vector<float> y = random_vector(n), y_axpy(y), y_add(y);
    y_axpy.push_back(kSentinel);
    y_add.push_back(kSentinel);
    k->axpy_f32(0.75f, a.data(), y_axpy.data(), n);
    k->add_f32(y_add.data(), a.data(), n);
    bool ok = y_axpy[(size_t)n] == kSentinel && y_add[(size_t)n] == kSentinel;
    for (int64_t i = 0; i < n; i++) {
      double e1 = (double)y[(size_t)i] + 0.75 * a[(size_t)i], e2 = (double)y[(size_t)i] + a[(size_t)i];
      ok = ok && fabs(y_axpy[(size_t)i] - e1) <= bound(2, fabs(y[(size_t)i]) + fabs(a[(size_t)i]));
      ok = ok && fabs(y_add[(size_t)i] - e2) <= bound(1, fabs(y[(size_t)i]) + fabs(a[(size_t)i]));
    }
    check(ok, "%s axpy_f32/add_f32 n=%lld", k->name, (long long)n);
  }
}

// ---- thread pool and threaded linear layers -----------------------------------------------------

static void test_pool() {
  for (int threads : {1, 2, 3}) {
    wina::pool_set_threads(threads);
    check(wina::pool_threads() == threads, "pool_set_threads(%d)", threads);
    for (int n_tasks : {0, 1, 5, 100}) {
      std::vector<std::atomic<int>> runs((size_t)n_tasks + 1);
      std::atomic<int> bad_thread{0};
      wina::pool_run(n_tasks, [&](int task, int thread) {
        runs[(size_t)task]++;
        if (thread < 0 || thread >= threads) bad_thread++;
      });
      bool ok = bad_thread == 0;
      for (int t = 0; t < n_tasks; t++) ok = ok && runs[(size_t)t] == 1;
      check(ok, "pool_run threads=%d tasks=%d: every task once", threads, n_tasks);
    }
    std::atomic<int> inner{0};
    wina::pool_run(4, [&](int, int) { wina::pool_run(3, [&](int, int) { inner++; }); });
    check(inner == 12, "nested pool_run runs inline (threads=%d)", threads);
  }
  // Many short runs back to back, from two caller threads at once: every task of every run must
  // run exactly once (late-waking workers must never run a task of a finished run).
  wina::pool_set_threads(3);
  std::atomic<int> wrong{0};
  auto hammer = [&](int seed) {
    std::mt19937 local((unsigned)seed);
    for (int run = 0; run < 3000; run++) {
      int n_tasks = 1 + (int)(local() % 7);
      std::vector<std::atomic<int>> runs((size_t)n_tasks);
      int spin = (int)(local() % 200);
      wina::pool_run(n_tasks, [&](int task, int) {
        for (volatile int i = 0; i < spin; i = i + 1) {
        }
        runs[(size_t)task]++;
      });
      for (int t = 0; t < n_tasks; t++)
        if (runs[(size_t)t] != 1) wrong++;
    }
  };
  std::thread other(hammer, 1);
  hammer(2);
  other.join();
  check(wrong == 0, "6000 back-to-back runs from two callers: every task exactly once (%d wrong)", wrong.load());
  wina::pool_set_threads(0);
  check(wina::pool_threads() >= 1, "pool_set_threads(0) picks the machine's cores");
}

static void test_aligned_alloc() {
  for (size_t bytes : {(size_t)1, (size_t)1000, (size_t)(5u << 20)}) {
    unsigned char *p = (unsigned char *)wina::aligned_alloc64(bytes);
    bool ok = p && ((uintptr_t)p % 64) == 0;
    for (size_t i = 0; ok && i < bytes; i += 4093) ok = p[i] == 0;
    if (ok) memset(p, 0xab, bytes);
    wina::aligned_free64(p);
    check(ok, "aligned_alloc64(%zu): 64-byte aligned and zeroed", bytes);
  }
}

// Each threaded layer against the same kernels run on one thread, for 1, 2 and 3 threads, on
// shapes large enough to be split.
static void test_linear() {
  const wina_kernels *k = wina::K();
  for (int dtype : kDtypes) {
    int64_t n_in = 600, out = 1030;
    Weights w(dtype, n_in, out, out + 2);
    wina::Matrix m;
    m.dtype = dtype;
    m.data = w.data();
    m.n_in = n_in;
    m.out = out;
    m.ld = out + 2;
    std::vector<float> x = random_vector(n_in);
    std::vector<int32_t> idx;
    for (int64_t i = 0; i < n_in; i++)
      if (rng() % 3) idx.push_back((int32_t)i);
    int64_t nidx = (int64_t)idx.size();
    std::vector<double> mag_all((size_t)out), mag_sel((size_t)out);
    for (int64_t o = 0; o < out; o++)
      for (int64_t i = 0; i < n_in; i++) mag_all[(size_t)o] += fabs(x[(size_t)i] * w.at(i, o));
    for (int64_t o = 0; o < out; o++)
      for (int32_t i : idx) mag_sel[(size_t)o] += fabs(x[(size_t)i] * w.at(i, o));
    std::vector<float> ref_dense((size_t)out, 0.0f), ref_sparse((size_t)out, 0.0f);
    k->gemv_dense(dtype, m.data, m.ld, out, x.data(), 0, n_in, ref_dense.data());
    k->gemv_sparse(dtype, m.data, m.ld, out, x.data(), idx.data(), nidx, ref_sparse.data());

    // Column sub-range of the fused matrix, and the group form with one dense member.
    wina::Matrix right = wina::matrix_cols(m, 500, out - 500);
    for (int threads : {1, 2, 3}) {
      wina::pool_set_threads(threads);
      std::vector<float> y((size_t)out + 1, kSentinel);
      wina::linear_dense(m, x.data(), y.data());
      check(first_mismatch(y.data(), ref_dense.data(), mag_all, 2 * n_in, out) < 0 && y[(size_t)out] == kSentinel,
            "linear_dense %s threads=%d", dtype_name(dtype), threads);
      std::fill(y.begin(), y.end(), kSentinel);
      wina::linear_sparse(m, x.data(), idx.data(), nidx, y.data());
      check(first_mismatch(y.data(), ref_sparse.data(), mag_sel, 2 * n_in, out) < 0 && y[(size_t)out] == kSentinel,
            "linear_sparse %s threads=%d", dtype_name(dtype), threads);
      std::fill(y.begin(), y.end(), kSentinel);
      wina::linear_sparse(m, x.data(), idx.data(), 0, y.data());
      check(std::all_of(y.begin(), y.end() - 1, [](float v) { return v == 0.0f; }),
            "linear_sparse with no rows gives zeros (%s threads=%d)", dtype_name(dtype), threads);

      wina::Matrix group[3] = {m, right, m};
      const int32_t *group_idx[3] = {idx.data(), nullptr, idx.data()};
      int64_t group_n[3] = {nidx, 0, 7};
      std::vector<float> y0((size_t)out, kSentinel), y1((size_t)(out - 500), kSentinel), y2((size_t)out);
      float *ys[3] = {y0.data(), y1.data(), y2.data()};
      wina::linear_sparse_group(3, group, x.data(), group_idx, group_n, ys);
      std::vector<float> ref2((size_t)out, 0.0f);
      std::vector<double> mag2((size_t)out);
      k->gemv_sparse(dtype, m.data, m.ld, out, x.data(), idx.data(), 7, ref2.data());
      for (int64_t o = 0; o < out; o++)
        for (int j = 0; j < 7; j++) mag2[(size_t)o] += fabs(x[(size_t)idx[(size_t)j]] * w.at(idx[(size_t)j], o));
      std::vector<double> mag_right(mag_all.begin() + 500, mag_all.end());
      bool ok = first_mismatch(y0.data(), ref_sparse.data(), mag_sel, 2 * n_in, out) < 0 &&
                first_mismatch(y1.data(), ref_dense.data() + 500, mag_right, 2 * n_in, out - 500) < 0 &&
                first_mismatch(y2.data(), ref2.data(), mag2, 2 * n_in, out) < 0;
      check(ok, "linear_sparse_group %s threads=%d", dtype_name(dtype), threads);

      int64_t T = 9;
      std::vector<float> X = random_vector(T * n_in), Y((size_t)(T * out), kSentinel), Y_ref((size_t)(T * out));
      k->gemm(dtype, m.data, m.ld, n_in, 0, out, X.data(), n_in, T, Y_ref.data(), out);
      wina::linear_gemm(m, X.data(), n_in, T, Y.data(), out);
      ok = true;
      for (int64_t t = 0; t < T && ok; t++) {
        std::vector<double> mag((size_t)out);
        for (int64_t o = 0; o < out; o++)
          for (int64_t i = 0; i < n_in; i++) mag[(size_t)o] += fabs(X[(size_t)(t * n_in + i)] * w.at(i, o));
        ok = first_mismatch(Y.data() + t * out, Y_ref.data() + t * out, mag, 2 * n_in, out) < 0;
      }
      check(ok, "linear_gemm %s threads=%d", dtype_name(dtype), threads);

      // Row-major: the same weights read as [n_in rows][out cols].
      std::vector<float> xr = random_vector(out), yr((size_t)n_in + 1, kSentinel), yr_ref((size_t)n_in);
      k->gemv_rows(dtype, m.data, m.ld, out, xr.data(), 0, n_in, yr_ref.data());
      wina::rows_gemv(dtype, m.data, m.ld, n_in, out, xr.data(), yr.data());
      ok = yr[(size_t)n_in] == kSentinel;
      for (int64_t r = 0; r < n_in && ok; r++) ok = yr[(size_t)r] == yr_ref[(size_t)r];
      check(ok, "rows_gemv %s threads=%d (rows are never split: identical)", dtype_name(dtype), threads);
    }
  }
  wina::pool_set_threads(0);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--print-active-isa") == 0) {
    printf("%s %s\n", wina_kernels_active()->name, best_isa_name());
    return 0;
  }
  std::string self = "/proc/self/exe";
  if (FILE *f = fopen(self.c_str(), "r")) fclose(f);
  else self = argv[0];
  char resolved[4096];
  if (realpath(self.c_str(), resolved)) self = resolved;

  printf("ISAs: ");
  for (const wina_kernels *k : tables()) printf("%s ", k->name);
  printf("(active %s)\n", wina_kernels_active()->name);

  test_conversions();
  test_dispatch(self);
  for (const wina_kernels *k : tables()) {
    test_col_norms(k);
    test_gating_scores(k);
    test_select_threshold(k);
    test_select_topk(k);
    test_gemv(k, true);
    test_gemv(k, false);
    test_gemm(k);
    test_gemv_rows(k);
    test_helpers(k);
  }
  test_pool();
  test_aligned_alloc();
  test_linear();

  printf("%d passed, %d failed\n", n_passed, n_failed);
  return n_failed == 0 ? 0 : 1;
}
