// Threaded linear layers over the active kernel table (see linear.h for the contract).
//
// Work split, measured on the 2-core Zen4 (bench/bench_kernels.cc, figures in bench/README.md):
// - Sparse and dense decode use split-k: each task takes a contiguous share of the input rows
//   (the selected list, or all inputs) over the full output width, accumulates into a private
//   buffer, and the caller adds the buffers. Rows stay whole (long contiguous runs). For dense,
//   split-k and split-output measured the same within noise on all four bench shapes, f32 and
//   bf16, 2 threads (e.g. 14336->4096 bf16: 3.50 vs 3.51 ms; 4096->14336 f32: 6.77 vs 6.66 ms), so
//   dense takes the sparse path with every row selected. The bench keeps both (`dense_splitout`).
// - Prefill GEMM and the row-major lm_head split the outputs (no reduction needed).
// Compiled without -m flags: SIMD only happens inside the kernel tables.
#include "linear.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <new>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define WINA_HAVE_MMAP 1
#endif

namespace wina {

namespace {

// ---- thread pool --------------------------------------------------------------------------------

// How long an idle worker spins before sleeping on the condition variable. A decode step issues a
// pool run every few tens of microseconds, so workers stay hot during generation and go to sleep
// shortly after it; waking a sleeping worker costs tens of microseconds on a VM.
constexpr std::chrono::microseconds kSpin(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until pred() holds or kSpin has passed; returns pred().
template <typename Pred>
bool spin_until(Pred pred) {
  auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 16; i++) {
      if (pred()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start > kSpin) return pred();
  }
}

// Physical cores this process may run on (SMT siblings counted once): the memory-bound kernels
// gain nothing from a second hyperthread and each extra thread adds a reduction buffer.
int cores_available() {
  int logical = (int)std::thread::hardware_concurrency();
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    logical = CPU_COUNT(&set);
    std::set<std::pair<int, int>> cores;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
      if (!CPU_ISSET(cpu, &set)) continue;
      char path[128];
      int package = -1, core = -1;
      snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
      if (FILE *f = fopen(path, "r")) {
        if (fscanf(f, "%d", &package) != 1) package = -1;
        fclose(f);
      }
      snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
      if (FILE *f = fopen(path, "r")) {
        if (fscanf(f, "%d", &core) != 1) core = -1;
        fclose(f);
      }
      if (core < 0) return logical > 0 ? logical : 1;  // no topology: count logical CPUs
      cores.insert({package, core});
    }
    if (!cores.empty()) return (int)cores.size();
  }
#endif
  return logical > 0 ? logical : 1;
}

thread_local bool in_pool_task = false;

// The current job is one 64-bit ticket: generation (20 bits) | task count (22) | next task (22).
// A thread claims a task by compare-and-swap on the whole ticket, so a thread that wakes late can
// only ever claim a task of the job that is current at that moment, and the job's function stays
// valid until every claimed task has finished (the caller waits for them). Idle workers are never
// waited for: when the caller finishes all tasks itself (a worker descheduled on a busy machine),
// the run ends without it.
constexpr int kTaskBits = 22;
constexpr uint64_t kTaskMask = (1ull << kTaskBits) - 1;

inline uint64_t ticket_make(uint64_t generation, uint64_t n_tasks, uint64_t next) {
  return (generation << (2 * kTaskBits)) | (n_tasks << kTaskBits) | next;
}
inline int ticket_tasks(uint64_t t) { return (int)((t >> kTaskBits) & kTaskMask); }
inline int ticket_next(uint64_t t) { return (int)(t & kTaskMask); }
inline bool ticket_has_work(uint64_t t) { return ticket_next(t) < ticket_tasks(t); }

class Pool {
 public:
  ~Pool() { stop(); }

  int threads() {
    std::lock_guard<std::mutex> lock(run_mutex_);
    return configured();
  }

  void set_threads(int n) {
    std::lock_guard<std::mutex> lock(run_mutex_);
    threads_ = n > 0 ? n : 0;
    if (started_ && (int)workers_.size() != configured() - 1) stop();
  }

