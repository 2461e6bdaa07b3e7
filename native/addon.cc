// The N-API surface of wina: a thin mirror of the C API in kernels.h / linear.h / model.h.
// Argument checks with named arguments and defaults live in TypeScript (lib/native.ts); this file
// re-checks sizes cheaply so that nothing out of range can ever reach a kernel, and converts errors
// into TypeError / RangeError / Error. Long calls have *Async forms that run on a libuv worker,
// which then drives the addon's own thread pool (never the JS thread).
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "linear.h"
#include "model.h"

namespace {

using namespace wina;

// ============================================================================================
// Argument helpers
// ============================================================================================

struct View {
  void *data = nullptr;
  size_t bytes = 0;
  size_t length = 0;  // elements
  napi_typedarray_type type = napi_uint8_array;
};

[[noreturn]] void throw_type(Napi::Env env, const std::string &msg) {
  throw Napi::TypeError::New(env, msg);
}
[[noreturn]] void throw_range(Napi::Env env, const std::string &msg) {
  throw Napi::RangeError::New(env, msg);
}

View view_of(const Napi::Value &v, const char *name) {
  Napi::Env env = v.Env();
  if (!v.IsTypedArray()) throw_type(env, std::string(name) + " must be a typed array");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = ta.ArrayBuffer();
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  if (detached) throw_type(env, std::string(name) + " is disposed (its memory was released)");
  View out;
  out.data = static_cast<uint8_t *>(ab.Data()) + ta.ByteOffset();
  out.bytes = ta.ByteLength();
  out.length = ta.ElementLength();
  out.type = ta.TypedArrayType();
  return out;
}

View f32_of(const Napi::Value &v, const char *name) {
  View w = view_of(v, name);
  if (w.type != napi_float32_array) throw_type(v.Env(), std::string(name) + " must be a Float32Array");
  return w;
}

View i32_of(const Napi::Value &v, const char *name) {
  View w = view_of(v, name);
  if (w.type != napi_int32_array) throw_type(v.Env(), std::string(name) + " must be an Int32Array");
  return w;
}

int64_t int_of(const Napi::Value &v, const char *name) {
  if (!v.IsNumber()) throw_type(v.Env(), std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d == (double)(int64_t)d)) throw_range(v.Env(), std::string(name) + " must be an integer");
  return (int64_t)d;
}

int dtype_of(const Napi::Value &v) {
  int64_t dt = int_of(v, "dtype");
  if (dt != WINA_F32 && dt != WINA_BF16 && dt != WINA_F16) throw_range(v.Env(), "dtype must be 0 (f32), 1 (bf16) or 2 (f16)");
  return (int)dt;
}

const wina_kernels *table_of(const Napi::Value &v) {
  if (v.IsUndefined() || v.IsNull()) return wina_kernels_active();
  if (!v.IsString()) throw_type(v.Env(), "isa must be a string");
  std::string name = v.As<Napi::String>();
  const wina_kernels *k = wina_kernels_for(name.c_str());
  if (!k) throw_range(v.Env(), "isa '" + name + "' is not supported on this CPU");
  return k;
}

// A weight matrix argument: elements of `dtype` covering n_in rows of ld elements.
const void *weights_of(const Napi::Value &v, int dtype, int64_t ld, int64_t n_in, int64_t out) {
  Napi::Env env = v.Env();
  View w = view_of(v, "weights");
  if (ld < out || out < 0 || n_in < 0) throw_range(env, "ld must be >= out and sizes non-negative");
  size_t need = (size_t)n_in * (size_t)ld * dtype_size(dtype);
  if (w.bytes < need) throw_range(env, "weights: too few bytes for n_in x ld of this dtype");
  return w.data;
}

// A matrix argument as 5 consecutive arguments starting at `at`: dtype, weights, ld, nIn, out.
Matrix matrix_arg(const Napi::CallbackInfo &info, size_t at) {
  Matrix m;
  m.dtype = dtype_of(info[at]);
  m.ld = int_of(info[at + 2], "ld");
  m.n_in = int_of(info[at + 3], "nIn");
  m.out = int_of(info[at + 4], "out");
  m.data = weights_of(info[at + 1], m.dtype, m.ld, m.n_in, m.out);
  return m;
}

// ============================================================================================
// Async plumbing: run a native job on a libuv worker, settle a Promise on the JS thread.
// ============================================================================================

