// Writers for safetensors and GGUF checkpoints: random-weight models for tests and benchmarks, the
// output of `wina transform`, and the same weights handed to llama.cpp. Both stream: headers are
// computed from names, dtypes and shapes alone, then each tensor's data is obtained, written and
// dropped in turn, so writing a multi-GB model holds one tensor in memory at a time.

import * as fs from 'node:fs';
import {
  GGML_TYPE,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VALUE,
  WINA_ROPE_SCALING,
  ggufQkRowPermutation,
  hfToGgufName,
  llama3RopeFactors,
} from './gguf.js';
import type { ModelConfig, TensorToWrite } from './types.js';

/** A tensor whose data is produced on demand (called once, when the writer reaches it). */
export interface TensorSource {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16';
  shape: number[];
  read(): Uint8Array | Promise<Uint8Array>;
}

export type WritableTensor = TensorToWrite | TensorSource;

const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2 } as const;

function tensorBytes(t: WritableTensor): number {
  if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new RangeError(`tensor ${t.name}: shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
  }
  const bytes = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`tensor ${t.name}: too large`);
  return bytes;
}

async function tensorData(t: WritableTensor, expectedBytes: number): Promise<Uint8Array> {
  const data = 'data' in t ? t.data : await t.read();
  if (data.byteLength !== expectedBytes) {
    throw new RangeError(`tensor ${t.name}: ${data.byteLength} bytes of data for shape [${t.shape.join(', ')}] ${t.dtype} (${expectedBytes} bytes)`);
  }
  return data;
}

/** A 1-D F16/BF16 tensor re-expressed as F32 (exact: both widen losslessly). */
function vectorAsF32(t: WritableTensor): TensorSource {
  const n = t.shape[0];
  return {
    name: t.name, dtype: 'F32', shape: t.shape,
    async read() {
      const src = await tensorData(t, n * 2);
      const u16 = new Uint16Array(src.buffer.slice(src.byteOffset, src.byteOffset + n * 2));
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) {
        if (t.dtype === 'BF16') {
          bits[i] = u16[i] << 16;
        } else {
          const h = u16[i], sgn = h >> 15 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
          out[i] = e === 0 ? sgn * m * 2 ** -24 : e === 31 ? (m ? NaN : sgn * Infinity) : sgn * (1 + m / 1024) * 2 ** (e - 15);
        }
      }
      return new Uint8Array(out.buffer);
    },
  };
}

function checkUniqueNames(tensors: WritableTensor[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new RangeError(`tensor ${t.name} is listed twice`);
    seen.add(t.name);
  }
}

/**
 * Writes into `file.partial` and renames it when complete, so that a crash or an exception never
 * leaves a truncated checkpoint under the real name.
 */
async function writeAtomically(file: string, body: (out: fs.promises.FileHandle) => Promise<void>): Promise<void> {
  const partial = `${file}.partial`;
  const out = await fs.promises.open(partial, 'w');
  try {
    await body(out);
    await out.close();
  } catch (err) {
    await out.close().catch(() => undefined);
    await fs.promises.rm(partial, { force: true });
    throw err;
  }
  await fs.promises.rename(partial, file);
}

async function writeAll(out: fs.promises.FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    // One write call is capped below 2 GiB by Node.
    const { bytesWritten } = await out.write(bytes, done, Math.min(bytes.byteLength - done, 1 << 30));
    done += bytesWritten;
  }
}

// ---- safetensors ---------------------------------------------------------------------------------

/**
 * Writes a safetensors file: tensors contiguous in the given order, the JSON header padded with
 * spaces to a multiple of 8 bytes (so the data section starts 8-byte aligned).
 */
export async function writeSafetensors(file: string, tensors: WritableTensor[], metadata?: Record<string, string>): Promise<void> {
  checkUniqueNames(tensors);
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  const sizes = tensors.map(tensorBytes);
  let offset = 0;
  tensors.forEach((t, i) => {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + sizes[i]] };
    offset += sizes[i];
  });
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const head = Buffer.alloc(8 + padded, 0x20);
  head.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(head, 8);

  await writeAtomically(file, async (out) => {
    await writeAll(out, head);
    for (let i = 0; i < tensors.length; i++) await writeAll(out, await tensorData(tensors[i], sizes[i]));
  });
}

// ---- GGUF ----------------------------------------------------------------------------------------

type ScalarType = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'bool' | 'string' | 'u64' | 'i64' | 'f64';

/** A metadata value with its GGUF type spelled out (llama.cpp checks key types strictly). */
export type GgufTypedValue =
  | { type: ScalarType; value: number | bigint | boolean | string }
  | { type: 'array'; itemType: ScalarType; values: ArrayLike<number | bigint | boolean | string> };

/** The tokenizer written as `tokenizer.ggml.*`. */
export interface GgufVocab {
  /** "llama" (SentencePiece: tokens + scores + token types) or "gpt2" (BPE: tokens + merges). */
  model: string;
  tokens: string[];
  scores?: ArrayLike<number>;
  /** 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte. */
  tokenTypes: ArrayLike<number>;
  merges?: string[];
  /** tokenizer.ggml.pre (gpt2 pre-tokenizer name, e.g. "llama-bpe"). */
  pre?: string;
  bosTokenId: number | null;
  eosTokenId: number | null;
  unkTokenId?: number | null;
  padTokenId?: number | null;
  addBosToken?: boolean;
  addEosToken?: boolean;
}

export interface GgufWriteSpec {
  /** GGUF architecture; defaults to "qwen2" for Qwen2 and "llama" otherwise (Mistral is llama to llama.cpp). */
  arch?: 'llama' | 'qwen2';
  config: ModelConfig;
  vocab: GgufVocab;
  /** Hugging Face names and layout; q/k rows are permuted for arch "llama" here. */
  tensors: WritableTensor[];
  /** Extra keys (e.g. general.name); they may override the generated ones. */
  metadata?: Record<string, GgufTypedValue>;
}

const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, BYTE: 6 } as const;

/** The GGUF name of a Hugging Face tensor name (throws for tensors GGUF has no name for). */
export function hfTensorToGgufName(name: string): string {
  const gguf = hfToGgufName(name);
  if (gguf === null) throw new RangeError(`no GGUF name for tensor ${name}`);
  return gguf;
}

/** Key/values llama.cpp needs to build a llama/qwen2 model, plus the tokenizer. */
function ggufMetadata(arch: string, config: ModelConfig, vocab: GgufVocab, fileType: number): Map<string, GgufTypedValue> {
  const kv = new Map<string, GgufTypedValue>();
  const u32 = (k: string, v: number): void => void kv.set(k, { type: 'u32', value: v });
  kv.set('general.architecture', { type: 'string', value: arch });
  kv.set('general.name', { type: 'string', value: 'wina' });
  u32('general.alignment', GGUF_DEFAULT_ALIGNMENT);
  u32(`${arch}.block_count`, config.numLayers);
  u32(`${arch}.context_length`, config.maxPositions);
  u32(`${arch}.embedding_length`, config.hiddenSize);
  u32(`${arch}.feed_forward_length`, config.intermediateSize);
  u32(`${arch}.attention.head_count`, config.numHeads);
  u32(`${arch}.attention.head_count_kv`, config.numKvHeads);
  kv.set(`${arch}.rope.freq_base`, { type: 'f32', value: config.ropeTheta });
  kv.set(`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: config.rmsNormEps });
  u32(`${arch}.attention.key_length`, config.headDim);
  u32(`${arch}.attention.value_length`, config.headDim);
  u32('general.file_type', fileType);
  u32(`${arch}.vocab_size`, config.vocabSize);
  u32(`${arch}.rope.dimension_count`, config.headDim);
  u32('general.quantization_version', 2);
  if (config.residualRotations) kv.set('wina.residual_rotations', { type: 'bool', value: true });
  if (config.ropeScaling !== null) {
    // llama.cpp reads rope_freqs.weight; these keys let our reader recover the exact parameters
    // (fitting them to the factors needs two or more interpolated frequencies, small heads have fewer).
    const s = config.ropeScaling;
    kv.set(`${WINA_ROPE_SCALING}.factor`, { type: 'f32', value: s.factor });
    kv.set(`${WINA_ROPE_SCALING}.low_freq_factor`, { type: 'f32', value: s.lowFreqFactor });
    kv.set(`${WINA_ROPE_SCALING}.high_freq_factor`, { type: 'f32', value: s.highFreqFactor });
    kv.set(`${WINA_ROPE_SCALING}.original_context_length`, { type: 'f32', value: s.originalMaxPositions });
  }

  kv.set('tokenizer.ggml.model', { type: 'string', value: vocab.model });
  if (vocab.pre !== undefined) kv.set('tokenizer.ggml.pre', { type: 'string', value: vocab.pre });
  kv.set('tokenizer.ggml.tokens', { type: 'array', itemType: 'string', values: vocab.tokens });
  if (vocab.scores !== undefined) kv.set('tokenizer.ggml.scores', { type: 'array', itemType: 'f32', values: vocab.scores });
  kv.set('tokenizer.ggml.token_type', { type: 'array', itemType: 'i32', values: vocab.tokenTypes });
  if (vocab.merges !== undefined) kv.set('tokenizer.ggml.merges', { type: 'array', itemType: 'string', values: vocab.merges });
  const ids: Array<[string, number | null | undefined]> = [
    ['bos_token_id', vocab.bosTokenId],
    ['eos_token_id', vocab.eosTokenId],
    ['unknown_token_id', vocab.unkTokenId],
    ['padding_token_id', vocab.padTokenId],
  ];
  for (const [k, id] of ids) if (id != null) u32(`tokenizer.ggml.${k}`, id);
  kv.set('tokenizer.ggml.add_bos_token', { type: 'bool', value: vocab.addBosToken ?? vocab.bosTokenId != null });
  kv.set('tokenizer.ggml.add_eos_token', { type: 'bool', value: vocab.addEosToken ?? false });
  return kv;
}

