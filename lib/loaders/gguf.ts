// GGUF v2/v3 files: header parsing (metadata + tensor infos, never tensor data) and the mapping of
// llama.cpp's llama/qwen2 layout to Hugging Face names, shapes and configuration.
//
// Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata key/values,
// tensor infos (name, u32 n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset
// relative to the data section), padding to `general.alignment` (default 32), data section.

import { WinaLoadError, describeFound } from '../errors.js';
import { checkTensorsAgainstConfig } from './config.js';
import { openFileSource, type ByteSource } from './source.js';
import type { Checkpoint, FileDType, ModelConfig, RopeScaling, TensorInfo } from './types.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** ggml tensor types we read; every other type is refused by name. */
export const GGML_TYPE = { F32: 0, F16: 1, Q8_0: 8, BF16: 30 } as const;

const GGML_TYPE_NAMES: Record<number, string> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 8: 'Q8_0', 9: 'Q8_1', 10: 'Q2_K',
  11: 'Q3_K', 12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS',
  19: 'IQ1_S', 20: 'IQ4_NL', 21: 'IQ3_S', 22: 'IQ2_S', 23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32',
  27: 'I64', 28: 'F64', 29: 'IQ1_M', 30: 'BF16', 34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
};

/** GGUF metadata value types. */
export const GGUF_VALUE = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8,
  ARRAY: 9, UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;

const VALUE_TYPE_NAMES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'];
/** Smallest encoding of one value of each type: bounds every count before anything is allocated. */
const VALUE_MIN_BYTES = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];
const MAX_ARRAY_NESTING = 8;
const MAX_DIMS = 4; // GGML_MAX_DIMS
const Q8_0_BLOCK = 32;
const Q8_0_BLOCK_BYTES = 34; // f16 scale + 32 int8

const GGUF_FIXES = ['Re-create the file with llama.cpp (convert_hf_to_gguf.py) or `wina` writers.'];

export interface GgufTensorRaw {
  /** Name inside the file, e.g. `blk.0.attn_q.weight`. */
  name: string;
  /** ggml order: ne[0] is the innermost (contiguous) dimension. */
  ne: number[];
  ggmlType: number;
  dtype: FileDType;
  /** Absolute offset in the file. */
  offset: number;
  byteLength: number;
}

export interface GgufHeader {
  file: string;
  size: number;
  version: number;
  /**
   * Metadata values: numbers (u64/i64 beyond 2^53 as bigint), booleans, strings; arrays of numbers
   * as typed arrays (Float32Array for f32, Int32Array for i32, ...), arrays of strings as string[],
   * nested arrays as unknown[].
   */
  metadata: Map<string, unknown>;
  /** Value type of each key: 'u32', 'f32', 'string', 'array<string>', 'array<array<i32>>', ... */
  metadataTypes: Map<string, string>;
  alignment: number;
  dataOffset: number;
  tensors: GgufTensorRaw[];
}

// ---- byte cursor ---------------------------------------------------------------------------------

const READ_CHUNK = 1 << 20;

/** Sequential little-endian reads over a ByteSource through a 1 MiB window. */
class Cursor {
  pos = 0;
  /** What is being read, for error messages. */
  context = 'header';
  private buf: Uint8Array = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  private bufStart = 0;
  private readonly utf8 = new TextDecoder('utf-8', { fatal: true });
  private readonly utf8Lenient = new TextDecoder('utf-8');

  constructor(readonly source: ByteSource) {}

  get remaining(): number {
    return this.source.size - this.pos;
  }

  fail(expected: string, found: string, fixes = GGUF_FIXES): never {
    throw new WinaLoadError({ file: this.source.name, what: this.context, expected, found, fixes });
  }

  /** Makes n bytes at pos addressable; returns their index in buf and advances. */
  private take(n: number): number {
    if (n > this.remaining) this.fail(`${n} more bytes at offset ${this.pos}`, `the end of the file (${this.source.size} bytes; truncated?)`);
    if (this.pos < this.bufStart || this.pos + n > this.bufStart + this.buf.length) {
      const length = Math.min(Math.max(n, READ_CHUNK), this.remaining);
      this.buf = this.source.read(this.pos, length);
      this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
      this.bufStart = this.pos;
    }
    const at = this.pos - this.bufStart;
    this.pos += n;
    return at;
  }