class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, std::function<std::string()> work, std::function<Napi::Value(Napi::Env)> done,
      std::vector<Napi::Value> pins)
      : Napi::AsyncWorker(env, "wina"), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), done_(std::move(done)) {
    // Keep every buffer the job touches alive until it settles.
    for (auto &p : pins)
      if (p.IsObject()) pins_.push_back(Napi::Persistent(p.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    std::string e = work_();
    if (!e.empty()) SetError(e);
  }
  void OnOK() override { deferred_.Resolve(done_ ? done_(Env()) : Env().Undefined()); }
  void OnError(const Napi::Error &e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<std::string()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
  std::vector<Napi::ObjectReference> pins_;
};

Napi::Value run_async(Napi::Env env, std::function<std::string()> work,
                      std::function<Napi::Value(Napi::Env)> done, std::vector<Napi::Value> pins) {
  Job *job = new Job(env, std::move(work), std::move(done), std::move(pins));
  Napi::Promise p = job->promise();
  job->Queue();
  return p;
}

// ============================================================================================
// Runtime and memory
// ============================================================================================

Napi::Value Isa(const Napi::CallbackInfo &info) { return Napi::String::New(info.Env(), wina_kernels_active()->name); }
Napi::Value CpuFeatures(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), wina_cpu_features()); }
Napi::Value SetThreads(const Napi::CallbackInfo &info) {
  pool_set_threads((int)int_of(info[0], "threads"));
  return Napi::Number::New(info.Env(), pool_threads());
}
Napi::Value Threads(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), pool_threads()); }

// 64-byte-aligned native memory as an external ArrayBuffer. The buffer's finalizer owns the
// memory; dispose() detaches the buffer, which releases it without waiting for the GC.
Napi::Value Alloc(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int64_t bytes = int_of(info[0], "bytes");
  if (bytes < 0 || bytes > ((int64_t)1 << 46)) throw_range(env, "bytes out of range");
  size_t n = bytes > 0 ? (size_t)bytes : 64;
  void *p = aligned_alloc64(n);
  if (!p) throw Napi::Error::New(env, "out of memory allocating " + std::to_string(bytes) + " bytes");
  Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)n);
  return Napi::ArrayBuffer::New(env, p, (size_t)bytes, [n](Napi::Env e, void *data) {
    aligned_free64(data);
    Napi::MemoryManagement::AdjustExternalMemory(e, -(int64_t)n);
  });
}