/**
 * Writes a GGUF v3 file llama.cpp can load: llama/qwen2 metadata and tokenizer, F32/F16/BF16
 * tensors under GGUF names with reversed dimensions, q/k rows permuted for arch "llama", llama3
 * RoPE scaling as `rope_freqs.weight`, every tensor 32-byte aligned. Not representable for
 * llama.cpp: Mistral's sliding window (irrelevant up to the window length) and the shortcut
 * rotations of `wina transform` checkpoints (written, readable by wina only).
 */
export async function writeGguf(file: string, spec: GgufWriteSpec): Promise<void> {
  const { config } = spec;
  const arch = spec.arch ?? (config.arch === 'qwen2' ? 'qwen2' : 'llama');
  // llama.cpp keeps 1-D tensors (norm weights, biases) in F32, as its own converter writes them:
  // its CPU binary ops (x * norm) do not take a BF16/F16 second operand.
  const tensors: WritableTensor[] = spec.tensors.map((t) => (t.shape.length === 1 && t.dtype !== 'F32' ? vectorAsF32(t) : t));
  checkUniqueNames(tensors);
  if (config.ropeScaling !== null) {
    const factors = llama3RopeFactors(config.ropeScaling, config.headDim, config.ropeTheta);
    tensors.push({ name: 'rope_freqs.weight', dtype: 'F32', shape: [factors.length], data: new Uint8Array(factors.buffer) });
  }
  const sizes = tensors.map(tensorBytes);
  const names = tensors.map((t) => (t.name === 'rope_freqs.weight' ? t.name : hfTensorToGgufName(t.name)));

  const kv = ggufMetadata(arch, config, spec.vocab, fileTypeOf(tensors));
  for (const [k, v] of Object.entries(spec.metadata ?? {})) kv.set(k, v);

  const head = new ByteWriter();
  head.u32(GGUF_MAGIC);
  head.u32(3);
  head.u64(tensors.length);
  head.u64(kv.size);
  for (const [key, value] of kv) {
    head.string(key);
    head.value(value);
  }
  let offset = 0;
  tensors.forEach((t, i) => {
    head.string(names[i]);
    head.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) head.u64(d);
    head.u32(GGML_TYPE[t.dtype]);
    head.u64(offset);
    offset = alignUp(offset + sizes[i]);
  });
  head.pad(alignUp(head.length) - head.length);

  await writeAtomically(file, async (out) => {
    await writeAll(out, head.bytes());
    for (let i = 0; i < tensors.length; i++) {
      const data = qkPermuted(arch, config, tensors[i], await tensorData(tensors[i], sizes[i]));
      await writeAll(out, data);
      const padding = alignUp(sizes[i]) - sizes[i];
      if (padding > 0) await writeAll(out, new Uint8Array(padding));
    }
  });
}

