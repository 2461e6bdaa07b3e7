// The Llama-family forward pass (Llama 2/3, Mistral, Qwen2) over input-major weights.
// Reads top to bottom as the math: RMSNorm -> q/k/v -> RoPE -> grouped-query attention -> o ->
// residual -> RMSNorm -> gate/up -> SwiGLU -> down -> residual, then the final norm and lm_head.
// Every linear goes through project(), which is where input sparsity (WINA / TEAL) happens.
#include "model.h"

#include <math.h>
#include <string.h>

#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace wina {

// ============================================================================================
// Optional profile (WINA_PROFILE=1): wall time per stage of the forward pass, printed at exit.
// ============================================================================================

namespace {
enum Stage { ST_NORM, ST_SELECT, ST_QKV, ST_ATTN, ST_O, ST_GU, ST_DOWN, ST_HEAD, ST_OTHER, ST_COUNT };
const char *kStageNames[ST_COUNT] = {"norm", "select*", "qkv", "attention", "o", "gate_up", "down", "lm_head", "other"};
struct Profile {
  bool on = getenv("WINA_PROFILE") != nullptr;
  double sec[ST_COUNT] = {};
  long calls = 0;
  ~Profile() {
    if (!on || calls == 0) return;
    double total = 0;
    for (double v : sec) total += v;
    fprintf(stderr, "wina profile: %ld forward calls, %.3f s\n", calls, total);
    for (int i = 0; i < ST_COUNT; i++)
      fprintf(stderr, "  %-10s %8.3f s  %5.1f%%\n", kStageNames[i], sec[i], total > 0 ? 100 * sec[i] / total : 0);
  }
} g_profile;
struct Timer {
  int stage;
  std::chrono::steady_clock::time_point t0;
  explicit Timer(int st) : stage(st) {
    if (g_profile.on) t0 = std::chrono::steady_clock::now();
  }
  ~Timer() {
    if (g_profile.on) g_profile.sec[stage] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};
}  // namespace

// ============================================================================================
// Shapes
// ============================================================================================

static int64_t q_dim(const ModelConfig &c) { return (int64_t)c.n_heads * c.head_dim; }
static int64_t kv_dim(const ModelConfig &c) { return (int64_t)c.n_kv * c.head_dim; }

int64_t mat_n_in(const ModelConfig &c, int id) {
  switch (id) {
    case M_O: return q_dim(c);
    case M_DOWN: return c.ffn;
    default: return c.d;
  }
}

// Output columns of a matrix inside its (possibly fused) storage.
static void mat_cols(const ModelConfig &c, int id, int64_t *col0, int64_t *width) {
  int64_t qd = q_dim(c), kvd = kv_dim(c);
  switch (id) {
    case M_Q: *col0 = 0; *width = qd; break;
    // q | v | k: q and v share the |x| score in the published WINA, so they are neighbours and one
    // selection streams their joined rows (see project()).
    case M_V: *col0 = qd; *width = kvd; break;
    case M_K: *col0 = qd + kvd; *width = kvd; break;
    case M_GATE: *col0 = 0; *width = c.ffn; break;
    case M_UP: *col0 = c.ffn; *width = c.ffn; break;
    default: *col0 = 0; *width = c.d; break;  // o, down
  }
}

static const Matrix &storage_of(const Layer &L, int id) {
  switch (id) {
    case M_Q: case M_K: case M_V: return L.qkv;
    case M_GATE: case M_UP: return L.gu;
    case M_O: return L.o;
    default: return L.down;
  }
}

Matrix model_matrix(const Model &m, int layer, int id) {
  int64_t col0, width;
  mat_cols(m.c, id, &col0, &width);
  return matrix_cols(storage_of(m.layers[layer], id), col0, width);
}

// Pad every input row to a multiple of 64 bytes... of the widest dtype: 32 elements keeps each row
// 64-byte aligned for f32 (128 B) and for 16-bit types (64 B).
static int64_t padded_ld(int64_t out) { return (out + 31) / 32 * 32; }

// ============================================================================================
// Element conversion (loading only; the hot loops live in the kernels)
// ============================================================================================

static inline float load_elem(int dt, const void *p, int64_t i) {
  switch (dt) {
    case WINA_F32: return ((const float *)p)[i];
    case WINA_BF16: return wina_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return wina_f16_to_f32(((const uint16_t *)p)[i]);
  }
}

static inline void store_elem(int dt, void *p, int64_t i, float v) {
  switch (dt) {
    case WINA_F32: ((float *)p)[i] = v; break;
    case WINA_BF16: ((uint16_t *)p)[i] = wina_f32_to_bf16(v); break;
    default: ((uint16_t *)p)[i] = wina_f32_to_f16(v); break;
  }
}

// dst[c][col0 + r] = src[perm[r]][c]: the transpose into input-major layout, in 64x64 blocks so both
// sides stay in cache. Same-dtype copies move raw bits (bit-exact, also for NaN payloads).
static void repack_transpose(const void *src, int sdt, int64_t rows, int64_t cols, const int32_t *perm,
                             void *dst, int ddt, int64_t ld, int64_t col0) {
  const int64_t B = 64;
  for (int64_t r0 = 0; r0 < rows; r0 += B) {
    int64_t r1 = std::min(rows, r0 + B);
    for (int64_t c0 = 0; c0 < cols; c0 += B) {
      int64_t c1 = std::min(cols, c0 + B);
      for (int64_t r = r0; r < r1; r++) {
        int64_t sr = perm ? perm[r] : r;
        if (sdt == ddt && sdt != WINA_F32) {
          const uint16_t *s = (const uint16_t *)src + sr * cols;
          uint16_t *d = (uint16_t *)dst;
          for (int64_t c = c0; c < c1; c++) d[c * ld + col0 + r] = s[c];
        } else if (sdt == ddt) {
          const float *s = (const float *)src + sr * cols;
          float *d = (float *)dst;
          for (int64_t c = c0; c < c1; c++) d[c * ld + col0 + r] = s[c];
        } else {
          for (int64_t c = c0; c < c1; c++)
            store_elem(ddt, dst, c * ld + col0 + r, load_elem(sdt, src, sr * cols + c));
        }
      }
    }
  }
}

static void copy_rows(const void *src, int sdt, int64_t n, void *dst, int ddt) {
  if (sdt == ddt) {
    memcpy(dst, src, n * dtype_size(sdt));
    return;
  }
  for (int64_t i = 0; i < n; i++) store_elem(ddt, dst, i, load_elem(sdt, src, i));
}

// ============================================================================================
// Work buffers
// ============================================================================================

namespace {

struct Work {
  std::vector<float> xn, qkv, att, o, gu, h, dn, tmp, masked, scores, logits_row;
  std::vector<int32_t> idx[3];
  std::vector<int32_t> topk_scratch;
  double kept = 0, total = 0;  // selection statistics
  double bytes = 0;            // weight bytes streamed by this forward call
};

void ensure(std::vector<float> &v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

// ============================================================================================
// Model construction
// ============================================================================================

static const char *kind_name(int kind) {
  static const char *names[T_KIND_COUNT] = {
      "embed_tokens", "lm_head", "norm", "input_layernorm", "post_attention_layernorm",
      "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
      "q_proj.bias", "k_proj.bias", "v_proj.bias", "attn_shortcut", "mlp_shortcut"};
  return kind >= 0 && kind < T_KIND_COUNT ? names[kind] : "?";
}

static bool is_global(int kind) { return kind <= T_FINAL_NORM; }

static size_t loaded_slot(int kind, int layer) {
  return is_global(kind) ? (size_t)kind : (size_t)T_KIND_COUNT * (layer + 1) + kind;
}

static void *alloc_owned(Model *m, size_t bytes) {
  void *p = aligned_alloc64(bytes);
  if (p) m->owned.push_back(p);
  return p;
}

static bool alloc_matrix(Model *m, Matrix *mat, int64_t n_in, int64_t out) {
  mat->dtype = m->c.dtype;
  mat->n_in = n_in;
  mat->out = out;
  mat->ld = padded_ld(out);
  size_t bytes = (size_t)n_in * mat->ld * dtype_size(m->c.dtype);
  mat->data = alloc_owned(m, bytes);
  m->weight_bytes += (size_t)n_in * out * dtype_size(m->c.dtype);
  return mat->data != nullptr;
}

static float *alloc_vec(Model *m, int64_t n) { return (float *)alloc_owned(m, n * sizeof(float)); }

Model *model_create(const ModelConfig &c, std::string *err) {
  if (c.d <= 0 || c.ffn <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv <= 0 || c.head_dim <= 0 ||
      c.vocab <= 0 || c.n_heads % c.n_kv != 0 || c.head_dim % 2 != 0 ||
      (int)c.inv_freq.size() != c.head_dim / 2) {
    *err = "invalid model configuration";
    return nullptr;
  }
  if (c.dtype != WINA_F32 && c.dtype != WINA_BF16 && c.dtype != WINA_F16) {
    *err = "invalid weight dtype";
    return nullptr;
  }
  Model *m = new Model();
  m->c = c;
  m->work = new Work();
  m->layers.resize(c.n_layers);
  m->loaded.assign((size_t)T_KIND_COUNT * (c.n_layers + 1), 0);
  bool ok = true;
  size_t es = dtype_size(c.dtype);
  m->embed = alloc_owned(m, (size_t)c.vocab * c.d * es);
  m->weight_bytes += (size_t)c.vocab * c.d * es;
  ok = ok && m->embed;
  if (c.tied) {
    m->lm_head = m->embed;
  } else {
    m->lm_head = alloc_owned(m, (size_t)c.vocab * c.d * es);
    m->weight_bytes += (size_t)c.vocab * c.d * es;
    ok = ok && m->lm_head;
  }
  m->final_norm = alloc_vec(m, c.d);
  ok = ok && m->final_norm;
  int64_t qd = q_dim(c), kvd = kv_dim(c);
  for (int l = 0; l < c.n_layers && ok; l++) {
    Layer &L = m->layers[l];
    ok = alloc_matrix(m, &L.qkv, c.d, qd + 2 * kvd) && alloc_matrix(m, &L.o, qd, c.d) &&
         alloc_matrix(m, &L.gu, c.d, 2 * (int64_t)c.ffn) && alloc_matrix(m, &L.down, c.ffn, c.d);
    if (ok && c.shortcuts)
      ok = alloc_matrix(m, &L.attn_shortcut, c.d, c.d) && alloc_matrix(m, &L.mlp_shortcut, c.d, c.d);
    L.attn_norm = alloc_vec(m, c.d);
    L.ffn_norm = alloc_vec(m, c.d);
    ok = ok && L.attn_norm && L.ffn_norm;
    if (c.bias) {
      L.bq = alloc_vec(m, qd);
      L.bk = alloc_vec(m, kvd);
      L.bv = alloc_vec(m, kvd);
      ok = ok && L.bq && L.bk && L.bv;
    }
    for (int id = 0; id < M_COUNT && ok; id++) ok = (L.norms[id] = alloc_vec(m, mat_n_in(c, id)));
  }
  if (!ok) {
    *err = "out of memory while allocating the model";
    model_free(m);
    return nullptr;
  }
  return m;
}

void model_free(Model *m) {
  if (!m) return;
  delete static_cast<Work *>(m->work);
  for (void *p : m->owned) aligned_free64(p);
  delete m;
}

// Expected [rows, cols] of a tensor kind (PyTorch order; vectors are [n, 1]).
static void tensor_shape(const ModelConfig &c, int kind, int64_t *er, int64_t *ec) {
  int64_t qd = q_dim(c), kvd = kv_dim(c);
  switch (kind) {
    case T_EMBED: case T_LM_HEAD: *er = c.vocab; *ec = c.d; break;
    case T_FINAL_NORM: case T_ATTN_NORM: case T_FFN_NORM: *er = c.d; *ec = 1; break;
    case T_Q: *er = qd; *ec = c.d; break;
    case T_K: case T_V: *er = kvd; *ec = c.d; break;
    case T_O: *er = c.d; *ec = qd; break;
    case T_GATE: case T_UP: *er = c.ffn; *ec = c.d; break;
    case T_DOWN: *er = c.d; *ec = c.ffn; break;
    case T_BQ: *er = qd; *ec = 1; break;
    case T_BK: case T_BV: *er = kvd; *ec = 1; break;
    default: *er = c.d; *ec = c.d; break;  // shortcuts
  }
}

static int64_t tensor_rows(const ModelConfig &c, int kind) {
  int64_t r, cc;
  tensor_shape(c, kind, &r, &cc);
  return r;
}

bool model_set_tensor(Model *m, int kind, int layer, const void *src, int sdt, int64_t rows,
                      int64_t cols, const int32_t *perm, int64_t row0, std::string *err) {
  const ModelConfig &c = m->c;
  if (kind < 0 || kind >= T_KIND_COUNT) {
    *err = "unknown tensor kind";
    return false;
  }
  if (!is_global(kind) && (layer < 0 || layer >= c.n_layers)) {
    *err = std::string(kind_name(kind)) + ": layer " + std::to_string(layer) + " out of range";
    return false;
  }
  int64_t qd = q_dim(c), kvd = kv_dim(c);
  int64_t er = 0, ec = 0;  // expected rows, cols
  tensor_shape(c, kind, &er, &ec);
  if (row0 < 0 || rows < 0 || row0 + rows > er || cols != ec) {
    *err = std::string(kind_name(kind)) + ": expected shape [" + std::to_string(er) + ", " +
           std::to_string(ec) + "], found rows [" + std::to_string(row0) + ", " + std::to_string(row0 + rows) +
           ") of [?, " + std::to_string(cols) + "]";
    return false;
  }
  int64_t &done = m->loaded[loaded_slot(kind, layer)];
  if (row0 != done) {
    *err = std::string(kind_name(kind)) + ": rows must arrive in order and once (expected row " +
           std::to_string(done) + ", got " + std::to_string(row0) + ")";
    return false;
  }
  if (perm && (row0 != 0 || rows != er)) {
    *err = std::string(kind_name(kind)) + ": a row permutation needs the whole tensor at once";
    return false;
  }
  if ((kind == T_BQ || kind == T_BK || kind == T_BV) && !c.bias) {
    *err = std::string(kind_name(kind)) + ": the model has no attention biases";
    return false;
  }
  if ((kind == T_ATTN_SHORTCUT || kind == T_MLP_SHORTCUT) && !c.shortcuts) {
    *err = std::string(kind_name(kind)) + ": the model has no residual rotations";
    return false;
  }
  if (kind == T_LM_HEAD && c.tied) {
    *err = "lm_head: the model ties lm_head to embed_tokens";
    return false;
  }
  if (perm) {
    for (int64_t r = 0; r < rows; r++)
      if (perm[r] < 0 || perm[r] >= rows) {
        *err = std::string(kind_name(kind)) + ": row permutation entry out of range";
        return false;
      }
  }
  Layer *L = is_global(kind) ? nullptr : &m->layers[layer];
  // Rows [row0, row0 + rows): of a vector, its elements; of a linear weight W[out][in], output
  // columns of the input-major storage; of the embedding / lm_head, rows of [vocab][d].
  auto vec = [&](float *dst) { copy_rows(src, sdt, rows, dst + row0, WINA_F32); };
  auto mat = [&](const Matrix &dst, int64_t col0) {
    repack_transpose(src, sdt, rows, cols, perm, (void *)dst.data, dst.dtype, dst.ld, col0 + row0);
  };
  const size_t es = dtype_size(c.dtype);
  switch (kind) {
    case T_EMBED: copy_rows(src, sdt, rows * cols, (char *)m->embed + (size_t)row0 * cols * es, c.dtype); break;
    case T_LM_HEAD: copy_rows(src, sdt, rows * cols, (char *)m->lm_head + (size_t)row0 * cols * es, c.dtype); break;
    case T_FINAL_NORM: vec(m->final_norm); break;
    case T_ATTN_NORM: vec(L->attn_norm); break;
    case T_FFN_NORM: vec(L->ffn_norm); break;
    case T_Q: mat(L->qkv, 0); break;
    case T_K: mat(L->qkv, qd + kvd); break;
    case T_V: mat(L->qkv, qd); break;
    case T_O: mat(L->o, 0); break;
    case T_GATE: mat(L->gu, 0); break;
    case T_UP: mat(L->gu, c.ffn); break;
    case T_DOWN: mat(L->down, 0); break;
    case T_BQ: vec(L->bq); break;
    case T_BK: vec(L->bk); break;
    case T_BV: vec(L->bv); break;
    case T_ATTN_SHORTCUT: mat(L->attn_shortcut, 0); break;
    case T_MLP_SHORTCUT: mat(L->mlp_shortcut, 0); break;
  }
  done += rows;
  return true;
}

bool model_finalize(Model *m, std::string *err) {
  const ModelConfig &c = m->c;
  auto need = [&](int kind, int layer) -> bool {
    int64_t got = m->loaded[loaded_slot(kind, layer)], want = tensor_rows(c, kind);
    if (got == want) return true;
    *err = std::string(got ? "incomplete tensor " : "missing tensor ") + kind_name(kind) +
           (is_global(kind) ? std::string() : " of layer " + std::to_string(layer)) +
           (got ? " (" + std::to_string(got) + " of " + std::to_string(want) + " rows)" : std::string());
    return false;
  };
  if (!need(T_EMBED, 0) || !need(T_FINAL_NORM, 0) || (!c.tied && !need(T_LM_HEAD, 0))) return false;
  for (int l = 0; l < c.n_layers; l++) {
    for (int k = T_ATTN_NORM; k <= T_DOWN; k++)
      if (!need(k, l)) return false;
    if (c.bias && (!need(T_BQ, l) || !need(T_BK, l) || !need(T_BV, l))) return false;
    if (c.shortcuts && (!need(T_ATTN_SHORTCUT, l) || !need(T_MLP_SHORTCUT, l))) return false;
  }
  // Column norms, once, by the native kernel: the WINA score is |x_i| * ||W[:, i]||_2.
  for (int l = 0; l < c.n_layers; l++)
    for (int id = 0; id < M_COUNT; id++) {
      Matrix w = model_matrix(*m, l, id);
      K()->col_norms(w.dtype, w.data, w.ld, w.n_in, w.out, m->layers[l].norms[id]);
    }
  m->finalized = true;
  return true;
}

// ============================================================================================
// Small ops
// ============================================================================================

static void rmsnorm(const float *x, const float *w, int64_t n, float eps, float *out) {
  double ss = 0;
  for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
  float r = (float)(1.0 / std::sqrt(ss / (double)n + eps));
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

// HF "rotate_half" RoPE: pairs (i, i + head_dim/2).
static void rope(float *v, int n_heads, int hd, int pos, const float *inv_freq) {
  int half = hd / 2;
  for (int i = 0; i < half; i++) {
    double a = (double)pos * inv_freq[i];
    float cs = (float)std::cos(a), sn = (float)std::sin(a);
    for (int h = 0; h < n_heads; h++) {
      float *p = v + (int64_t)h * hd;
      float x0 = p[i], x1 = p[i + half];
      p[i] = x0 * cs - x1 * sn;
      p[i + half] = x1 * cs + x0 * sn;
    }
  }
}

static inline float silu(float g) { return g / (1.f + std::exp(-g)); }

// ============================================================================================
// Projections with input sparsity
// ============================================================================================

// Selects the inputs of one matrix for one token: scores s_i = |x_i| (* c_i), then exact top-k or a
// threshold. Returns the count written to idx.
static int64_t select_inputs(const MatPlan &mp, const float *x, int64_t n, const float *norms,
                             Work &w, int32_t *idx) {
  Timer timer(ST_SELECT);
  ensure(w.scores, n);
  if (w.topk_scratch.size() < (size_t)n) w.topk_scratch.resize(n);
  K()->gating_scores(x, mp.score == SCORE_WINA ? norms : nullptr, n, w.scores.data());
  if (mp.mode == SEL_TOPK) {
    int64_t k = std::max<int64_t>(0, std::min<int64_t>(mp.k, n));
    return K()->select_topk(w.scores.data(), n, k, idx, w.topk_scratch.data());
  }
  return K()->select_threshold(w.scores.data(), n, mp.threshold, idx);
}

// True when two matrices sharing one input select identically: both dense, or the same mode and level
// with a score that does not depend on the matrix (|x|; the WINA score uses each matrix's own norms).
static bool same_selection(const MatPlan *a, const MatPlan *b) {
  if (!a || !b) return !a && !b;
  return a->score == SCORE_ABS && b->score == SCORE_ABS && a->mode == b->mode && a->k == b->k &&
         a->threshold == b->threshold;
}

// Y[T][ldy] (columns of each matrix at its offset in the fused storage) = W X for the matrices
// ids[0:n] that share input X[T][n_in] (stored fused when n > 1). Token t is sparsified when a plan
// is given and t >= n_dense. Decode (T == 1) runs sparse GEMVs over the selected inputs only; prefill
// runs GEMMs, masking the inputs numerically (exact: a masked input contributes nothing).
static void project(Model *m, int l, const int *ids, int n, const float *X, int T, float *Y,
                    int64_t ldy, const Plan *plan, int n_dense, Work &w, float *capture) {
  const Layer &L = m->layers[l];
  const ModelConfig &c = m->c;
  int64_t n_in = mat_n_in(c, ids[0]);
  const Matrix &fused = storage_of(L, ids[0]);
  if (capture) memcpy(capture, X, sizeof(float) * n_in * T);
  const MatPlan *mp[3] = {};
  bool any_sparse = false;
  for (int j = 0; j < n; j++) {
    if (plan && !plan->m.empty()) mp[j] = &plan->m[(size_t)l * M_COUNT + ids[j]];
    if (mp[j] && mp[j]->mode == SEL_DENSE) mp[j] = nullptr;
    any_sparse = any_sparse || mp[j];
  }
  if (n_dense >= T) any_sparse = false;

  if (T == 1) {
    const double es = (double)dtype_size(fused.dtype);
    if (!any_sparse) {
      w.bytes += (double)fused.n_in * fused.out * es;
      linear_dense(fused, X, Y);
      return;
    }
    // Neighbouring matrices (ids are in storage order) that select identically are joined: one
    // selection, and each selected input streams their joined columns as one longer run (TEAL's q|v|k,
    // WINA's q|v, gate|up at one level). Dense neighbours join too.
    Matrix subs[3];
    const int32_t *idx[3];
    int64_t nidx[3];
    float *ys[3];
    int g = 0;
    for (int j = 0; j < n; g++) {
      int e = j + 1;
      while (e < n && same_selection(mp[j], mp[e])) e++;
      int64_t col0, width, c0, wj;
      mat_cols(c, ids[j], &col0, &width);
      for (int q = j + 1; q < e; q++) width += (mat_cols(c, ids[q], &c0, &wj), wj);
      subs[g] = matrix_cols(fused, col0, width);
      ys[g] = Y + col0;
      if (mp[j]) {
        if (w.idx[g].size() < (size_t)n_in) w.idx[g].resize(n_in);
        nidx[g] = select_inputs(*mp[j], X, n_in, L.norms[ids[j]], w, w.idx[g].data());
        idx[g] = w.idx[g].data();
        w.kept += (double)nidx[g] * (e - j);
        w.total += (double)n_in * (e - j);
      } else {
        idx[g] = nullptr;
        nidx[g] = n_in;
      }
      w.bytes += (double)nidx[g] * width * es;
      j = e;
    }
    if (g == 1 && idx[0])
      linear_sparse(subs[0], X, idx[0], nidx[0], ys[0]);
    else
      linear_sparse_group(g, subs, X, idx, nidx, ys);
    return;
  }

  w.bytes += (double)fused.n_in * fused.out * dtype_size(fused.dtype);  // a GEMM streams W once
  if (!any_sparse) {
    linear_gemm(fused, X, n_in, T, Y, ldy);
    return;
  }
  ensure(w.masked, (size_t)T * n_in);
  if (w.idx[0].size() < (size_t)n_in) w.idx[0].resize(n_in);
  for (int j = 0; j < n; j++) {
    int64_t col0, width;
    mat_cols(c, ids[j], &col0, &width);
    Matrix sub = matrix_cols(fused, col0, width);
    const float *Xj = X;
    if (mp[j]) {
      float *Xm = w.masked.data();
      for (int t = 0; t < T; t++) {
        const float *xt = X + (int64_t)t * n_in;
        float *mt = Xm + (int64_t)t * n_in;
        if (t < n_dense) {
          memcpy(mt, xt, sizeof(float) * n_in);
          continue;
        }
        int64_t cnt = select_inputs(*mp[j], xt, n_in, L.norms[ids[j]], w, w.idx[0].data());
        memset(mt, 0, sizeof(float) * n_in);
        for (int64_t q = 0; q < cnt; q++) mt[w.idx[0][q]] = xt[w.idx[0][q]];
        w.kept += (double)cnt;
        w.total += (double)n_in;
      }
      Xj = Xm;
    }
    linear_gemm(sub, Xj, n_in, T, Y + col0, ldy);
  }
}

// x[T][d] <- S x + delta  (residual add, through the shortcut rotation of transformed checkpoints)
static void residual_add(const Matrix *shortcut, float *x, const float *delta, int T, int64_t d,
                         Work &w) {
  if (shortcut && shortcut->data) {
    w.bytes += (double)shortcut->n_in * shortcut->out * dtype_size(shortcut->dtype);
    ensure(w.tmp, (size_t)T * d);
    if (T == 1)
      linear_dense(*shortcut, x, w.tmp.data());
    else
      linear_gemm(*shortcut, x, d, T, w.tmp.data(), d);
    memcpy(x, w.tmp.data(), sizeof(float) * T * d);
  }
  for (int64_t i = 0; i < (int64_t)T * d; i++) x[i] += delta[i];
}

// ============================================================================================
// One decoder layer over T tokens at positions pos0..pos0+T-1
// ============================================================================================

static void run_layer(Model *m, int l, float *x, int T, int pos0, float *kc, float *vc,
                      const Plan *plan, int n_dense, Work &w, float *const *capture) {
  const ModelConfig &c = m->c;
  const Layer &L = m->layers[l];
  const int64_t d = c.d, qd = q_dim(c), kvd = kv_dim(c), hd = c.head_dim;
  const int64_t wqkv = qd + 2 * kvd;
  ensure(w.xn, (size_t)T * d);
  ensure(w.qkv, (size_t)T * wqkv);
  ensure(w.att, (size_t)T * qd);
  ensure(w.o, (size_t)T * d);

  // ---- attention ----
  {
    Timer timer(ST_NORM);
    for (int t = 0; t < T; t++) rmsnorm(x + t * d, L.attn_norm, d, c.eps, w.xn.data() + t * d);
  }
  static const int qkv_ids[3] = {M_Q, M_V, M_K};  // storage order
  {
    Timer timer(ST_QKV);
    project(m, l, qkv_ids, 3, w.xn.data(), T, w.qkv.data(), wqkv, plan, n_dense, w,
          capture ? capture[0] : nullptr);
  }
  for (int t = 0; t < T; t++) {
    float *q = w.qkv.data() + t * wqkv, *v = q + qd, *k = v + kvd;  // q | v | k
    if (L.bq) {
      for (int64_t i = 0; i < qd; i++) q[i] += L.bq[i];
      for (int64_t i = 0; i < kvd; i++) k[i] += L.bk[i], v[i] += L.bv[i];
    }
    int pos = pos0 + t;
    rope(q, c.n_heads, c.head_dim, pos, c.inv_freq.data());
    rope(k, c.n_kv, c.head_dim, pos, c.inv_freq.data());
    memcpy(kc + (int64_t)pos * kvd, k, sizeof(float) * kvd);
    memcpy(vc + (int64_t)pos * kvd, v, sizeof(float) * kvd);
  }
  const int group = c.n_heads / c.n_kv;
  const float scale = 1.f / std::sqrt((float)hd);
  const int nthreads = pool_threads();
  const int ctx = pos0 + T;
  ensure(w.scores, (size_t)nthreads * ctx);
  float *att_scores = w.scores.data();
  const wina_kernels *kern = K();
  {
  Timer timer(ST_ATTN);
  pool_run(c.n_heads * T, [&](int task, int thread) {
    int h = task % c.n_heads, t = task / c.n_heads;
    int pos = pos0 + t;
    int start = c.sliding_window > 0 ? std::max(0, pos - c.sliding_window + 1) : 0;
    const float *q = w.qkv.data() + (int64_t)t * wqkv + (int64_t)h * hd;
    const int64_t koff = (int64_t)(h / group) * hd;
    float *s = att_scores + (int64_t)thread * ctx;
    float mx = -INFINITY;
    for (int j = start; j <= pos; j++) {
      s[j] = kern->dot_f32(q, kc + (int64_t)j * kvd + koff, hd) * scale;
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (int j = start; j <= pos; j++) sum += (s[j] = std::exp(s[j] - mx));
    float inv = (float)(1.0 / sum);
    float *out = w.att.data() + (int64_t)t * qd + (int64_t)h * hd;
    memset(out, 0, sizeof(float) * hd);
    for (int j = start; j <= pos; j++) kern->axpy_f32(s[j] * inv, vc + (int64_t)j * kvd + koff, out, hd);
  });
  }
  static const int o_ids[1] = {M_O};
  {
    Timer timer(ST_O);
    project(m, l, o_ids, 1, w.att.data(), T, w.o.data(), d, plan, n_dense, w,
          capture ? capture[1] : nullptr);
  }
  residual_add(c.shortcuts ? &L.attn_shortcut : nullptr, x, w.o.data(), T, d, w);

  // ---- MLP ----
  const int64_t ffn = c.ffn;
  ensure(w.gu, (size_t)T * 2 * ffn);
  ensure(w.h, (size_t)T * ffn);
  {
    Timer timer(ST_NORM);
    for (int t = 0; t < T; t++) rmsnorm(x + t * d, L.ffn_norm, d, c.eps, w.xn.data() + t * d);
  }
  static const int gu_ids[2] = {M_GATE, M_UP};
  {
    Timer timer(ST_GU);
    project(m, l, gu_ids, 2, w.xn.data(), T, w.gu.data(), 2 * ffn, plan, n_dense, w,
          capture ? capture[2] : nullptr);
  }
  for (int t = 0; t < T; t++) {
    const float *g = w.gu.data() + t * 2 * ffn, *u = g + ffn;
    float *h = w.h.data() + t * ffn;
    for (int64_t i = 0; i < ffn; i++) h[i] = silu(g[i]) * u[i];
  }
  static const int down_ids[1] = {M_DOWN};
  {
    Timer timer(ST_DOWN);
    project(m, l, down_ids, 1, w.h.data(), T, w.o.data(), d, plan, n_dense, w,
          capture ? capture[3] : nullptr);
  }
  residual_add(c.shortcuts ? &L.mlp_shortcut : nullptr, x, w.o.data(), T, d, w);
}

// ============================================================================================
// Embedding, head, sessions, forward
// ============================================================================================

void embed_tokens(const Model &m, const int32_t *tokens, int T, float *x) {
  const int64_t d = m.c.d;
  for (int t = 0; t < T; t++) {
    const char *row = (const char *)m.embed + (size_t)tokens[t] * d * dtype_size(m.c.dtype);
    copy_rows(row, m.c.dtype, d, x + t * d, WINA_F32);
  }
}

static void head_rows(Model *m, const float *x, int T, float *logits, Work &w) {
  const int64_t d = m->c.d;
  ensure(w.xn, d);
  w.bytes += (double)m->c.vocab * d * dtype_size(m->c.dtype) * T;
  for (int t = 0; t < T; t++) {
    rmsnorm(x + t * d, m->final_norm, d, m->c.eps, w.xn.data());
    rows_gemv(m->c.dtype, m->lm_head, d, m->c.vocab, d, w.xn.data(), logits + (int64_t)t * m->c.vocab);
  }
}

void head_forward(Model *m, const float *x, int T, float *logits) {
  std::lock_guard<std::mutex> lock(m->run_mu);
  Work w;
  head_rows(m, x, T, logits, w);
}

Session *session_create(Model *m, int max_ctx, std::string *err) {
  if (max_ctx <= 0) {
    *err = "context length must be positive";
    return nullptr;
  }
  Session *s = new Session();
  s->model = m;
  s->max_ctx = max_ctx;
  size_t bytes = sizeof(float) * (size_t)m->c.n_layers * max_ctx * kv_dim(m->c);
  s->kc = (float *)aligned_alloc64(bytes);
  s->vc = (float *)aligned_alloc64(bytes);
  if (!s->kc || !s->vc) {
    *err = "out of memory allocating the KV cache";
    session_free(s);
    return nullptr;
  }
  return s;
}

void session_free(Session *s) {
  if (!s) return;
  aligned_free64(s->kc);
  aligned_free64(s->vc);
  delete s;
}

bool forward(Session *s, const int32_t *tokens, int T, int logits_mode, float *logits,
             ForwardStats *stats, std::string *err) {
  Model *m = s->model;
  const ModelConfig &c = m->c;
  if (T <= 0) {
    *err = "no tokens";
    return false;
  }
  if (s->pos + T > s->max_ctx) {
    *err = "context overflow: " + std::to_string(s->pos + T) + " tokens > context length " +
           std::to_string(s->max_ctx);
    return false;
  }
  for (int t = 0; t < T; t++)
    if (tokens[t] < 0 || tokens[t] >= c.vocab) {
      *err = "token id " + std::to_string(tokens[t]) + " out of range [0, " + std::to_string(c.vocab) + ")";
      return false;
    }
  std::lock_guard<std::mutex> lock(m->run_mu);
  g_profile.calls++;
  Work &w = *static_cast<Work *>(m->work);  // grows to the largest call; reused by every decode step
  w.kept = w.total = w.bytes = 0;
  const Plan *plan = s->plan.m.empty() ? nullptr : &s->plan;
  int n_dense = 0;  // tokens of this call that stay dense
  if (plan && T > 1) {
    if (plan->prefill == PREFILL_DENSE) n_dense = T;
    else if (plan->prefill == PREFILL_MASK_EVAL) n_dense = T - (int)(0.99 * T);  // the paper's rule
  }
  const int64_t d = c.d, kvd = kv_dim(c);
  std::vector<float> x((size_t)T * d);
  embed_tokens(*m, tokens, T, x.data());
  for (int l = 0; l < c.n_layers; l++) {
    float *kc = s->kc + (size_t)l * s->max_ctx * kvd;
    float *vc = s->vc + (size_t)l * s->max_ctx * kvd;
    run_layer(m, l, x.data(), T, s->pos, kc, vc, plan, n_dense, w, nullptr);
  }
  s->pos += T;
  Timer head_timer(ST_HEAD);
  if (logits_mode == LOGITS_LAST)
    head_rows(m, x.data() + (size_t)(T - 1) * d, 1, logits, w);
  else if (logits_mode == LOGITS_ALL)
    head_rows(m, x.data(), T, logits, w);
  if (stats) {
    stats->selected_fraction = w.total > 0 ? w.kept / w.total : 1.0;
    stats->weight_bytes = w.bytes;
  }
  return true;
}

bool layer_forward(Model *m, int layer, const float *x, int T, const Plan *plan, float *y,
                   float *const *capture, std::string *err) {
  const ModelConfig &c = m->c;
  if (layer < 0 || layer >= c.n_layers) {
    *err = "layer out of range";
    return false;
  }
  std::lock_guard<std::mutex> lock(m->run_mu);
  Work w;
  std::vector<float> kc((size_t)T * kv_dim(c)), vc((size_t)T * kv_dim(c));
  memcpy(y, x, sizeof(float) * T * c.d);
  const Plan *p = plan && !plan->m.empty() ? plan : nullptr;
  run_layer(m, layer, y, T, 0, kc.data(), vc.data(), p, 0, w, capture);
  return true;
}

}  // namespace wina