Napi::Value Detach(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw_type(env, "buffer must be an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  if (!detached) ab.Detach();
  return env.Undefined();
}

// ============================================================================================
// Kernels (one ISA's table, single-threaded) — used by tests and the kernel API
// ============================================================================================

Napi::Value ColNorms(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const wina_kernels *k = table_of(info[0]);
  const Matrix m = matrix_arg(info, 1);
  const int dt = m.dtype;
  const int64_t ld = m.ld, n_in = m.n_in, out = m.out;
  const void *w = m.data;
  View c = f32_of(info[6], "norms");
  if ((int64_t)c.length < n_in) throw_range(env, "norms: length must be >= nIn");
  k->col_norms(dt, w, ld, n_in, out, (float *)c.data);
  return env.Undefined();
}

Napi::Value GatingScores(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const wina_kernels *k = table_of(info[0]);
  View x = f32_of(info[1], "x");
  const float *c = nullptr;
  if (!info[2].IsNull() && !info[2].IsUndefined()) {
    View cv = f32_of(info[2], "norms");
    if (cv.length < x.length) throw_range(env, "norms: length must be >= x.length");
    c = (const float *)cv.data;
  }
  View s = f32_of(info[3], "scores");
  if (s.length < x.length) throw_range(env, "scores: length must be >= x.length");
  k->gating_scores((const float *)x.data, c, (int64_t)x.length, (float *)s.data);
  return env.Undefined();
}

Napi::Value SelectThreshold(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const wina_kernels *k = table_of(info[0]);
  View s = f32_of(info[1], "scores");
  if (!info[2].IsNumber()) throw_type(env, "threshold must be a number");
  float t = info[2].As<Napi::Number>().FloatValue();
  View idx = i32_of(info[3], "indices");
  if (idx.length < s.length) throw_range(env, "indices: length must be >= scores.length");
  int64_t n = k->select_threshold((const float *)s.data, (int64_t)s.length, t, (int32_t *)idx.data);
  return Napi::Number::New(env, (double)n);
}

Napi::Value SelectTopk(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const wina_kernels *k = table_of(info[0]);
  View s = f32_of(info[1], "scores");
  int64_t kk = int_of(info[2], "k");
  if (kk < 0 || kk > (int64_t)s.length) throw_range(env, "k must be in [0, scores.length]");
  View idx = i32_of(info[3], "indices");
  if ((int64_t)idx.length < kk) throw_range(env, "indices: length must be >= k");
  std::vector<int32_t> scratch(s.length + 1);
  int64_t n = k->select_topk((const float *)s.data, (int64_t)s.length, kk, (int32_t *)idx.data, scratch.data());
  return Napi::Number::New(env, (double)n);
}

void check_indices(Napi::Env env, const int32_t *idx, int64_t n, int64_t n_in) {
  for (int64_t j = 0; j < n; j++)
    if (idx[j] < 0 || idx[j] >= n_in) throw_range(env, "indices[" + std::to_string(j) + "] = " + std::to_string(idx[j]) + " is out of range [0, nIn)");
}

// gemvSparse(isa, dtype, w, ld, nIn, out, x, idx, nidx, y): y = sum_j x[idx[j]] * Wt[idx[j], :]
Napi::Value GemvSparse(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const wina_kernels *k = table_of(info[0]);
  const Matrix m = matrix_arg(info, 1);
  const int dt = m.dtype;
  const int64_t ld = m.ld, n_in = m.n_in, out = m.out;
  const void *w = m.data;
  View x = f32_of(info[6], "x");
  View idx = i32_of(info[7], "indices");
  int64_t nidx = int_of(info[8], "count");
  View y = f32_of(info[9], "y");
  if ((int64_t)x.length < n_in) throw_range(env, "x: length must be >= nIn");
  if (nidx < 0 || nidx > (int64_t)idx.length) throw_range(env, "count must be in [0, indices.length]");
  if ((int64_t)y.length < out) throw_range(env, "y: length must be >= out");
  check_indices(env, (const int32_t *)idx.data, nidx, n_in);
  std::fill((float *)y.data, (float *)y.data + out, 0.f);
  k->gemv_sparse(dt, w, ld, out, (const float *)x.data, (const int32_t *)idx.data, nidx, (float *)y.data);
  return env.Undefined();
}

// gemvDense(isa, dtype, w, ld, nIn, out, x, y)
Napi::Value GemvDense(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const wina_kernels *k = table_of(info[0]);
  const Matrix m = matrix_arg(info, 1);
  const int dt = m.dtype;
  const int64_t ld = m.ld, n_in = m.n_in, out = m.out;
  const void *w = m.data;
  View x = f32_of(info[6], "x");
  View y = f32_of(info[7], "y");
  if ((int64_t)x.length < n_in) throw_range(env, "x: length must be >= nIn");
  if ((int64_t)y.length < out) throw_range(env, "y: length must be >= out");
  std::fill((float *)y.data, (float *)y.data + out, 0.f);
  k->gemv_dense(dt, w, ld, out, (const float *)x.data, 0, n_in, (float *)y.data);
  return env.Undefined();
}

// ============================================================================================
// Threaded linear layers (active ISA, the addon's pool); sync and async
// ============================================================================================

struct LinearArgs {
  Matrix w;
  const float *x = nullptr;
  const int32_t *idx = nullptr;
  int64_t nidx = -1;  // -1: dense
  float *y = nullptr;
};

LinearArgs linear_args(const Napi::CallbackInfo &info, bool sparse) {
  Napi::Env env = info.Env();
  LinearArgs a;
  a.w = matrix_arg(info, 0);
  View x = f32_of(info[5], "x");
  if ((int64_t)x.length < a.w.n_in) throw_range(env, "x: length must be >= nIn");
  a.x = (const float *)x.data;
  int yi = 6;
  if (sparse) {
    View idx = i32_of(info[6], "indices");
    a.nidx = int_of(info[7], "count");
    if (a.nidx < 0 || a.nidx > (int64_t)idx.length) throw_range(env, "count must be in [0, indices.length]");
    a.idx = (const int32_t *)idx.data;
    check_indices(env, a.idx, a.nidx, a.w.n_in);
    yi = 8;
  }
  View y = f32_of(info[yi], "y");
  if ((int64_t)y.length < a.w.out) throw_range(env, "y: length must be >= out");
  a.y = (float *)y.data;
  return a;
}

void run_linear(const LinearArgs &a) {
  static const int32_t no_index = 0;  // an empty Int32Array may have no data pointer at all
  if (a.nidx == 0) {
    const int32_t *none = &no_index;
    linear_sparse(a.w, a.x, none, 0, a.y);
  } else if (a.nidx < 0)
    linear_dense(a.w, a.x, a.y);
  else
    linear_sparse(a.w, a.x, a.idx, a.nidx, a.y);
}

Napi::Value LinearDense(const Napi::CallbackInfo &info) {
  LinearArgs a = linear_args(info, false);
  run_linear(a);  // linear.cc serialises concurrent callers
  return info.Env().Undefined();
}
Napi::Value LinearSparse(const Napi::CallbackInfo &info) {
  LinearArgs a = linear_args(info, true);
  run_linear(a);
  return info.Env().Undefined();
}
Napi::Value LinearAsync(const Napi::CallbackInfo &info, bool sparse) {
  LinearArgs a = linear_args(info, sparse);
  std::vector<Napi::Value> pins;
  for (size_t i = 0; i < info.Length(); i++) pins.push_back(info[i]);
  return run_async(info.Env(), [a]() {
    run_linear(a);
    return std::string();
  }, nullptr, pins);
}
Napi::Value LinearDenseAsync(const Napi::CallbackInfo &info) { return LinearAsync(info, false); }
Napi::Value LinearSparseAsync(const Napi::CallbackInfo &info) { return LinearAsync(info, true); }

// ============================================================================================
// Models and sessions
// ============================================================================================

// Handles are JS externals. A model handle stays valid until disposed; sessions keep a JS reference
// to their model (lib/model.ts), and the model is freed only when it has no live session.
struct ModelHandle {
  Model *m = nullptr;
  int sessions = 0;
  int busy = 0;
  bool disposed = false;
};
struct SessionHandle {
  Session *s = nullptr;
  ModelHandle *model = nullptr;
  int busy = 0;
};

void maybe_free_model(ModelHandle *h) {
  if (h->disposed && h->sessions == 0 && h->busy == 0 && h->m) {
    model_free(h->m);
    h->m = nullptr;
  }
}

ModelHandle *model_of(const Napi::Value &v) {
  if (!v.IsExternal()) throw_type(v.Env(), "model handle expected");
  ModelHandle *h = v.As<Napi::External<ModelHandle>>().Data();
  if (!h || h->disposed || !h->m) throw_type(v.Env(), "the model is disposed");
  return h;
}

SessionHandle *session_of(const Napi::Value &v) {
  if (!v.IsExternal()) throw_type(v.Env(), "session handle expected");
  SessionHandle *h = v.As<Napi::External<SessionHandle>>().Data();
  if (!h || !h->s) throw_type(v.Env(), "the session is disposed");
  return h;
}

double num_field(Napi::Object o, const char *name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw_type(o.Env(), std::string("config.") + name + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
bool bool_field(Napi::Object o, const char *name) {
  Napi::Value v = o.Get(name);
  return v.IsBoolean() && v.As<Napi::Boolean>().Value();
}

Napi::Value ModelCreate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw_type(env, "config must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  ModelConfig c;
  c.d = (int)num_field(o, "hiddenSize");
  c.ffn = (int)num_field(o, "intermediateSize");
  c.n_layers = (int)num_field(o, "numLayers");
  c.n_heads = (int)num_field(o, "numHeads");
  c.n_kv = (int)num_field(o, "numKvHeads");
  c.head_dim = (int)num_field(o, "headDim");
  c.vocab = (int)num_field(o, "vocabSize");
  c.eps = (float)num_field(o, "rmsNormEps");
  c.sliding_window = (int)num_field(o, "slidingWindow");
  c.bias = bool_field(o, "attentionBias");
  c.tied = bool_field(o, "tieWordEmbeddings");
  c.shortcuts = bool_field(o, "residualRotations");
  c.dtype = dtype_of(o.Get("dtype"));
  View f = f32_of(o.Get("invFreq"), "config.invFreq");
  c.inv_freq.assign((const float *)f.data, (const float *)f.data + f.length);
  std::string err;
  Model *m = model_create(c, &err);
  if (!m) throw Napi::Error::New(env, err);
  Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)m->weight_bytes);
  ModelHandle *h = new ModelHandle();
  h->m = m;
  size_t bytes = m->weight_bytes;
  return Napi::External<ModelHandle>::New(env, h, [bytes](Napi::Env e, ModelHandle *hh) {
    hh->disposed = true;
    if (hh->m) Napi::MemoryManagement::AdjustExternalMemory(e, -(int64_t)bytes);
    maybe_free_model(hh);
    // Sessions still alive keep the handle; the last one frees it (see session finalizer).
    if (!hh->m && hh->sessions == 0) delete hh;
  });
}

// modelSetTensor(model, kind, layer, data, srcDtype, rows, cols, perm | null, row0 = 0)
Napi::Value ModelSetTensor(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *h = model_of(info[0]);
  if (h->m->finalized) throw Napi::Error::New(env, "the model is already finalized");
  int kind = (int)int_of(info[1], "kind");
  int layer = (int)int_of(info[2], "layer");
  View data = view_of(info[3], "data");
  int sdt = dtype_of(info[4]);
  int64_t rows = int_of(info[5], "rows"), cols = int_of(info[6], "cols");
  if (rows < 0 || cols < 0 || (size_t)(rows * cols) * dtype_size(sdt) > data.bytes)
    throw_range(env, "data: too few bytes for rows x cols of this dtype");
  const int32_t *perm = nullptr;
  if (!info[7].IsNull() && !info[7].IsUndefined()) {
    View p = i32_of(info[7], "perm");
    if ((int64_t)p.length != rows) throw_range(env, "perm: length must equal rows");
    perm = (const int32_t *)p.data;
  }
  int64_t row0 = info[8].IsUndefined() ? 0 : int_of(info[8], "row0");
  std::string err;
  if (!model_set_tensor(h->m, kind, layer, data.data, sdt, rows, cols, perm, row0, &err))
    throw Napi::Error::New(env, err);
  return env.Undefined();
}

Napi::Value ModelFinalize(const Napi::CallbackInfo &info) {
  ModelHandle *h = model_of(info[0]);
  std::string err;
  if (!model_finalize(h->m, &err)) throw Napi::Error::New(info.Env(), err);
  return info.Env().Undefined();
}

Napi::Value ModelInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *h = model_of(info[0]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("weightBytes", Napi::Number::New(env, (double)h->m->weight_bytes));
  o.Set("finalized", Napi::Boolean::New(env, h->m->finalized));
  return o;
}

// modelColumnNorms(model, layer, matId) -> Float32Array (a copy)
Napi::Value ModelColumnNorms(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *h = model_of(info[0]);
  int layer = (int)int_of(info[1], "layer"), id = (int)int_of(info[2], "matrix");
  if (layer < 0 || layer >= h->m->c.n_layers || id < 0 || id >= M_COUNT) throw_range(env, "layer or matrix out of range");
  if (!h->m->finalized) throw Napi::Error::New(env, "the model is not finalized");
  int64_t n = mat_n_in(h->m->c, id);
  Napi::Float32Array out = Napi::Float32Array::New(env, (size_t)n);
  memcpy(out.Data(), h->m->layers[layer].norms[id], sizeof(float) * n);
  return out;
}

Napi::Value ModelDispose(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsExternal()) throw_type(env, "model handle expected");
  ModelHandle *h = info[0].As<Napi::External<ModelHandle>>().Data();
  if (h->disposed) return env.Undefined();
  if (h->busy) throw Napi::Error::New(env, "the model is busy (a forward pass is running)");
  if (h->m) Napi::MemoryManagement::AdjustExternalMemory(env, -(int64_t)h->m->weight_bytes);
  h->disposed = true;
  maybe_free_model(h);
  return env.Undefined();
}