function alignUp(n: number): number {
  return Math.ceil(n / GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT;
}

/** llama.cpp's general.file_type: 0 all F32, 1 mostly F16, 32 mostly BF16 (from the matrices). */
function fileTypeOf(tensors: WritableTensor[]): number {
  const matrix = tensors.find((t) => t.shape.length === 2);
  return matrix === undefined || matrix.dtype === 'F32' ? 0 : matrix.dtype === 'F16' ? 1 : 32;
}

/** Applies llama.cpp's q/k row permutation for arch "llama": file row perm[r] = HF row r. */
function qkPermuted(arch: string, config: ModelConfig, t: WritableTensor, data: Uint8Array): Uint8Array {
  if (arch !== 'llama') return data;
  const heads = /\.self_attn\.q_proj\.(weight|bias)$/.test(t.name)
    ? config.numHeads
    : /\.self_attn\.k_proj\.(weight|bias)$/.test(t.name) ? config.numKvHeads : 0;
  if (heads === 0) return data;
  const rows = t.shape[0];
  const perm = ggufQkRowPermutation(rows, heads);
  const rowBytes = data.byteLength / rows;
  const out = new Uint8Array(data.byteLength);
  for (let r = 0; r < rows; r++) out.set(data.subarray(r * rowBytes, (r + 1) * rowBytes), perm[r] * rowBytes);
  return out;
}

/** A growable little-endian buffer for the GGUF header. */
class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): number {
    if (this.length + n > this.buf.length) {
      const grown = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  bytes(): Uint8Array { return this.buf.subarray(0, this.length); }
  pad(n: number): void { this.reserve(n); }
  u32(v: number): void { this.scalar('u32', v); }
  u64(v: number | bigint): void { this.scalar('u64', v); }
  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    const at = this.reserve(bytes.length);
    bytes.copy(this.buf, at);
  }

