// Kernel microbenchmark: dense and input-sparse GEMV through the threaded linear layers, against a
// read-bandwidth measurement taken in the same interleaved rounds, plus the cost of selecting the
// inputs (threshold, exact top-k) relative to the GEMV they feed.
//
//   wina_bench [--json] [--quick] [--threads 1,2] [--rounds N] [--shape IN:OUT] [--dtype f32|bf16|f16]
//
// Method. For each shape x dtype x thread count, every variant (a large-array read, dense
// split-k, dense split-output, sparse at each density) runs once per round, in an order rotated
// every round, and the medians over the rounds are reported: the host is a shared VM whose memory
// bandwidth drifts by up to 2x within minutes, so only figures measured side by side compare.
// Weights are rotated over enough copies that no variant finds its matrix in the 32 MiB L3.
// GB/s counts the weight bytes a call must read (selected rows x out x dtype size).
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <immintrin.h>

#include "kernels.h"
#include "linear.h"

// ---- options and output -------------------------------------------------------------------------

struct Options {
  bool json = false;
  bool quick = false;
  std::vector<int> threads = {1, 2};
  int rounds = 15;
  int64_t only_in = 0, only_out = 0;  // --shape IN:OUT runs just that shape
  int only_dtype = -1;                // --dtype f32|bf16|f16
};

static Options options;

static Options parse(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--json") {
      o.json = true;
    } else if (a == "--quick") {
      o.quick = true;
      o.rounds = 5;
    } else if (a == "--threads" && i + 1 < argc) {
      o.threads.clear();
      for (const char *p = argv[++i]; *p;) {
        o.threads.push_back(atoi(p));
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
      }
    } else if (a == "--rounds" && i + 1 < argc) {
      o.rounds = atoi(argv[++i]);
    } else if (a == "--shape" && i + 1 < argc) {
      const char *v = argv[++i];
      o.only_in = atoll(v);
      const char *colon = strchr(v, ':');
      o.only_out = colon ? atoll(colon + 1) : 0;
    } else if (a == "--dtype" && i + 1 < argc) {
      std::string d = argv[++i];
      o.only_dtype = d == "bf16" ? WINA_BF16 : d == "f16" ? WINA_F16 : WINA_F32;
    } else {
      fprintf(stderr,
              "usage: wina_bench [--json] [--quick] [--threads 1,2] [--rounds N] [--shape IN:OUT]"
              " [--dtype f32|bf16|f16]\n");
      exit(a == "--help" ? 0 : 2);
    }
  }
  if (o.rounds < 3) o.rounds = 3;
  return o;
}

// Text output goes to stdout without --json; with --json stdout carries only JSON lines.
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vfprintf(options.json ? stderr : stdout, fmt, args);
  va_end(args);
}

static double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double best(const std::vector<double> &v) { return *std::min_element(v.begin(), v.end()); }

static const char *dtype_name(int dtype) { return dtype == WINA_BF16 ? "bf16" : dtype == WINA_F16 ? "f16" : "f32"; }