Napi::Value SessionCreate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *mh = model_of(info[0]);
  if (!mh->m->finalized) throw Napi::Error::New(env, "the model is not finalized");
  int64_t ctx = int_of(info[1], "contextLength");
  if (ctx <= 0 || ctx > (1 << 24)) throw_range(env, "contextLength out of range");
  std::string err;
  Session *s = session_create(mh->m, (int)ctx, &err);
  if (!s) throw Napi::Error::New(env, err);
  SessionHandle *h = new SessionHandle();
  h->s = s;
  h->model = mh;
  mh->sessions++;
  return Napi::External<SessionHandle>::New(env, h, [](Napi::Env, SessionHandle *hh) {
    if (hh->s) {
      session_free(hh->s);
      hh->s = nullptr;
      hh->model->sessions--;
      maybe_free_model(hh->model);
    }
    delete hh;
  });
}

Napi::Value SessionDispose(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsExternal()) throw_type(env, "session handle expected");
  SessionHandle *h = info[0].As<Napi::External<SessionHandle>>().Data();
  if (!h->s) return env.Undefined();
  if (h->busy) throw Napi::Error::New(env, "the session is busy (a forward pass is running)");
  session_free(h->s);
  h->s = nullptr;
  h->model->sessions--;
  maybe_free_model(h->model);
  return env.Undefined();
}

