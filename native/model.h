// The Llama-family forward pass over input-major weights, with per-matrix input sparsity.
//
// Data flows one way: the loader (TypeScript) reads one tensor at a time from the file and hands it
// to model_set_tensor(), which repacks it into the kernels' input-major layout (no second copy of the
// weights stays alive); a Session owns a KV cache; forward() runs prefill (GEMM over all prompt
// tokens) or decode (GEMV, sparse when a Plan says so).
#pragma once
#include <stdint.h>

#include <mutex>
#include <string>
#include <vector>

#include "linear.h"

namespace wina {

// The seven linears of a decoder layer, in the order used by plans and column norms.
enum MatId { M_Q = 0, M_K, M_V, M_O, M_GATE, M_UP, M_DOWN, M_COUNT };

struct ModelConfig {
  int d = 0, ffn = 0, n_layers = 0, n_heads = 0, n_kv = 0, head_dim = 0, vocab = 0;
  float eps = 1e-5f;
  int sliding_window = 0;  // 0: full causal attention
  bool bias = false;       // q/k/v biases (Qwen2)
  bool tied = false;       // lm_head shares the embedding matrix
  bool shortcuts = false;  // residual rotations of transformed checkpoints
  int dtype = WINA_BF16;   // dtype of all matrices, the embedding and lm_head
  std::vector<float> inv_freq;  // head_dim/2 RoPE inverse frequencies (scaling already applied)
};

struct Layer {
  Matrix qkv;   // [d][q + k + v]     fused: one pass serves q, k and v
  Matrix o;     // [q_dim][d]
  Matrix gu;    // [d][gate | up]
  Matrix down;  // [ffn][d]
  Matrix attn_shortcut, mlp_shortcut;  // [d][d], only with shortcuts
  float *attn_norm = nullptr, *ffn_norm = nullptr;
  float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  float *norms[M_COUNT] = {};  // column norms ||W[:, i]||_2 of each matrix (length n_in)
};

struct Model {
  ModelConfig c;
  std::vector<Layer> layers;
  void *embed = nullptr;    // [vocab][d] row-major, dtype c.dtype
  void *lm_head = nullptr;  // [vocab][d] row-major (== embed when tied)
  float *final_norm = nullptr;
  std::vector<void *> owned;
  size_t weight_bytes = 0;
  std::vector<int64_t> loaded;  // rows of each tensor that arrived, see loaded_slot() in model.cc
  bool finalized = false;
  std::mutex run_mu;  // one forward at a time: the thread pool is shared and not reentrant
  void *work = nullptr;  // decode work buffers (model.cc), guarded by run_mu
};

Matrix model_matrix(const Model &m, int layer, int id);
int64_t mat_n_in(const ModelConfig &c, int id);

// Tensor kinds accepted by model_set_tensor.
enum TensorKind {
  T_EMBED = 0, T_LM_HEAD, T_FINAL_NORM,
  T_ATTN_NORM, T_FFN_NORM, T_Q, T_K, T_V, T_O, T_GATE, T_UP, T_DOWN, T_BQ, T_BK, T_BV,
  T_ATTN_SHORTCUT, T_MLP_SHORTCUT, T_KIND_COUNT
};

Model *model_create(const ModelConfig &c, std::string *err);
void model_free(Model *m);
// src: rows [row0, row0 + rows) of a tensor, cols elements each, src_dtype, row-major (PyTorch order:
// [out][in] for linears). A tensor may arrive in chunks of rows, in order (bounded loader memory).
// perm (optional, whole tensor only): destination row r comes from source row perm[r].
bool model_set_tensor(Model *m, int kind, int layer, const void *src, int src_dtype, int64_t rows,
                      int64_t cols, const int32_t *perm, int64_t row0, std::string *err);
// Checks every tensor arrived and computes the column norms. Returns false with err naming the first
// missing tensor.
bool model_finalize(Model *m, std::string *err);

// ---- sparsity plans ----------------------------------------------------------------------------
enum SelMode { SEL_DENSE = 0, SEL_TOPK = 1, SEL_THRESHOLD = 2 };
enum ScoreMode { SCORE_ABS = 0, SCORE_WINA = 1 };
enum PrefillMode { PREFILL_DENSE = 0, PREFILL_MASK_EVAL = 1, PREFILL_MASK_ALL = 2 };

struct MatPlan {
  int mode = SEL_DENSE;
  int score = SCORE_ABS;
  int64_t k = 0;          // top-k keeps k inputs (the caller computes k = floor(n * (1 - s)))
  float threshold = 0.f;  // threshold keeps s > threshold
};

struct Plan {
  std::vector<MatPlan> m;  // n_layers * M_COUNT
  int prefill = PREFILL_DENSE;
};

// ---- sessions and forward ----------------------------------------------------------------------
struct Session {
  Model *model = nullptr;
  int max_ctx = 0;
  int pos = 0;
  float *kc = nullptr, *vc = nullptr;  // [layer][max_ctx][kv_dim]
  Plan plan;                           // empty m = dense
};

Session *session_create(Model *m, int max_ctx, std::string *err);
void session_free(Session *s);

enum LogitsMode { LOGITS_NONE = 0, LOGITS_LAST = 1, LOGITS_ALL = 2 };

// Runs tokens[0:T] at positions s->pos .. s->pos+T-1 and advances pos. Writes logits (vocab floats for
// LOGITS_LAST, T*vocab for LOGITS_ALL). Also records per-call selection statistics.
struct ForwardStats {
  double selected_fraction = 1.0;  // mean fraction of inputs kept over sparsified matrices
  double weight_bytes = 0;         // weight bytes streamed (each GEMM counts its matrix once)
};
bool forward(Session *s, const int32_t *tokens, int T, int logits_mode, float *logits,
             ForwardStats *stats, std::string *err);

// ---- layer-level access (calibration) ----------------------------------------------------------
// Embedding rows of tokens -> x[T][d].
void embed_tokens(const Model &m, const int32_t *tokens, int T, float *x);
// Runs layer `layer` on x[T][d] (positions 0..T-1, a private KV cache), masked per `plan` over all
// tokens when plan is non-null (PREFILL_MASK_ALL semantics), writing y[T][d]. When capture is non-null
// it receives the four matrix inputs: capture[0] = attention input (normed) [T][d], capture[1] =
// o_proj input [T][q_dim], capture[2] = MLP input (normed) [T][d], capture[3] = down input [T][ffn].
bool layer_forward(Model *m, int layer, const float *x, int T, const Plan *plan, float *y,
                   float *const *capture, std::string *err);
// Final norm + lm_head for x[T][d] -> logits[T][vocab].
void head_forward(Model *m, const float *x, int T, float *logits);

}  // namespace wina