  value(v: GgufTypedValue): void {
    if (v.type === 'array') {
      this.u32(GGUF_VALUE.ARRAY);
      this.u32(SCALAR_CODES[v.itemType]);
      this.u64(v.values.length);
      for (let i = 0; i < v.values.length; i++) this.scalar(v.itemType, v.values[i]);
    } else {
      this.u32(SCALAR_CODES[v.type]);
      this.scalar(v.type, v.value);
    }
  }

  private scalar(type: ScalarType, v: number | bigint | boolean | string): void {
    if (type === 'string') return this.string(String(v));
    // reserve() may replace this.buf, so it runs before the buffer is touched.
    const at = this.reserve(SCALAR_BYTES[type]);
    const b = this.buf;
    switch (type) {
      case 'u8': b.writeUInt8(Number(v), at); break;
      case 'i8': b.writeInt8(Number(v), at); break;
      case 'bool': b.writeUInt8(v ? 1 : 0, at); break;
      case 'u16': b.writeUInt16LE(Number(v), at); break;
      case 'i16': b.writeInt16LE(Number(v), at); break;
      case 'u32': b.writeUInt32LE(Number(v), at); break;
      case 'i32': b.writeInt32LE(Number(v), at); break;
      case 'f32': b.writeFloatLE(Number(v), at); break;
      case 'f64': b.writeDoubleLE(Number(v), at); break;
      case 'u64': b.writeBigUInt64LE(BigInt(v), at); break;
      case 'i64': b.writeBigInt64LE(BigInt(v), at); break;
    }
  }
}

const SCALAR_BYTES: Record<Exclude<ScalarType, 'string'>, number> = {
  u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, u64: 8, i64: 8, f64: 8,
};

const SCALAR_CODES: Record<ScalarType, number> = {
  u8: GGUF_VALUE.UINT8, i8: GGUF_VALUE.INT8, u16: GGUF_VALUE.UINT16, i16: GGUF_VALUE.INT16,
  u32: GGUF_VALUE.UINT32, i32: GGUF_VALUE.INT32, f32: GGUF_VALUE.FLOAT32, bool: GGUF_VALUE.BOOL,
  string: GGUF_VALUE.STRING, u64: GGUF_VALUE.UINT64, i64: GGUF_VALUE.INT64, f64: GGUF_VALUE.FLOAT64,
};