Napi::Value SessionPos(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), session_of(info[0])->s->pos);
}

// sessionSetPos(session, pos): rewind (keep the KV cache of the first pos tokens).
Napi::Value SessionSetPos(const Napi::CallbackInfo &info) {
  SessionHandle *h = session_of(info[0]);
  int64_t pos = int_of(info[1], "pos");
  if (pos < 0 || pos > h->s->pos) throw_range(info.Env(), "pos must be in [0, current position]");
  if (h->busy) throw Napi::Error::New(info.Env(), "the session is busy");
  h->s->pos = (int)pos;
  return info.Env().Undefined();
}

// A plan from flat arrays: modes/scores Int32Array(n_layers*7), ks Float64Array, thresholds Float32Array.
bool plan_from(const Napi::CallbackInfo &info, size_t at, const ModelConfig &c, Plan *plan) {
  Napi::Env env = info.Env();
  if (info[at].IsNull() || info[at].IsUndefined()) return false;
  if (!info[at].IsObject()) throw_type(env, "plan must be an object or null");
  Napi::Object o = info[at].As<Napi::Object>();
  View modes = i32_of(o.Get("modes"), "plan.modes");
  View scores = i32_of(o.Get("scores"), "plan.scores");
  View ks = view_of(o.Get("ks"), "plan.ks");
  View th = f32_of(o.Get("thresholds"), "plan.thresholds");
  size_t n = (size_t)c.n_layers * M_COUNT;
  if (ks.type != napi_float64_array) throw_type(env, "plan.ks must be a Float64Array");
  if (modes.length != n || scores.length != n || ks.length != n || th.length != n)
    throw_range(env, "plan arrays must have numLayers * 7 entries");
  plan->m.resize(n);
  for (size_t i = 0; i < n; i++) {
    MatPlan &mp = plan->m[i];
    mp.mode = ((const int32_t *)modes.data)[i];
    mp.score = ((const int32_t *)scores.data)[i];
    mp.k = (int64_t)((const double *)ks.data)[i];
    mp.threshold = ((const float *)th.data)[i];
    int64_t n_in = mat_n_in(c, (int)(i % M_COUNT));
    if (mp.mode < SEL_DENSE || mp.mode > SEL_THRESHOLD || mp.score < SCORE_ABS || mp.score > SCORE_WINA)
      throw_range(env, "plan: invalid mode or score");
    if (mp.mode == SEL_TOPK && (mp.k < 0 || mp.k > n_in)) throw_range(env, "plan: k out of range");
  }
  int64_t prefill = int_of(o.Get("prefill"), "plan.prefill");
  if (prefill < PREFILL_DENSE || prefill > PREFILL_MASK_ALL) throw_range(env, "plan.prefill invalid");
  plan->prefill = (int)prefill;
  return true;
}