// ---- data ---------------------------------------------------------------------------------------

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rng_next() {  // xorshift64*: fast enough to fill hundreds of MB
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

// Normal floats of magnitude ~2^-7..2^-1 with random sign and mantissa (no subnormals).
static uint32_t random_float_bits() {
  uint32_t r = rng_next();
  return (r & 0x80000000u) | ((120u + (r >> 28) % 6) << 23) | (r & 0x7fffffu);
}

static void *alloc_weights(int dtype, int64_t elements) {
  void *p = wina::aligned_alloc64((size_t)elements * wina::dtype_size(dtype));
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  if (dtype == WINA_F32) {
    uint32_t *w = (uint32_t *)p;
    for (int64_t e = 0; e < elements; e++) w[e] = random_float_bits();
  } else {
    uint16_t *w = (uint16_t *)p;
    for (int64_t e = 0; e < elements; e++) w[e] = (uint16_t)(random_float_bits() >> 16);
  }
  return p;
}

static std::vector<float> random_vector(int64_t n) {
  std::vector<float> v((size_t)n);
  for (float &e : v) {
    uint32_t b = random_float_bits();
    memcpy(&e, &b, 4);
  }
  return v;
}

// ---- read bandwidth -----------------------------------------------------------------------------
// The reference: sum a large array with the widest loads the CPU has, split across the pool's
// threads like the GEMVs. Eight independent accumulators keep the adds off the critical path.

__attribute__((target("avx512f"))) static float read_avx512(const float *p, int64_t n) {
  __m512 s[8];
  for (int u = 0; u < 8; u++) s[u] = _mm512_setzero_ps();
  for (int64_t i = 0; i + 128 <= n; i += 128)
    for (int u = 0; u < 8; u++) s[u] = _mm512_add_ps(s[u], _mm512_load_ps(p + i + 16 * u));
  for (int u = 1; u < 8; u++) s[0] = _mm512_add_ps(s[0], s[u]);
  float out[16];
  _mm512_storeu_ps(out, s[0]);
  return out[0] + out[5] + out[10] + out[15];  // only keeps the loads alive
}

__attribute__((target("avx2"))) static float read_avx2(const float *p, int64_t n) {
  __m256 s[8];
  for (int u = 0; u < 8; u++) s[u] = _mm256_setzero_ps();
  for (int64_t i = 0; i + 64 <= n; i += 64)
    for (int u = 0; u < 8; u++) s[u] = _mm256_add_ps(s[u], _mm256_load_ps(p + i + 8 * u));
  for (int u = 1; u < 8; u++) s[0] = _mm256_add_ps(s[0], s[u]);
  float out[8];
  _mm256_storeu_ps(out, s[0]);
  return out[0] + out[5];  // only keeps the loads alive
}

static float read_scalar(const float *p, int64_t n) {
  float s[8] = {0};
  for (int64_t i = 0; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; u++) s[u] += p[i + u];
  return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

static volatile float sink;

static void read_array(const float *p, int64_t n) {
  int tasks = wina::pool_threads();
  int features = wina_cpu_features();
  wina::pool_run(tasks, [&](int t, int) {
    int64_t i0 = n * t / tasks / 128 * 128, i1 = n * (t + 1) / tasks / 128 * 128;
    float s = (features & 4)   ? read_avx512(p + i0, i1 - i0)
              : (features & 2) ? read_avx2(p + i0, i1 - i0)
                               : read_scalar(p + i0, i1 - i0);
    if (s == 1.2345f) sink = s;
  });
}

// ---- dense split-output (the alternative to linear_dense's split-k) -----------------------------

static void dense_splitout(const wina::Matrix &w, const float *x, float *y) {
  int tasks = wina::pool_threads();
  int64_t blocks = (w.out + 63) / 64;
  const wina_kernels *k = wina::K();
  wina::pool_run(tasks, [&](int t, int) {
    int64_t o0 = blocks * t / tasks * 64, o1 = std::min(w.out, blocks * (t + 1) / tasks * 64);
    if (o1 <= o0) return;
    memset(y + o0, 0, (size_t)(o1 - o0) * sizeof(float));
    wina::Matrix part = wina::matrix_cols(w, o0, o1 - o0);
    k->gemv_dense(w.dtype, part.data, part.ld, part.out, x, 0, w.n_in, y + o0);
  });
}

// ---- one shape x dtype x thread count -----------------------------------------------------------

struct Shape {
  int64_t in, out;
};

static const double kDensities[] = {1.0, 0.75, 0.6, 0.5, 0.35, 0.2};

struct Variant {
  std::string kernel;
  double density;
  int64_t nidx;  // -1: dense
  std::vector<double> ms;
};

static const size_t kFirstSparse = 4;  // bw_read, dense, dense_splitout, rows_gemv, then sparse

struct GroupResult {
  double dense_ms = 0;
  std::vector<double> sparse_ms;  // per density
};

static GroupResult bench_group(Shape shape, int dtype, int threads, const std::vector<void *> &copies,
                               const float *bw_array, int64_t bw_floats) {
  wina::pool_set_threads(threads);
  wina::Matrix m;
  m.dtype = dtype;
  m.n_in = shape.in;
  m.out = shape.out;
  m.ld = shape.out;
  std::vector<float> x = random_vector(shape.in), y((size_t)shape.out);
  std::vector<float> x_rows = random_vector(shape.out), y_rows((size_t)shape.in);

  // Selections: top-k of random scores, the indices a gating step would produce.
  std::vector<std::vector<int32_t>> selections;
  std::vector<Variant> variants;
  variants.push_back({"bw_read", 1.0, -1, {}});
  variants.push_back({"dense", 1.0, -1, {}});
  variants.push_back({"dense_splitout", 1.0, -1, {}});
  variants.push_back({"rows_gemv", 1.0, -1, {}});  // the same bytes read as a row-major [in][out]
  std::vector<float> scores = random_vector(shape.in);
  for (float &s : scores) s = fabsf(s);
  std::vector<int32_t> scratch((size_t)shape.in);
  for (double d : kDensities) {
    std::vector<int32_t> idx((size_t)shape.in);
    int64_t k = (int64_t)llround(d * (double)shape.in);
    int64_t n = wina::K()->select_topk(scores.data(), shape.in, k, idx.data(), scratch.data());
    idx.resize((size_t)n);
    selections.push_back(idx);
    variants.push_back({"sparse", d, n, {}});
  }

  size_t copy = 0;
  int warmup = 2;
  for (int round = 0; round < options.rounds + warmup; round++) {
    for (size_t v = 0; v < variants.size(); v++) {
      Variant &var = variants[(v + (size_t)round) % variants.size()];
      m.data = copies[copy++ % copies.size()];
      double t0 = now_ms();
      if (var.kernel == "bw_read") {
        read_array(bw_array, bw_floats);
      } else if (var.kernel == "dense") {
        wina::linear_dense(m, x.data(), y.data());
      } else if (var.kernel == "dense_splitout") {
        dense_splitout(m, x.data(), y.data());
      } else if (var.kernel == "rows_gemv") {
        wina::rows_gemv(dtype, m.data, shape.out, shape.in, shape.out, x_rows.data(), y_rows.data());
      } else {
        const std::vector<int32_t> &idx = selections[(size_t)(&var - &variants[kFirstSparse])];
        wina::linear_sparse(m, x.data(), idx.data(), (int64_t)idx.size(), y.data());
      }
      double t = now_ms() - t0;
      if (round >= warmup) var.ms.push_back(t);
    }
  }

  double bw_ms = median(variants[0].ms);
  double bw_gbps = (double)bw_floats * 4 / bw_ms / 1e6;
  double dense_ms = median(variants[1].ms);
  size_t es = wina::dtype_size(dtype);
  note("\n%lld->%lld %s, %d thread%s: read bandwidth %.1f GB/s (median; best %.1f, worst %.1f)\n",
       (long long)shape.in, (long long)shape.out, dtype_name(dtype), threads, threads > 1 ? "s" : "", bw_gbps,
       (double)bw_floats * 4 / best(variants[0].ms) / 1e6,
       (double)bw_floats * 4 / *std::max_element(variants[0].ms.begin(), variants[0].ms.end()) / 1e6);
  note("  %-15s %7s %9s %9s %7s %6s %8s %12s\n", "kernel", "density", "ms(med)", "ms(best)", "GB/s", "of bw",
       "speedup", "t/(d*dense)");
  GroupResult result;
  result.dense_ms = dense_ms;
  for (size_t v = 1; v < variants.size(); v++) {
    const Variant &var = variants[v];
    int64_t rows = var.nidx < 0 ? shape.in : var.nidx;
    double ms = median(var.ms), gbps = (double)rows * (double)shape.out * (double)es / ms / 1e6;
    double speedup = dense_ms / ms, vs_linear = ms / (var.density * dense_ms);
    if (var.kernel == "sparse") result.sparse_ms.push_back(ms);
    note("  %-15s %7.2f %9.3f %9.3f %7.1f %5.0f%% %8.2f %12.2f\n", var.kernel.c_str(), var.density, ms,
         best(var.ms), gbps, 100 * gbps / bw_gbps, speedup, vs_linear);
    if (options.json)
      printf("{\"kernel\":\"%s\",\"dtype\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"density\":%.2f,\"threads\":%d,"
             "\"ms\":%.4f,\"ms_best\":%.4f,\"gbps\":%.2f,\"bw_gbps\":%.2f,\"bw_ratio\":%.3f,\"speedup\":%.3f,"
             "\"time_vs_linear\":%.3f,\"isa\":\"%s\"}\n",
             var.kernel.c_str(), dtype_name(dtype), (long long)shape.out, (long long)shape.in, var.density, threads,
             ms, best(var.ms), gbps, bw_gbps, gbps / bw_gbps, speedup, vs_linear, wina::K()->name);
  }
  fflush(stdout);
  return result;
}

// ---- selection cost -----------------------------------------------------------------------------

// Scores for n inputs as a gating step produces them (|x| * column norm), then threshold and exact
// top-k selection at each density, timed one call at a time (single-threaded: selection runs on
// the calling thread before the GEMV). Each figure is compared with the sparse GEMV it feeds.
static void bench_selection(int64_t n, const std::vector<std::pair<std::string, double>> &gemv_ms_by_case) {
  const wina_kernels *k = wina::K();
  std::vector<float> x = random_vector(n), c = random_vector(n), s((size_t)n);
  for (float &v : c) v = fabsf(v);
  std::vector<int32_t> idx((size_t)n), scratch((size_t)n);
  int reps = options.quick ? 51 : 201;

  std::vector<double> score_us;
  for (int r = 0; r < reps; r++) {
    double t0 = now_ms();
    k->gating_scores(x.data(), c.data(), n, s.data());
    score_us.push_back((now_ms() - t0) * 1e3);
  }
  std::vector<float> sorted(s);
  std::sort(sorted.begin(), sorted.end());

  note("\nselection over %lld inputs (%s, 1 thread, median of %d calls): gating scores %.2f us\n", (long long)n,
       k->name, reps, median(score_us));
  note("  %-17s %7s %9s   cost relative to the sparse gemv it feeds\n", "kernel", "density", "us(med)");
  for (double d : kDensities) {
    if (d >= 1.0) continue;
    int64_t kk = (int64_t)llround(d * (double)n);
    float t = sorted[(size_t)(n - kk - 1)];  // threshold that keeps about kk inputs
    std::vector<double> thr_us, topk_us;
    for (int r = 0; r < reps; r++) {  // interleaved
      double t0 = now_ms();
      k->select_threshold(s.data(), n, t, idx.data());
      double t1 = now_ms();
      k->select_topk(s.data(), n, kk, idx.data(), scratch.data());
      double t2 = now_ms();
      thr_us.push_back((t1 - t0) * 1e3);
      topk_us.push_back((t2 - t1) * 1e3);
    }
    for (int which = 0; which < 2; which++) {
      const char *name = which == 0 ? "select_threshold" : "select_topk";
      double us = median(which == 0 ? thr_us : topk_us);
      std::string rel;
      for (const auto &g : gemv_ms_by_case) {
        // g.first = "<dtype>/<threads>/<density>"; use the gemv at this density
        char key[64];
        snprintf(key, sizeof key, "/%.2f", d);
        if (g.first.size() < strlen(key) || g.first.compare(g.first.size() - strlen(key), strlen(key), key) != 0)
          continue;
        char part[96];
        std::string label = g.first.substr(0, g.first.size() - strlen(key));
        snprintf(part, sizeof part, " %s %.2f%%", label.c_str(), 100 * us / (g.second * 1e3));
        rel += part;
        if (options.json) {
          std::string dtype = label.substr(0, label.find('/'));
          int threads = atoi(label.substr(label.find('/') + 1).c_str());
          // gbps / bw_ratio / speedup do not apply to selection (null); cost_ratio = ms / gemv_ms
          printf("{\"kernel\":\"%s\",\"dtype\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"density\":%.2f,\"threads\":%d,"
                 "\"ms\":%.5f,\"gbps\":null,\"bw_ratio\":null,\"speedup\":null,\"gemv_ms\":%.4f,"
                 "\"cost_ratio\":%.4f,\"isa\":\"%s\"}\n",
                 name, dtype.c_str(), 4096LL, (long long)n, d, threads, us / 1e3, g.second, us / (g.second * 1e3),
                 k->name);
        }
      }
      note("  %-17s %7.2f %9.2f  %s\n", name, d, us, rel.c_str());
    }
  }
  fflush(stdout);
}

// ---- prefill GEMM -------------------------------------------------------------------------------

// A prefill chunk of T tokens through linear_gemm against T calls of linear_dense (what decoding
// the chunk token by token would cost), interleaved; GFLOP/s = 2 * T * in * out / time.
static void bench_gemm(Shape shape, int64_t T) {
  note("\nprefill gemm %lld->%lld, %lld tokens (%s)\n", (long long)shape.in, (long long)shape.out, (long long)T,
       wina::K()->name);
  note("  %-6s %7s %9s %9s %8s %8s\n", "dtype", "threads", "ms(med)", "ms(best)", "GFLOP/s", "speedup");
  std::vector<float> x = random_vector(T * shape.in), y((size_t)(T * shape.out));
  for (int dtype : {WINA_F32, WINA_BF16}) {
    void *w = alloc_weights(dtype, shape.in * shape.out);
    wina::Matrix m;
    m.dtype = dtype;
    m.data = w;
    m.n_in = shape.in;
    m.out = shape.out;
    m.ld = shape.out;
    for (int threads : options.threads) {
      wina::pool_set_threads(threads);
      std::vector<double> gemm_ms, gemv_ms;
      int rounds = options.quick ? 3 : 7;
      for (int round = 0; round < rounds + 1; round++) {
        double t0 = now_ms();
        wina::linear_gemm(m, x.data(), shape.in, T, y.data(), shape.out);
        double t1 = now_ms();
        for (int64_t t = 0; t < T; t++) wina::linear_dense(m, x.data() + t * shape.in, y.data() + t * shape.out);
        double t2 = now_ms();
        if (round > 0) {
          gemm_ms.push_back(t1 - t0);
          gemv_ms.push_back(t2 - t1);
        }
      }
      double ms = median(gemm_ms), gflops = 2.0 * (double)T * (double)shape.in * (double)shape.out / ms / 1e6;
      double gbps = (double)shape.in * (double)shape.out * (double)wina::dtype_size(dtype) / ms / 1e6;
      double speedup = median(gemv_ms) / ms;
      note("  %-6s %7d %9.3f %9.3f %8.1f %8.2f\n", dtype_name(dtype), threads, ms, best(gemm_ms), gflops, speedup);
      if (options.json)
        printf("{\"kernel\":\"gemm\",\"dtype\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"density\":1.00,\"threads\":%d,"
               "\"ms\":%.4f,\"gbps\":%.2f,\"bw_ratio\":null,\"speedup\":%.3f,\"tokens\":%lld,\"gflops\":%.1f,"
               "\"isa\":\"%s\"}\n",
               dtype_name(dtype), (long long)shape.out, (long long)shape.in, threads, ms, gbps, speedup, (long long)T,
               gflops, wina::K()->name);
    }
    wina::aligned_free64(w);
  }
  fflush(stdout);
}

// ---- main ---------------------------------------------------------------------------------------

int main(int argc, char **argv) {
  options = parse(argc, argv);
  std::vector<Shape> shapes = {{4096, 4096}, {4096, 14336}, {14336, 4096}, {2048, 8192}};
  if (options.quick) shapes = {{4096, 4096}, {14336, 4096}};
  if (options.only_in > 0 && options.only_out > 0) shapes = {{options.only_in, options.only_out}};
  std::vector<int> dtypes = {WINA_F32, WINA_BF16};
  if (options.only_dtype >= 0) dtypes = {options.only_dtype};
  // Rotating copies: at least this many bytes stream between two uses of one copy.
  const int64_t rotate_bytes = (options.quick ? 96ll : 192ll) << 20;
  const int64_t bw_floats = (options.quick ? 128ll : 512ll) << 18;  // 128 / 512 MiB

  note("wina_bench: kernels %s, %d cores, %d rounds%s\n", wina::K()->name, wina::pool_threads(), options.rounds,
       options.quick ? " (quick)" : "");
  float *bw_array = (float *)alloc_weights(WINA_F32, bw_floats);

  std::vector<std::pair<std::string, double>> feeds;  // gemv times for the selection comparison
  for (Shape shape : shapes)
    for (int dtype : dtypes) {
      int64_t bytes = shape.in * shape.out * (int64_t)wina::dtype_size(dtype);
      int64_t n_copies = std::max<int64_t>(2, (rotate_bytes + bytes - 1) / bytes + 1);
      std::vector<void *> copies;
      for (int64_t i = 0; i < n_copies; i++) copies.push_back(alloc_weights(dtype, shape.in * shape.out));
      for (int threads : options.threads) {
        GroupResult r = bench_group(shape, dtype, threads, copies, bw_array, bw_floats);
        if (shape.in == 14336 && shape.out == 4096)
          for (size_t i = 0; i < r.sparse_ms.size(); i++) {
            char key[64];
            snprintf(key, sizeof key, "%s/%d/%.2f", dtype_name(dtype), threads, kDensities[i]);
            feeds.push_back({key, r.sparse_ms[i]});
          }
      }
      for (void *p : copies) wina::aligned_free64(p);
    }
  if (options.only_in == 0) bench_gemm({4096, 4096}, 64);
  wina::pool_set_threads(0);
  bench_selection(14336, feeds);
  wina::aligned_free64(bw_array);
  return 0;
}