// ---- vocabularies --------------------------------------------------------------------------------

/**
 * A SentencePiece-style vocabulary for random-weight models: <unk>, <s>, </s>, the 256 byte
 * tokens (llama.cpp looks up "<0x0A>" for newlines) and filler pieces up to `vocabSize`.
 */
export function syntheticGgufVocab(vocabSize: number): GgufVocab {
  if (vocabSize < 3 + 256) throw new RangeError(`syntheticGgufVocab: vocabSize ${vocabSize} < 259`);
  const tokens = ['<unk>', '<s>', '</s>'];
  const types: number[] = [TOKEN_TYPE.UNKNOWN, TOKEN_TYPE.CONTROL, TOKEN_TYPE.CONTROL];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(TOKEN_TYPE.BYTE);
  }
  for (let i = tokens.length; i < vocabSize; i++) {
    tokens.push(`\u2581t${i}`);
    types.push(TOKEN_TYPE.NORMAL);
  }
  const scores = tokens.map((_, i) => (types[i] === TOKEN_TYPE.NORMAL ? -(i - 259) : 0));
  return { model: 'llama', pre: 'default', tokens, scores, tokenTypes: types, bosTokenId: 1, eosTokenId: 2, unkTokenId: 0, addBosToken: true };
}

/**
 * The GGUF "llama" vocabulary of a SentencePiece-derived tokenizer.json (Llama 2, Mistral,
 * tiny-en-llama: BPE with byte_fallback). Assumes, as in every tokenizer.json converted from
 * SentencePiece, that normal pieces are numbered in score order; scores are then what llama.cpp's
 * converter writes: -k for the k-th normal piece, 0 for bytes, -1000 for control tokens.
 */
export function ggufVocabFromTokenizerJson(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}): GgufVocab {
  const model = tokenizerJson.model as { type?: string; vocab?: Record<string, number>; unk_token?: string | null; byte_fallback?: boolean } | undefined;
  if (model?.type !== 'BPE' || model.vocab === undefined) throw new RangeError('ggufVocabFromTokenizerJson: expected a BPE tokenizer.json');
  const added = (tokenizerJson.added_tokens ?? []) as Array<{ id: number; content: string; special?: boolean }>;
  const entries: Array<[string, number]> = [...Object.entries(model.vocab), ...added.map((a): [string, number] => [a.content, a.id])];
  const size = Math.max(...entries.map(([, id]) => id)) + 1;
  const tokens: string[] = new Array(size).fill('');
  for (const [piece, id] of entries) tokens[id] = piece;

  const specialIds = new Map(added.map((a) => [a.id, a.special === true]));
  const tokenTypes = new Int32Array(size);
  const scores = new Float32Array(size);
  let normal = 0;
  for (let id = 0; id < size; id++) {
    const special = specialIds.get(id);
    if (special !== undefined) {
      tokenTypes[id] = special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
      scores[id] = special ? -1000 : 0;
    } else if (tokens[id] === model.unk_token) {
      tokenTypes[id] = TOKEN_TYPE.UNKNOWN;
      scores[id] = -1000;
    } else if (model.byte_fallback === true && /^<0x[0-9A-F]{2}>$/.test(tokens[id])) {
      tokenTypes[id] = TOKEN_TYPE.BYTE;
    } else {
      tokenTypes[id] = TOKEN_TYPE.NORMAL;
      scores[id] = -normal++;
    }
  }
  const idOf = (key: string): number | null => {
    const v = tokenizerConfig[key];
    const content = typeof v === 'string' ? v : (v as { content?: string } | null | undefined)?.content;
    const id = content === undefined ? -1 : tokens.indexOf(content);
    return id >= 0 ? id : null;
  };
  const unk = model.unk_token == null ? -1 : tokens.indexOf(model.unk_token);
  return {
    model: 'llama',
    pre: 'default',
    tokens,
    scores,
    tokenTypes,
    bosTokenId: idOf('bos_token'),
    eosTokenId: idOf('eos_token'),
    unkTokenId: unk >= 0 ? unk : null,
    padTokenId: idOf('pad_token'),
    addBosToken: tokenizerConfig.add_bos_token !== false,
    addEosToken: tokenizerConfig.add_eos_token === true,
  };
}