Napi::Value SessionSetPlan(const Napi::CallbackInfo &info) {
  SessionHandle *h = session_of(info[0]);
  if (h->busy) throw Napi::Error::New(info.Env(), "the session is busy");
  Plan p;
  if (!plan_from(info, 1, h->model->m->c, &p)) p = Plan();
  h->s->plan = std::move(p);
  return info.Env().Undefined();
}

struct ForwardJob {
  SessionHandle *h;
  std::vector<int32_t> tokens;
  int mode;
  float *logits;
  ForwardStats stats;
};

ForwardJob forward_args(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ForwardJob j;
  j.h = session_of(info[0]);
  if (j.h->busy) throw Napi::Error::New(env, "the session is busy (await the previous call)");
  if (!j.h->model->m || j.h->model->disposed) throw_type(env, "the model is disposed");
  View t = i32_of(info[1], "tokens");
  j.tokens.assign((const int32_t *)t.data, (const int32_t *)t.data + t.length);
  j.mode = (int)int_of(info[2], "logitsMode");
  if (j.mode < LOGITS_NONE || j.mode > LOGITS_ALL) throw_range(env, "logitsMode invalid");
  j.logits = nullptr;
  size_t need = j.mode == LOGITS_NONE ? 0 : (size_t)j.h->model->m->c.vocab * (j.mode == LOGITS_ALL ? t.length : 1);
  if (need) {
    View l = f32_of(info[3], "logits");
    if (l.length < need) throw_range(env, "logits: too short for the requested logits");
    j.logits = (float *)l.data;
  }
  return j;
}