  void run(int n_tasks, const std::function<void(int, int)> &fn) {
    if (n_tasks <= 0) return;
    if (in_pool_task) {  // nested call from inside a task: run inline rather than deadlock
      for (int t = 0; t < n_tasks; t++) fn(t, 0);
      return;
    }
    std::lock_guard<std::mutex> lock(run_mutex_);
    if (!started_) start();
    if (workers_.empty() || n_tasks == 1 || (uint64_t)n_tasks > kTaskMask) {
      in_pool_task = true;
      for (int t = 0; t < n_tasks; t++) fn(t, 0);
      in_pool_task = false;
      return;
    }
    fn_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    generation_++;
    ticket_.store(ticket_make(generation_ & 0xfffff, (uint64_t)n_tasks, 0));  // publishes fn_
    if (sleepers_.load() > 0) {
      { std::lock_guard<std::mutex> sleep_lock(sleep_mutex_); }
      wake_.notify_all();
    }
    work(0);
    if (!spin_until([this, n_tasks] { return done_.load(std::memory_order_acquire) == n_tasks; })) {
      std::unique_lock<std::mutex> sleep_lock(sleep_mutex_);
      caller_sleeping_.store(true);
      done_cv_.wait(sleep_lock, [this, n_tasks] { return done_.load() == n_tasks; });
      caller_sleeping_.store(false);
    }
  }

 private:
  int configured() const {
    static const int cores = cores_available();
    return threads_ > 0 ? threads_ : cores;
  }

  void start() {
    stopping_.store(false);
    for (int id = 1; id < configured(); id++) workers_.emplace_back([this, id] { worker(id); });
    started_ = true;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> sleep_lock(sleep_mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (std::thread &t : workers_) t.join();
    workers_.clear();
    started_ = false;
  }

  // Claims and runs tasks of the current job until none are left.
  void work(int thread) {
    in_pool_task = true;
    uint64_t t = ticket_.load(std::memory_order_acquire);
    while (ticket_has_work(t)) {
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;  // t now holds the current ticket
      (*fn_)(ticket_next(t), thread);
      int done = done_.fetch_add(1) + 1;
      if (done == ticket_tasks(t) && caller_sleeping_.load()) {
        { std::lock_guard<std::mutex> sleep_lock(sleep_mutex_); }
        done_cv_.notify_one();
      }
      t = ticket_.load(std::memory_order_acquire);
    }
    in_pool_task = false;
  }

  void worker(int id) {
    auto ready = [this] { return stopping_.load() || ticket_has_work(ticket_.load(std::memory_order_acquire)); };
    for (;;) {
      if (!spin_until(ready)) {
        std::unique_lock<std::mutex> sleep_lock(sleep_mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(sleep_lock, ready);
        sleepers_.fetch_sub(1);
      }
      if (stopping_.load()) return;
      work(id);
    }
  }

  std::mutex run_mutex_;    // one run (or reconfiguration) at a time
  std::mutex sleep_mutex_;  // guards the sleeps on wake_ and done_cv_
  std::condition_variable wake_, done_cv_;
  std::vector<std::thread> workers_;
  int threads_ = 0;  // 0: the machine's cores
  bool started_ = false;
  uint64_t generation_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false};
  const std::function<void(int, int)> *fn_ = nullptr;
};

Pool &pool() {
  static Pool p;
  return p;
}

// ---- work planning ------------------------------------------------------------------------------

// Below this much work per task, waking another thread costs more than it saves: 256 KiB of
// weights stream in ~8 us at one core's bandwidth, 4 MFLOP of prefill take ~40 us at one core's
// FMA rate, and a pool run costs ~1-3 us.
constexpr int64_t kMinTaskBytes = 256 << 10;
constexpr int64_t kMinTaskFlops = 4 << 20;

// A contiguous range of rows [j0, j1) of one matrix's row list, computed by one task into dst.
struct Segment {
  int task;
  int m;
  int64_t j0, j1;
  float *dst;  // y[m] for the segment that starts at row 0, else a private partial buffer
};

struct Scratch {
  float *data = nullptr;
  size_t floats = 0;
  float *get(size_t n) {
    if (n > floats) {
      aligned_free64(data);
      data = (float *)aligned_alloc64(n * sizeof(float));
      floats = data ? n : 0;
      if (!data) throw std::bad_alloc();
    }
    return data;
  }
  ~Scratch() { aligned_free64(data); }
};

// A (matrix, row) position in the concatenated row lists of a group.
struct Position {
  int m;
  int64_t j;
};

// The plan and scratch below are reused by every linear_* call (no allocation per call once
// grown), hence one call at a time.
std::mutex linear_mutex;
Scratch partials;
std::vector<Segment> segments;
std::vector<int64_t> group_rows, group_row_bytes;
std::vector<Position> cut;

// Tasks for `work` units when a task should get at least `min_work` of them.
int tasks_for(int64_t work, int64_t min_work, int64_t max_tasks) {
  int64_t tasks = work / min_work;
  if (tasks > pool_threads()) tasks = pool_threads();
  if (tasks > max_tasks) tasks = max_tasks;
  return tasks < 1 ? 1 : (int)tasks;
}

int64_t round_down8(int64_t v) { return v & ~(int64_t)7; }

}  // namespace

