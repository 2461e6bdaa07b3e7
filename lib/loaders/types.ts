// Shared types of the checkpoint loaders (safetensors folders and GGUF files).
// A loader reads headers and metadata only; tensor bytes are read one tensor at a time with
// readTensorBytes() so that no second full copy of the weights is ever alive.

/** Tensor dtypes as found in files. Kernels take F32, BF16, F16; Q8_0 is dequantized at load. */
export type FileDType = 'F32' | 'F16' | 'BF16' | 'Q8_0';

export interface TensorInfo {
  /** Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight` (GGUF names are mapped). */
  name: string;
  /** Name inside the file (GGUF: `blk.0.attn_q.weight`). */
  fileName: string;
  dtype: FileDType;
  /** PyTorch order: [out, in] for a linear weight, [vocab, hidden] for embeddings, [n] for norms. */
  shape: number[];
  /** Absolute path of the file that holds the bytes. */
  file: string;
  /** Absolute byte offset of the first byte in that file. */
  offset: number;
  byteLength: number;
  /**
   * GGUF only: llama.cpp's converter permutes the rows of q_proj / k_proj (interleaved RoPE pairs).
   * When present, HF row r is file row rowPermutation[r] (so the loader can undo it while repacking).
   */
  rowPermutation?: Int32Array;
}

export interface RopeScaling {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositions: number;
}

/** A normalised, validated model configuration (from config.json or GGUF metadata). */
export interface ModelConfig {
  arch: 'llama' | 'mistral' | 'qwen2';
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  tieWordEmbeddings: boolean;
  /** q/k/v biases (Qwen2). */
  attentionBias: boolean;
  /** Mistral sliding-window attention span, or null. */
  slidingWindow: number | null;
  /**
   * True for checkpoints written by `wina transform`: config.json has `"wina_transform": {...}` and each
   * layer has `model.layers.{i}.attn_shortcut.weight` and `model.layers.{i}.mlp_shortcut.weight`
   * ([hidden, hidden], y = W r) that rotate the residual stream before each residual add:
   * r = W_attn_shortcut r + attn(r);  r = W_mlp_shortcut r + mlp(r).
   */
  residualRotations: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

export interface TokenizerFiles {
  /** Parsed tokenizer.json (for GGUF: built from the tokenizer.ggml.* metadata). */
  json: Record<string, unknown>;
  /** Parsed tokenizer_config.json (for GGUF: a synthesised equivalent). */
  config: Record<string, unknown>;
}

export interface Checkpoint {
  format: 'safetensors' | 'gguf';
  /** Folder (safetensors) or file (GGUF) the checkpoint was read from. */
  path: string;
  config: ModelConfig;
  /** Keyed by Hugging Face name. */
  tensors: Map<string, TensorInfo>;
  tokenizer: TokenizerFiles | null;
  /** Parsed generation_config.json when present. */
  generationConfig: Record<string, unknown> | null;
  /** Total bytes of all tensors as stored. */
  totalBytes: number;
}

/** A tensor to write (writers for tests, benchmarks and the transform). Data is in `dtype`. */
export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  data: Uint8Array;
}