Napi::Value stats_value(Napi::Env env, const ForwardStats &s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("selectedFraction", Napi::Number::New(env, s.selected_fraction));
  o.Set("weightBytes", Napi::Number::New(env, s.weight_bytes));
  return o;
}

Napi::Value Forward(const Napi::CallbackInfo &info) {
  ForwardJob j = forward_args(info);
  std::string err;
  if (!forward(j.h->s, j.tokens.data(), (int)j.tokens.size(), j.mode, j.logits, &j.stats, &err))
    throw Napi::Error::New(info.Env(), err);
  return stats_value(info.Env(), j.stats);
}

Napi::Value ForwardAsync(const Napi::CallbackInfo &info) {
  auto j = std::make_shared<ForwardJob>(forward_args(info));
  j->h->busy++;
  j->h->model->busy++;
  std::vector<Napi::Value> pins;
  for (size_t i = 0; i < info.Length(); i++) pins.push_back(info[i]);
  return run_async(info.Env(), [j]() {
    std::string err;
    forward(j->h->s, j->tokens.data(), (int)j->tokens.size(), j->mode, j->logits, &j->stats, &err);
    return err;
  }, [j](Napi::Env env) {
    j->h->busy--;
    j->h->model->busy--;
    maybe_free_model(j->h->model);
    return stats_value(env, j->stats);
  }, pins);
}

// embed(model, tokens Int32Array, x Float32Array[T*d])
Napi::Value Embed(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *h = model_of(info[0]);
  View t = i32_of(info[1], "tokens");
  View x = f32_of(info[2], "x");
  const ModelConfig &c = h->m->c;
  if (x.length < t.length * (size_t)c.d) throw_range(env, "x: too short");
  for (size_t i = 0; i < t.length; i++) {
    int32_t id = ((const int32_t *)t.data)[i];
    if (id < 0 || id >= c.vocab) throw_range(env, "token id out of range");
  }
  embed_tokens(*h->m, (const int32_t *)t.data, (int)t.length, (float *)x.data);
  return env.Undefined();
}

// layerForward(model, layer, x, T, plan|null, y, captures: Float32Array[4] | null)
Napi::Value LayerForward(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *h = model_of(info[0]);
  const ModelConfig &c = h->m->c;
  int layer = (int)int_of(info[1], "layer");
  View x = f32_of(info[2], "x");
  int64_t T = int_of(info[3], "T");
  if (T <= 0 || x.length < (size_t)T * c.d) throw_range(env, "x: must hold T * hiddenSize floats");
  Plan plan;
  bool has_plan = plan_from(info, 4, c, &plan);
  View y = f32_of(info[5], "y");
  if (y.length < (size_t)T * c.d) throw_range(env, "y: must hold T * hiddenSize floats");
  float *caps[4] = {};
  bool capture = false;
  if (info[6].IsArray()) {
    Napi::Array a = info[6].As<Napi::Array>();
    const int64_t widths[4] = {c.d, (int64_t)c.n_heads * c.head_dim, c.d, c.ffn};
    if (a.Length() != 4) throw_range(env, "captures must have 4 entries");
    for (uint32_t i = 0; i < 4; i++) {
      View v = f32_of(a.Get(i), "captures[i]");
      if (v.length < (size_t)(T * widths[i])) throw_range(env, "captures[" + std::to_string(i) + "] too short");
      caps[i] = (float *)v.data;
    }
    capture = true;
  }
  std::string err;
  if (!layer_forward(h->m, layer, (const float *)x.data, (int)T, has_plan ? &plan : nullptr,
                     (float *)y.data, capture ? caps : nullptr, &err))
    throw Napi::Error::New(env, err);
  return env.Undefined();
}

// headForward(model, x, T, logits)
Napi::Value HeadForward(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  ModelHandle *h = model_of(info[0]);
  const ModelConfig &c = h->m->c;
  View x = f32_of(info[1], "x");
  int64_t T = int_of(info[2], "T");
  View l = f32_of(info[3], "logits");
  if (T <= 0 || x.length < (size_t)T * c.d || l.length < (size_t)T * c.vocab) throw_range(env, "x or logits too short");
  head_forward(h->m, (const float *)x.data, (int)T, (float *)l.data);
  return env.Undefined();
}