  bytes(n: number): Uint8Array {
    const at = this.take(n);
    return this.buf.subarray(at, at + n);
  }
  // take() may move the window, so it must run before this.view is read.
  u8(): number { const at = this.take(1); return this.view.getUint8(at); }
  i8(): number { const at = this.take(1); return this.view.getInt8(at); }
  u16(): number { const at = this.take(2); return this.view.getUint16(at, true); }
  i16(): number { const at = this.take(2); return this.view.getInt16(at, true); }
  u32(): number { const at = this.take(4); return this.view.getUint32(at, true); }
  i32(): number { const at = this.take(4); return this.view.getInt32(at, true); }
  f32(): number { const at = this.take(4); return this.view.getFloat32(at, true); }
  f64(): number { const at = this.take(8); return this.view.getFloat64(at, true); }
  u64(): bigint { const at = this.take(8); return this.view.getBigUint64(at, true); }
  i64(): bigint { const at = this.take(8); return this.view.getBigInt64(at, true); }

  /** A u64 count of items each at least `minBytes` long: it must fit in what is left of the file. */
  count(minBytes: number, what: string): number {
    const n = this.u64();
    if (n * BigInt(minBytes) > BigInt(this.remaining)) {
      this.fail(`a ${what} that fits in the ${this.remaining} bytes left`, `${n}`);
    }
    return Number(n);
  }

  /** Names and keys must be valid UTF-8; values (token pieces) are decoded leniently. */
  string(strict: boolean): string {
    const n = this.count(1, 'string length');
    const bytes = this.bytes(n);
    if (!strict) return this.utf8Lenient.decode(bytes);
    try {
      return this.utf8.decode(bytes);
    } catch {
      return this.fail('a UTF-8 string', 'invalid UTF-8 bytes');
    }
  }
}