// ---- public: pool -------------------------------------------------------------------------------

void pool_set_threads(int n) { pool().set_threads(n); }
int pool_threads() { return pool().threads(); }
void pool_run(int n_tasks, const std::function<void(int task, int thread)> &fn) { pool().run(n_tasks, fn); }

// ---- public: aligned memory ---------------------------------------------------------------------

// Every block carries a 64-byte header just below the returned pointer saying how to free it.
// Blocks of 4 MiB and more come straight from mmap, 2 MiB-aligned and marked MADV_HUGEPAGE before
// first touch so weights stream through huge pages (fewer TLB misses on the decode path).
namespace {
struct BlockHeader {
  void *base;
  size_t mapped;  // 0: from calloc
};
constexpr size_t kHugeAlign = 2u << 20;
constexpr size_t kHugeMin = 4u << 20;
}  // namespace

void *aligned_alloc64(size_t bytes) {
#if WINA_HAVE_MMAP
  if (bytes >= kHugeMin) {
    size_t mapped = bytes + kHugeAlign + 64;
    void *base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    uintptr_t p = ((uintptr_t)base + 64 + kHugeAlign - 1) & ~(uintptr_t)(kHugeAlign - 1);
#if defined(MADV_HUGEPAGE)
    madvise((void *)p, bytes, MADV_HUGEPAGE);
#endif
    BlockHeader *h = (BlockHeader *)(p - 64);
    h->base = base;
    h->mapped = mapped;
    return (void *)p;  // anonymous mappings are zero-filled
  }
#endif
  void *base = calloc(1, bytes + 128);
  if (!base) return nullptr;
  uintptr_t p = ((uintptr_t)base + 64 + 63) & ~(uintptr_t)63;
  BlockHeader *h = (BlockHeader *)(p - 64);
  h->base = base;
  h->mapped = 0;
  return (void *)p;
}

void aligned_free64(void *p) {
  if (!p) return;
  BlockHeader *h = (BlockHeader *)((uintptr_t)p - 64);
#if WINA_HAVE_MMAP
  if (h->mapped) {
    munmap(h->base, h->mapped);
    return;
  }
#endif
  free(h->base);
}

// ---- public: matrices ---------------------------------------------------------------------------

size_t dtype_size(int dtype) { return dtype == WINA_F32 ? 4 : 2; }

Matrix matrix_cols(const Matrix &m, int64_t col0, int64_t width) {
  Matrix sub = m;
  sub.data = (const char *)m.data + (size_t)col0 * dtype_size(m.dtype);
  sub.out = width;
  return sub;
}

const wina_kernels *K() { return wina_kernels_active(); }