// Conversions (tests and writers): f32 <-> bf16/f16 bit patterns, element-wise.
Napi::Value ConvertF32(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  View src = f32_of(info[0], "src");
  int dt = dtype_of(info[1]);
  View dst = view_of(info[2], "dst");
  if (dt == WINA_F32 || dst.type != napi_uint16_array || dst.length < src.length) throw_range(env, "dst must be a Uint16Array as long as src");
  const float *s = (const float *)src.data;
  uint16_t *d = (uint16_t *)dst.data;
  for (size_t i = 0; i < src.length; i++) d[i] = dt == WINA_BF16 ? wina_f32_to_bf16(s[i]) : wina_f32_to_f16(s[i]);
  return env.Undefined();
}

// readBandwidth(bytes, reps) -> GB/s (median of reps): every pool thread sums its share of a large
// buffer. The reference point of the kernel benchmarks ("what fraction of the read bandwidth does a
// GEMV reach"), measured in the same process and run.
Napi::Value ReadBandwidth(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int64_t bytes = int_of(info[0], "bytes"), reps = int_of(info[1], "reps");
  if (bytes < (1 << 20) || bytes > ((int64_t)1 << 36) || reps < 1 || reps > 1000) throw_range(env, "bytes or reps out of range");
  size_t n = (size_t)bytes / sizeof(float);
  float *buf = (float *)aligned_alloc64(n * sizeof(float));
  if (!buf) throw Napi::Error::New(env, "out of memory");
  for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
  std::vector<double> gbps;
  volatile float sink = 0;
  for (int64_t r = 0; r < reps; r++) {
    int tasks = pool_threads();
    std::vector<float> sums((size_t)tasks);
    auto t0 = std::chrono::steady_clock::now();
    pool_run(tasks, [&](int t, int) {
      size_t i0 = n * t / tasks, i1 = n * (t + 1) / tasks;
      float acc[16] = {};
      size_t i = i0;
      for (; i + 16 <= i1; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += buf[i + j];
      for (; i < i1; i++) acc[0] += buf[i];
      float s = 0;
      for (int j = 0; j < 16; j++) s += acc[j];
      sums[t] = s;
    });
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (float v : sums) sink = sink + v;
    gbps.push_back((double)bytes / sec / 1e9);
  }
  aligned_free64(buf);
  std::sort(gbps.begin(), gbps.end());
  return Napi::Number::New(env, gbps[gbps.size() / 2]);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto fn = [&](const char *name, Napi::Function::Callback cb) { exports.Set(name, Napi::Function::New(env, cb, name)); };
  fn("isa", Isa);
  fn("cpuFeatures", CpuFeatures);
  fn("setThreads", SetThreads);
  fn("threads", Threads);
  fn("alloc", Alloc);
  fn("detach", Detach);
  fn("colNorms", ColNorms);
  fn("gatingScores", GatingScores);
  fn("selectThreshold", SelectThreshold);
  fn("selectTopk", SelectTopk);
  fn("gemvSparse", GemvSparse);
  fn("gemvDense", GemvDense);
  fn("linearDense", LinearDense);
  fn("linearSparse", LinearSparse);
  fn("linearDenseAsync", LinearDenseAsync);
  fn("linearSparseAsync", LinearSparseAsync);
  fn("modelCreate", ModelCreate);
  fn("modelSetTensor", ModelSetTensor);
  fn("modelFinalize", ModelFinalize);
  fn("modelInfo", ModelInfo);
  fn("modelColumnNorms", ModelColumnNorms);
  fn("modelDispose", ModelDispose);
  fn("sessionCreate", SessionCreate);
  fn("sessionDispose", SessionDispose);
  fn("sessionPos", SessionPos);
  fn("sessionSetPos", SessionSetPos);
  fn("sessionSetPlan", SessionSetPlan);
  fn("forward", Forward);
  fn("forwardAsync", ForwardAsync);
  fn("embed", Embed);
  fn("layerForward", LayerForward);
  fn("headForward", HeadForward);
  fn("convertF32", ConvertF32);
  fn("readBandwidth", ReadBandwidth);
  return exports;
}

}  // namespace

NODE_API_MODULE(wina, Init)