function asNumber(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

// ---- header --------------------------------------------------------------------------------------

export function readGgufHeader(file: string): GgufHeader {
  const source = openFileSource(file);
  try {
    return parseGgufHeader(source);
  } finally {
    source.close();
  }
}

export function parseGgufHeader(source: ByteSource): GgufHeader {
  const cur = new Cursor(source);
  cur.context = 'magic';
  if (source.size < 4 || cur.u32() !== GGUF_MAGIC) {
    cur.fail('the GGUF magic "GGUF"', source.size < 4 ? 'a file shorter than 4 bytes' : 'other bytes (not a GGUF file)');
  }
  cur.context = 'version';
  const version = cur.u32();
  if (version !== 2 && version !== 3) {
    const hint = version >= 0x01000000 ? ' (a big-endian GGUF?)' : '';
    cur.fail('GGUF version 2 or 3', `${version}${hint}`, [
      'Convert the model again with a current llama.cpp (little-endian GGUF v3).',
    ]);
  }
  cur.context = 'tensor count';
  const tensorCount = cur.count(8 + 4 + 8 + 4 + 8, 'tensor count');
  cur.context = 'metadata count';
  const kvCount = cur.count(8 + 4 + 1, 'metadata count');

  const metadata = new Map<string, unknown>();
  const metadataTypes = new Map<string, string>();
  for (let i = 0; i < kvCount; i++) {
    cur.context = `metadata #${i}`;
    const key = cur.string(true);
    cur.context = `metadata ${JSON.stringify(key)}`;
    if (metadata.has(key)) cur.fail('each metadata key once', 'a duplicate key');
    const { value, type } = readValue(cur, cur.u32(), 0);
    metadata.set(key, value);
    metadataTypes.set(key, type);
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (metadata.has('general.alignment')) {
    const a = metadata.get('general.alignment');
    cur.context = 'metadata "general.alignment"';
    if (typeof a !== 'number' || !Number.isInteger(a) || a <= 0 || a > 1 << 30 || (a & (a - 1)) !== 0) {
      cur.fail('a power of two', describeFound(a));
    }
    alignment = a as number;
  }

  const infos: Array<{ name: string; ne: number[]; ggmlType: number; relOffset: number }> = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    cur.context = `tensor info #${i}`;
    const name = cur.string(true);
    cur.context = `tensor ${JSON.stringify(name)}`;
    if (names.has(name)) cur.fail('each tensor name once', 'a duplicate name');
    names.add(name);
    const nDims = cur.u32();
    if (nDims < 1 || nDims > MAX_DIMS) cur.fail(`1 to ${MAX_DIMS} dimensions`, `${nDims}`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const n = cur.u64();
      if (n > BigInt(Number.MAX_SAFE_INTEGER)) cur.fail('a dimension below 2^53', `${n}`);
      ne.push(Number(n));
    }
    const ggmlType = cur.u32();
    const relOffset = cur.u64();
    if (relOffset > BigInt(Number.MAX_SAFE_INTEGER)) cur.fail('an offset below 2^53', `${relOffset}`);
    infos.push({ name, ne, ggmlType, relOffset: Number(relOffset) });
  }

  const dataOffset = Math.ceil(cur.pos / alignment) * alignment;
  const tensors = infos.map((info) => {
    cur.context = `tensor ${JSON.stringify(info.name)}`;
    return tensorRaw(cur, info, alignment, dataOffset);
  });
  checkNoOverlap(cur, tensors);
  return { file: source.name, size: source.size, version, metadata, metadataTypes, alignment, dataOffset, tensors };
}

function readValue(cur: Cursor, type: number, depth: number): { value: unknown; type: string } {
  switch (type) {
    case GGUF_VALUE.UINT8: return { value: cur.u8(), type: 'u8' };
    case GGUF_VALUE.INT8: return { value: cur.i8(), type: 'i8' };
    case GGUF_VALUE.UINT16: return { value: cur.u16(), type: 'u16' };
    case GGUF_VALUE.INT16: return { value: cur.i16(), type: 'i16' };
    case GGUF_VALUE.UINT32: return { value: cur.u32(), type: 'u32' };
    case GGUF_VALUE.INT32: return { value: cur.i32(), type: 'i32' };
    case GGUF_VALUE.FLOAT32: return { value: cur.f32(), type: 'f32' };
    case GGUF_VALUE.BOOL: return { value: readBool(cur), type: 'bool' };
    case GGUF_VALUE.STRING: return { value: cur.string(false), type: 'string' };
    case GGUF_VALUE.UINT64: return { value: asNumber(cur.u64()), type: 'u64' };
    case GGUF_VALUE.INT64: return { value: asNumber(cur.i64()), type: 'i64' };
    case GGUF_VALUE.FLOAT64: return { value: cur.f64(), type: 'f64' };
    case GGUF_VALUE.ARRAY: return readArray(cur, depth);
    default: return cur.fail('a GGUF value type 0..12', `${type}`);
  }
}

function readBool(cur: Cursor): boolean {
  const b = cur.u8();
  if (b > 1) cur.fail('a bool (0 or 1)', `${b}`);
  return b === 1;
}

function readArray(cur: Cursor, depth: number): { value: unknown; type: string } {
  if (depth >= MAX_ARRAY_NESTING) cur.fail(`arrays nested at most ${MAX_ARRAY_NESTING} deep`, 'deeper nesting');
  const itemType = cur.u32();
  if (itemType >= VALUE_MIN_BYTES.length) cur.fail('an array item type 0..12', `${itemType}`);
  const n = cur.count(VALUE_MIN_BYTES[itemType], 'array length');
  const numeric = numericArray(cur, itemType, n);
  if (numeric !== null) return { value: numeric, type: `array<${VALUE_TYPE_NAMES[itemType]}>` };
  const items: unknown[] = new Array(n);
  let itemName = VALUE_TYPE_NAMES[itemType];
  for (let i = 0; i < n; i++) {
    const item = readValue(cur, itemType, depth + 1);
    items[i] = item.value;
    itemName = item.type;
  }
  return { value: items, type: `array<${itemName}>` };
}

/** Numeric arrays are read in one block into a typed array (a 150k-entry score table is one copy). */
function numericArray(cur: Cursor, itemType: number, n: number): ArrayLike<unknown> | null {
  const make: Partial<Record<number, (b: ArrayBuffer) => ArrayLike<unknown>>> = {
    [GGUF_VALUE.UINT8]: (b) => new Uint8Array(b),
    [GGUF_VALUE.INT8]: (b) => new Int8Array(b),
    [GGUF_VALUE.UINT16]: (b) => new Uint16Array(b),
    [GGUF_VALUE.INT16]: (b) => new Int16Array(b),
    [GGUF_VALUE.UINT32]: (b) => new Uint32Array(b),
    [GGUF_VALUE.INT32]: (b) => new Int32Array(b),
    [GGUF_VALUE.FLOAT32]: (b) => new Float32Array(b),
    [GGUF_VALUE.UINT64]: (b) => new BigUint64Array(b),
    [GGUF_VALUE.INT64]: (b) => new BigInt64Array(b),
    [GGUF_VALUE.FLOAT64]: (b) => new Float64Array(b),
  };
  const ctor = make[itemType];
  if (ctor === undefined) return null;
  const size = VALUE_MIN_BYTES[itemType];
  // Copy into a fresh, aligned buffer (typed arrays need element alignment; the file has none).
  const copy = new Uint8Array(n * size);
  copy.set(cur.bytes(n * size));
  return ctor(copy.buffer);
}

function tensorRaw(
  cur: Cursor,
  info: { name: string; ne: number[]; ggmlType: number; relOffset: number },
  alignment: number,
  dataOffset: number,
): GgufTensorRaw {
  const dtype = ggmlDtype(info.ggmlType);
  if (dtype === null) {
    const typeName = GGML_TYPE_NAMES[info.ggmlType] ?? 'an unknown type';
    cur.fail('ggml type F32, F16, BF16 or Q8_0', `${typeName} (ggml type ${info.ggmlType})`, [
      'Use an F32, F16, BF16 or Q8_0 GGUF (llama.cpp: convert_hf_to_gguf.py --outtype bf16|q8_0), or the safetensors checkpoint.',
    ]);
  }
  const elements = info.ne.reduce((a, b) => a * b, 1);
  let byteLength: number;
  if (dtype === 'Q8_0') {
    if (info.ne[0] % Q8_0_BLOCK !== 0) cur.fail(`a row length that is a multiple of ${Q8_0_BLOCK} for Q8_0`, `${info.ne[0]}`);
    byteLength = (elements / Q8_0_BLOCK) * Q8_0_BLOCK_BYTES;
  } else {
    byteLength = elements * (dtype === 'F32' ? 4 : 2);
  }
  if (!Number.isSafeInteger(byteLength)) cur.fail('a tensor size below 2^53 bytes', `ne ${describeFound(info.ne)}`);
  if (info.relOffset % alignment !== 0) cur.fail(`an offset aligned to ${alignment} bytes`, `${info.relOffset}`);
  const offset = dataOffset + info.relOffset;
  if (offset + byteLength > cur.source.size) {
    cur.fail(`data inside the ${cur.source.size}-byte file`, `bytes ${offset}..${offset + byteLength} (truncated file?)`);
  }
  return { name: info.name, ne: info.ne, ggmlType: info.ggmlType, dtype: dtype as FileDType, offset, byteLength };
}

function ggmlDtype(type: number): FileDType | null {
  switch (type) {
    case GGML_TYPE.F32: return 'F32';
    case GGML_TYPE.F16: return 'F16';
    case GGML_TYPE.BF16: return 'BF16';
    case GGML_TYPE.Q8_0: return 'Q8_0';
    default: return null;
  }
}

function checkNoOverlap(cur: Cursor, tensors: GgufTensorRaw[]): void {
  const sorted = tensors.filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].offset < sorted[i - 1].offset + sorted[i - 1].byteLength) {
      cur.context = `tensor ${JSON.stringify(sorted[i].name)}`;
      cur.fail(`data after that of ${sorted[i - 1].name}`, `an overlapping offset ${sorted[i].offset}`);
    }
  }
}