// Split-k over the concatenated row lists of n matrices: task p gets the p-th equal share of the
// weight bytes, cut at multiples of 8 rows (the kernels' pass width) inside a matrix.
void linear_sparse_group(int n, const Matrix *w, const float *x, const int32_t *const *idx,
                         const int64_t *nidx, float *const *y) {
  std::lock_guard<std::mutex> lock(linear_mutex);
  group_rows.resize((size_t)n);
  group_row_bytes.resize((size_t)n);
  int64_t total = 0;
  for (int m = 0; m < n; m++) {
    group_rows[m] = idx && idx[m] ? nidx[m] : w[m].n_in;
    group_row_bytes[m] = w[m].out * (int64_t)dtype_size(w[m].dtype);
    total += group_rows[m] * group_row_bytes[m];
    if (group_rows[m] == 0) memset(y[m], 0, (size_t)w[m].out * sizeof(float));
  }
  int tasks = tasks_for(total, kMinTaskBytes, 64);

  // Task boundaries as (matrix, row) positions; task t runs from cut[t] up to cut[t + 1].
  cut.resize((size_t)tasks + 1);
  cut[0] = {0, 0};
  cut[tasks] = {n, 0};
  for (int b = 1; b < tasks; b++) {
    int64_t target = total * b / tasks, start = 0;
    int m = 0;
    while (start + group_rows[m] * group_row_bytes[m] <= target) {
      start += group_rows[m] * group_row_bytes[m];
      m++;
    }
    cut[b] = {m, round_down8((target - start) / group_row_bytes[m])};
    if (cut[b].m == cut[b - 1].m && cut[b].j < cut[b - 1].j) cut[b].j = cut[b - 1].j;
  }
  segments.clear();
  size_t partial_floats = 0;
  for (int t = 0; t < tasks; t++) {
    for (int m = cut[t].m; m < n && m <= cut[t + 1].m; m++) {
      int64_t j0 = m == cut[t].m ? cut[t].j : 0;
      int64_t j1 = m == cut[t + 1].m ? cut[t + 1].j : group_rows[m];
      if (j1 <= j0) continue;
      segments.push_back({t, m, j0, j1, nullptr});
      if (j0 > 0) partial_floats += (size_t)((w[m].out + 15) & ~15);
    }
  }
  float *part = partials.get(partial_floats);
  for (Segment &s : segments) {
    if (s.j0 == 0) {
      s.dst = y[s.m];
    } else {
      s.dst = part;
      part += (w[s.m].out + 15) & ~15;
    }
  }

  const wina_kernels *k = K();
  pool_run(tasks, [&](int t, int) {
    for (const Segment &s : segments) {
      if (s.task != t) continue;
      const Matrix &mat = w[s.m];
      memset(s.dst, 0, (size_t)mat.out * sizeof(float));
      if (idx && idx[s.m])
        k->gemv_sparse(mat.dtype, mat.data, mat.ld, mat.out, x, idx[s.m] + s.j0, s.j1 - s.j0, s.dst);
      else
        k->gemv_dense(mat.dtype, mat.data, mat.ld, mat.out, x, s.j0, s.j1, s.dst);
    }
  });
  for (const Segment &s : segments)
    if (s.j0 > 0) k->add_f32(y[s.m], s.dst, w[s.m].out);
}

void linear_sparse(const Matrix &w, const float *x, const int32_t *idx, int64_t nidx, float *y) {
  const int32_t *idx_list[1] = {idx};
  float *y_list[1] = {y};
  linear_sparse_group(1, &w, x, idx_list, &nidx, y_list);
}

void linear_dense(const Matrix &w, const float *x, float *y) {
  float *y_list[1] = {y};
  linear_sparse_group(1, &w, x, nullptr, nullptr, y_list);
}

// Prefill: tasks own contiguous blocks of 64 output columns (the AVX-512 tile width).
void linear_gemm(const Matrix &w, const float *x, int64_t ldx, int64_t T, float *y, int64_t ldy) {
  if (T <= 0) return;
  if (T == 1) {
    linear_dense(w, x, y);
    return;
  }
  int64_t blocks = (w.out + 63) / 64;
  int tasks = tasks_for(2 * T * w.n_in * w.out, kMinTaskFlops, blocks);
  const wina_kernels *k = K();
  pool_run(tasks, [&](int t, int) {
    int64_t o0 = blocks * t / tasks * 64, o1 = blocks * (t + 1) / tasks * 64;
    if (o1 > w.out) o1 = w.out;
    k->gemm(w.dtype, w.data, w.ld, w.n_in, o0, o1, x, ldx, T, y, ldy);
  });
}

// Row-major: tasks own contiguous blocks of 16 rows.
void rows_gemv(int dtype, const void *w, int64_t ld, int64_t rows, int64_t cols, const float *x,
               float *y) {
  int64_t blocks = (rows + 15) / 16;
  int tasks = tasks_for(rows * cols * (int64_t)dtype_size(dtype), kMinTaskBytes, blocks);
  const wina_kernels *k = K();
  pool_run(tasks, [&](int t, int) {
    int64_t r0 = blocks * t / tasks * 16, r1 = blocks * (t + 1) / tasks * 16;
    if (r1 > rows) r1 = rows;
    k->gemv_rows(dtype, w, ld, cols, x, r0, r1, y);
  });
}

}  // namespace wina