// ---- names ---------------------------------------------------------------------------------------

const GLOBAL_TO_HF: Record<string, string> = {
  'token_embd.weight': 'model.embed_tokens.weight',
  'output_norm.weight': 'model.norm.weight',
  'output.weight': 'lm_head.weight',
};

const BLOCK_TO_HF: Record<string, string> = {
  'attn_norm.weight': 'input_layernorm.weight',
  'attn_q.weight': 'self_attn.q_proj.weight',
  'attn_k.weight': 'self_attn.k_proj.weight',
  'attn_v.weight': 'self_attn.v_proj.weight',
  'attn_q.bias': 'self_attn.q_proj.bias',
  'attn_k.bias': 'self_attn.k_proj.bias',
  'attn_v.bias': 'self_attn.v_proj.bias',
  'attn_output.weight': 'self_attn.o_proj.weight',
  'ffn_norm.weight': 'post_attention_layernorm.weight',
  'ffn_gate.weight': 'mlp.gate_proj.weight',
  'ffn_up.weight': 'mlp.up_proj.weight',
  'ffn_down.weight': 'mlp.down_proj.weight',
  // Residual-stream rotations of `wina transform` checkpoints (not a llama.cpp tensor).
  'attn_shortcut.weight': 'attn_shortcut.weight',
  'mlp_shortcut.weight': 'mlp_shortcut.weight',
};

const HF_TO_GLOBAL = invert(GLOBAL_TO_HF);
const HF_TO_BLOCK = invert(BLOCK_TO_HF);

function invert(map: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(map).map(([k, v]) => [v, k]));
}

/** `blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; null when not a model tensor. */
export function ggufToHfName(name: string): string | null {
  if (Object.hasOwn(GLOBAL_TO_HF, name)) return GLOBAL_TO_HF[name];
  const m = /^blk\.(0|[1-9]\d*)\.(.+)$/.exec(name);
  if (m === null || !Object.hasOwn(BLOCK_TO_HF, m[2])) return null;
  return `model.layers.${m[1]}.${BLOCK_TO_HF[m[2]]}`;
}

/** `model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`; null when GGUF has no such tensor. */
export function hfToGgufName(name: string): string | null {
  if (Object.hasOwn(HF_TO_GLOBAL, name)) return HF_TO_GLOBAL[name];
  const m = /^model\.layers\.(0|[1-9]\d*)\.(.+)$/.exec(name);
  if (m === null || !Object.hasOwn(HF_TO_BLOCK, m[2])) return null;
  return `blk.${m[1]}.${HF_TO_BLOCK[m[2]]}`;
}

// ---- Q/K row permutation -------------------------------------------------------------------------

/**
 * llama.cpp's converter stores q_proj/k_proj of arch `llama` permuted for interleaved RoPE:
 * file = w.reshape(nHead, 2, rows/nHead/2, cols).swapaxes(1, 2). HF row h*hd + p*hd/2 + j (p in
 * {0, 1}) is therefore file row h*hd + 2j + p. Returns perm with HF row r = file row perm[r].
 */
export function ggufQkRowPermutation(rows: number, nHead: number): Int32Array {
  const headDim = rows / nHead;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new RangeError(`ggufQkRowPermutation: ${rows} rows do not split into ${nHead} heads of even size`);
  }
  const half = headDim / 2;
  const perm = new Int32Array(rows);
  for (let h = 0; h < nHead; h++) {
    for (let p = 0; p < 2; p++) {
      for (let j = 0; j < half; j++) perm[h * headDim + p * half + j] = h * headDim + 2 * j + p;
    }
  }
  return perm;
}

// ---- llama3 RoPE factors -------------------------------------------------------------------------

/**
 * The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for llama3 RoPE scaling
 * (inv_freq_scaled[i] = inv_freq[i] / factors[i]), computed as its converter does.
 */
export function llama3RopeFactors(scaling: RopeScaling, headDim: number, ropeTheta: number): Float32Array {
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions: old } = scaling;
  const lowFreqWavelen = old / lowFreqFactor;
  const highFreqWavelen = old / highFreqFactor;
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < out.length; i++) {
    const wavelen = (2 * Math.PI) / (1 / ropeTheta ** ((2 * i) / headDim));
    if (wavelen < highFreqWavelen) out[i] = 1;
    else if (wavelen > lowFreqWavelen) out[i] = factor;
    else {
      const smooth = (old / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/**
 * Recovers llama3 scaling parameters from stored factors. Only the ratios old/low and old/high are
 * identifiable (scaling all three changes nothing), so lowFreqFactor is fixed to 1 (Llama 3.x's
 * value); the result reproduces the stored factors, which is what inference needs. Null when the
 * factors are all 1 or cannot be explained by llama3 scaling.
 */
export function fitLlama3RopeScaling(factors: Float32Array, headDim: number, ropeTheta: number): RopeScaling | null {
  if (factors.length !== headDim / 2 || !factors.every((f) => Number.isFinite(f) && f >= 1)) return null;
  const factor = factors.reduce((a, b) => Math.max(a, b), 0);
  if (factor <= 1) return null;
  const tol = 1e-4 * factor;
  const points: Array<{ x: number; s: number }> = [];
  factors.forEach((f, i) => {
    if (f > 1 + tol && f < factor - tol) {
      const wavelen = 2 * Math.PI * ropeTheta ** ((2 * i) / headDim);
      points.push({ x: 1 / wavelen, s: (1 / f - 1 / factor) / (1 - 1 / factor) });
    }
  });
  if (points.length < 2) return null;
  // smooth = old/wavelen - low over (high - low), linear in x = 1/wavelen: s = a x + b.
  const first = points[0];
  const last = points[points.length - 1];
  const a = (last.s - first.s) / (last.x - first.x);
  const b = first.s - a * first.x;
  if (!(b < 0) || !(a > 0)) return null;
  const raw = { type: 'llama3' as const, factor, lowFreqFactor: 1, highFreqFactor: 1 - 1 / b, originalMaxPositions: -a / b };
  const rounded = {
    ...raw,
    highFreqFactor: Math.round(raw.highFreqFactor * 1000) / 1000,
    originalMaxPositions: Math.round(raw.originalMaxPositions),
  };
  for (const candidate of [rounded, raw]) {
    const again = llama3RopeFactors(candidate, headDim, ropeTheta);
    if (again.every((f, i) => Math.abs(f - factors[i]) <= 1e-3 * factors[i])) return candidate;
  }
  return null;
}

// ---- GGUF -> Checkpoint --------------------------------------------------------------------------

export interface GgufCheckpoint extends Checkpoint {
  format: 'gguf';
  /** All metadata of the file (tokenizer.ggml.* included), see GgufHeader.metadata. */
  ggufMetadata: Map<string, unknown>;
  ggufMetadataTypes: Map<string, string>;
  ggufVersion: number;
}

const ARCHES = new Set(['llama', 'qwen2']);

/** Prefix of the exact llama3 scaling parameters written next to rope_freqs.weight by writeGguf. */
export const WINA_ROPE_SCALING = 'wina.rope_scaling';

/** Opens a GGUF file as a checkpoint: header, config, HF-named tensors (no tensor data read). */
export function openGgufCheckpoint(file: string): GgufCheckpoint {
  const source = openFileSource(file);
  try {
    return ggufCheckpointFromSource(source);
  } finally {
    source.close();
  }
}

export function ggufCheckpointFromSource(source: ByteSource): GgufCheckpoint {
  const header = parseGgufHeader(source);
  const { config, tensors } = ggufModel(header, source);
  checkTensorsAgainstConfig(config, tensors, header.file);
  let totalBytes = 0;
  for (const t of tensors.values()) totalBytes += t.byteLength;
  return {
    format: 'gguf',
    path: header.file,
    config,
    tensors,
    tokenizer: null,
    generationConfig: null,
    totalBytes,
    ggufMetadata: header.metadata,
    ggufMetadataTypes: header.metadataTypes,
    ggufVersion: header.version,
  };
}

/** Config and HF-named tensors of a llama / qwen2 GGUF (reads only the tiny rope_freqs tensor). */
export function ggufModel(header: GgufHeader, source: ByteSource): { config: ModelConfig; tensors: Map<string, TensorInfo> } {
  const file = header.file;
  const meta = header.metadata;
  const failText = (what: string, expected: string, found: string, fixes = GGUF_FIXES): never => {
    throw new WinaLoadError({ file, what, expected, found, fixes });
  };
  const fail = (what: string, expected: string, value: unknown, fixes = GGUF_FIXES): never => failText(what, expected, describeFound(value), fixes);
  const arch = meta.get('general.architecture');
  if (typeof arch !== 'string' || !ARCHES.has(arch)) {
    fail('general.architecture', '"llama" or "qwen2"', arch, ['Only llama-family GGUF files (llama, mistral as llama, qwen2) are supported.']);
  }
  const key = (k: string): string => `${arch}.${k}`;
  const int = (k: string, fallback?: number): number => {
    const v = meta.has(key(k)) ? meta.get(key(k)) : fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(key(k), 'a positive integer', v);
    return v as number;
  };
  const num = (k: string, fallback?: number): number => {
    const v = meta.has(key(k)) ? meta.get(key(k)) : fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(key(k), 'a positive number', v);
    return v as number;
  };

  const hiddenSize = int('embedding_length');
  const numHeads = int('attention.head_count');
  const numKvHeads = int('attention.head_count_kv', numHeads);
  if (numHeads % numKvHeads !== 0) fail(key('attention.head_count_kv'), `a divisor of ${numHeads}`, numKvHeads);
  if (!meta.has(key('attention.key_length')) && hiddenSize % numHeads !== 0) {
    fail(key('embedding_length'), `a multiple of the head count ${numHeads}`, hiddenSize);
  }
  const headDim = int('attention.key_length', hiddenSize / numHeads);
  if (headDim % 2 !== 0) fail(key('attention.key_length'), 'an even head size', headDim);
  if (int('attention.value_length', headDim) !== headDim) fail(key('attention.value_length'), `${headDim} (= key_length)`, meta.get(key('attention.value_length')));
  if (int('rope.dimension_count', headDim) !== headDim) {
    fail(key('rope.dimension_count'), `${headDim} (RoPE over the whole head)`, meta.get(key('rope.dimension_count')));
  }
  const ropeTheta = shortestF32(num('rope.freq_base', 10000));
  const scalingType = meta.get(key('rope.scaling.type'));
  if (scalingType !== undefined && scalingType !== 'none') fail(key('rope.scaling.type'), '"none" (or llama3 rope_freqs)', scalingType);

  const tokens = meta.get('tokenizer.ggml.tokens');
  const tokenCount = Array.isArray(tokens) ? tokens.length : undefined;

  const tensors = new Map<string, TensorInfo>();
  let ropeFreqs: GgufTensorRaw | undefined;
  for (const t of header.tensors) {
    if (t.name === 'rope_freqs.weight') {
      ropeFreqs = t;
      continue;
    }
    const name = ggufToHfName(t.name);
    if (name === null) failText(t.name, 'a llama-architecture tensor (token_embd, blk.N.attn_q, ...)', 'an unknown tensor name');
    tensors.set(name as string, {
      name: name as string,
      fileName: t.name,
      dtype: t.dtype,
      shape: [...t.ne].reverse(),
      file,
      offset: t.offset,
      byteLength: t.byteLength,
    });
  }

  const embed = tensors.get('model.embed_tokens.weight');
  const vocabSize = tokenCount ?? (meta.has(key('vocab_size')) ? int('vocab_size') : embed?.shape[0]);
  if (vocabSize === undefined || vocabSize <= 0) fail('tokenizer.ggml.tokens', 'a token list (the vocabulary)', tokens);

  const config: ModelConfig = {
    arch: arch as 'llama' | 'qwen2',
    hiddenSize,
    intermediateSize: int('feed_forward_length'),
    numLayers: int('block_count'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: vocabSize as number,
    maxPositions: int('context_length'),
    rmsNormEps: shortestF32(num('attention.layer_norm_rms_epsilon')),
    ropeTheta,
    ropeScaling: ropeFreqs === undefined ? null : ropeScalingFromFile(meta, ropeFreqs, source, headDim, ropeTheta, failText),
    tieWordEmbeddings: !tensors.has('lm_head.weight'),
    attentionBias: arch === 'qwen2',
    slidingWindow: null,
    residualRotations: meta.get('wina.residual_rotations') === true,
    bosTokenId: tokenId(meta, 'tokenizer.ggml.bos_token_id', fail),
    eosTokenIds: [
      ...new Set(
        ['tokenizer.ggml.eos_token_id', 'tokenizer.ggml.eot_token_id', 'tokenizer.ggml.eom_token_id']
          .map((k) => tokenId(meta, k, fail))
          .filter((id): id is number => id !== null),
      ),
    ],
  };

  // Un-permute llama's q/k rows (qwen2 files are stored in HF order: NeoX RoPE needs no permutation).
  if (arch === 'llama') {
    for (const [name, t] of tensors) {
      const heads = /\.self_attn\.q_proj\./.test(name) ? numHeads : /\.self_attn\.k_proj\./.test(name) ? numKvHeads : 0;
      // byteLength > 0 bounds the row count by the file size before anything is allocated.
      if (heads > 0 && t.byteLength > 0 && t.shape[0] === heads * headDim) t.rowPermutation = ggufQkRowPermutation(t.shape[0], heads);
    }
  }
  return { config, tensors };
}

/** GGUF stores eps and theta as f32: 1e-5 reads back as 9.9999997e-6. Use the shortest decimal
 *  that rounds to the same f32, which is the value the config was written from. */
export function shortestF32(v: number): number {
  for (let digits = 1; digits <= 9; digits++) {
    const d = Number(v.toPrecision(digits));
    if (Math.fround(d) === Math.fround(v)) return d;
  }
  return v;
}

function tokenId(meta: Map<string, unknown>, k: string, fail: (what: string, expected: string, found: unknown) => never): number | null {
  const v = meta.get(k);
  if (v === undefined) return null;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(k, 'a token id', v);
  return v as number;
}

/**
 * llama3 scaling of a file with `rope_freqs.weight`: the parameters from the `wina.rope_scaling.*`
 * keys our writer adds (llama.cpp ignores them; it only knows linear/yarn in rope.scaling.type),
 * otherwise fitted to the stored factors (files from llama.cpp's converter).
 */
function ropeScalingFromFile(
  meta: Map<string, unknown>,
  t: GgufTensorRaw,
  source: ByteSource,
  headDim: number,
  ropeTheta: number,
  fail: (what: string, expected: string, found: string, fixes?: string[]) => never,
): RopeScaling {
  if (t.dtype !== 'F32' || t.ne.length !== 1 || t.ne[0] !== headDim / 2) {
    fail(t.name, `an F32 tensor of ${headDim / 2} factors`, `${t.dtype} ne ${describeFound(t.ne)}`);
  }
  if (meta.has(`${WINA_ROPE_SCALING}.factor`)) {
    const num = (k: string): number => {
      const v = meta.get(`${WINA_ROPE_SCALING}.${k}`);
      if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`${WINA_ROPE_SCALING}.${k}`, 'a positive number', describeFound(v));
      return shortestF32(v as number);
    };
    const scaling: RopeScaling = {
      type: 'llama3',
      factor: num('factor'),
      lowFreqFactor: num('low_freq_factor'),
      highFreqFactor: num('high_freq_factor'),
      originalMaxPositions: num('original_context_length'),
    };
    if (scaling.highFreqFactor <= scaling.lowFreqFactor) {
      fail(`${WINA_ROPE_SCALING}.high_freq_factor`, `more than low_freq_factor (${scaling.lowFreqFactor})`, `${scaling.highFreqFactor}`);
    }
    return scaling;
  }
  const bytes = new Uint8Array(t.byteLength);
  bytes.set(source.read(t.offset, t.byteLength));
  const scaling = fitLlama3RopeScaling(new Float32Array(bytes.buffer), headDim, ropeTheta);
  if (scaling === null) {
    fail(t.name, 'llama3 RoPE scaling factors', 'factors that llama3 scaling does not produce', [
      'Load the safetensors checkpoint (config.json rope_scaling) instead.',
    ]);
  }
  return scaling as RopeScaling;
}
