// Opening checkpoints (safetensors folders, GGUF files) and reading their tensors one at a time.
// Opening reads headers, config and tokenizer files only; tensor bytes are read on demand with
// positional reads so that loading never holds a second full copy of the weights.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { WinaLoadError, describeFound } from '../errors.js';
import { checkTensorsAgainstConfig, parseEosTokenIds, readModelConfig } from './config.js';
import { openGgufCheckpoint, type GgufCheckpoint } from './gguf.js';
import { readSafetensorsFile, readSafetensorsFolder } from './safetensors.js';
import { openForReading, readFully } from './source.js';
import type { Checkpoint, TensorInfo, TokenizerFiles } from './types.js';

export type { Checkpoint, FileDType, ModelConfig, RopeScaling, TensorInfo, TensorToWrite, TokenizerFiles } from './types.js';
export type { GgufCheckpoint } from './gguf.js';

const OPEN_FIXES = [
  'Pass a folder with config.json and *.safetensors (as written by save_pretrained), or a .gguf file.',
];

/**
 * Opens a checkpoint: a folder with config.json + safetensors (single or sharded), a `.gguf` file,
 * or a folder holding exactly one `.gguf` file. GGUF checkpoints are GgufCheckpoint (with the raw
 * metadata; tokenizer is null, built from `tokenizer.ggml.*` elsewhere).
 */
export async function openCheckpoint(target: string): Promise<Checkpoint> {
  const resolved = path.resolve(target);
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(resolved);
  } catch (err) {
    throw new WinaLoadError({ file: resolved, expected: 'a checkpoint folder or a .gguf file', found: 'no such file or folder', fixes: OPEN_FIXES, cause: err });
  }
  if (stat.isFile()) {
    if (resolved.endsWith('.gguf')) return openGgufCheckpoint(resolved);
    if (resolved.endsWith('.safetensors')) return openSafetensorsCheckpoint(path.dirname(resolved), resolved);
    throw new WinaLoadError({ file: resolved, expected: 'a .gguf or .safetensors file', found: 'another kind of file', fixes: OPEN_FIXES });
  }
  const entries = await fs.promises.readdir(resolved);
  if (entries.includes('config.json')) return openSafetensorsCheckpoint(resolved);
  const ggufs = entries.filter((e) => e.endsWith('.gguf'));
  if (ggufs.length === 1) return openGgufCheckpoint(path.join(resolved, ggufs[0]));
  throw new WinaLoadError({
    file: resolved,
    expected: 'config.json with safetensors weights, or exactly one .gguf file',
    found: ggufs.length === 0 ? 'neither' : `${ggufs.length} .gguf files: ${describeFound(ggufs)}`,
    fixes: ggufs.length > 1 ? ['Pass the path of the .gguf file to use.'] : OPEN_FIXES,
  });
}

export function isGgufCheckpoint(checkpoint: Checkpoint): checkpoint is GgufCheckpoint {
  return checkpoint.format === 'gguf';
}

async function openSafetensorsCheckpoint(folder: string, onlyFile?: string): Promise<Checkpoint> {
  const config = readModelConfig(path.join(folder, 'config.json'));
  const tensors = onlyFile === undefined
    ? readSafetensorsFolder(folder).tensors
    : new Map(readSafetensorsFile(onlyFile).tensors.map((t) => [t.name, t]));
  checkTensorsAgainstConfig(config, tensors, folder);

  const tokenizerJson = await readJsonIfPresent(path.join(folder, 'tokenizer.json'));
  const tokenizerConfig = await readJsonIfPresent(path.join(folder, 'tokenizer_config.json'));
  const tokenizer: TokenizerFiles | null = tokenizerJson === null ? null : { json: tokenizerJson, config: tokenizerConfig ?? {} };
  const generationFile = path.join(folder, 'generation_config.json');
  const generationConfig = await readJsonIfPresent(generationFile);
  if (generationConfig !== null && generationConfig.eos_token_id != null) {
    // generate() stops on generation_config's eos ids (Llama 3 instruct lists several there).
    const extra = parseEosTokenIds(generationConfig.eos_token_id, (found) => {
      throw new WinaLoadError({ file: generationFile, what: 'eos_token_id', expected: 'a token id or a list of token ids', found: describeFound(found) });
    });
    config.eosTokenIds = [...new Set([...config.eosTokenIds, ...extra])];
  }
  let totalBytes = 0;
  for (const t of tensors.values()) totalBytes += t.byteLength;
  return { format: 'safetensors', path: folder, config, tensors, tokenizer, generationConfig, totalBytes };
}

async function readJsonIfPresent(file: string): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new WinaLoadError({ file, expected: 'a readable file', found: (err as NodeJS.ErrnoException).code ?? 'an error', cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new WinaLoadError({ file, expected: 'valid JSON', found: describeFound((err as Error).message, 120), cause: err });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new WinaLoadError({ file, expected: 'a JSON object', found: describeFound(json) });
  }
  return json as Record<string, unknown>;
}

// ---- tensor data ---------------------------------------------------------------------------------

/**
 * The stored bytes of one tensor (positional reads; the file is opened and closed per call). With
 * `into` (at least byteLength bytes) no buffer is allocated; the result is a view of `into`.
 */
export function readTensorBytes(info: TensorInfo, into?: Buffer): Buffer {
  if (into !== undefined && into.length < info.byteLength) {
    throw new RangeError(`readTensorBytes: buffer of ${into.length} bytes for ${info.name} (${info.byteLength} bytes)`);
  }
  const out = into === undefined ? Buffer.alloc(info.byteLength) : into.subarray(0, info.byteLength);
  const fd = openForReading(info.file);
  try {
    readFully(fd, info.file, info.offset, info.byteLength, out);
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** A tensor as f32 in Hugging Face layout: dequantized (F16/BF16/Q8_0) and rows un-permuted. */
export function readTensorAsF32(info: TensorInfo): Float32Array {
  const n = info.shape.reduce((a, b) => a * b, 1);
  let values: Float32Array;
  if (info.dtype === 'F32') {
    values = new Float32Array(n);
    readTensorBytes(info, Buffer.from(values.buffer));
  } else {
    // A fresh ArrayBuffer keeps the 2-byte alignment the Uint16Array views need.
    const bytes = readTensorBytes(info, Buffer.from(new ArrayBuffer(info.byteLength)));
    values = decodeToF32(info.dtype, bytes, n);
  }
  if (info.rowPermutation === undefined) return values;
  return permuteRows(values, info.rowPermutation, n / info.shape[0]);
}

/** HF row r = stored row perm[r]. */
export function permuteRows(values: Float32Array, perm: Int32Array, rowLength: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < perm.length; r++) {
    out.set(values.subarray(perm[r] * rowLength, (perm[r] + 1) * rowLength), r * rowLength);
  }
  return out;
}

/** Converts F16 / BF16 / Q8_0 bytes (2-byte aligned) to n floats. */
export function decodeToF32(dtype: 'F16' | 'BF16' | 'Q8_0', bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  if (dtype === 'BF16') {
    const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    const dst = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) dst[i] = src[i] << 16;
  } else if (dtype === 'F16') {
    const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    const table = f16Table();
    for (let i = 0; i < n; i++) out[i] = table[src[i]];
  } else {
    dequantizeQ8_0(bytes, out);
  }
  return out;
}

/** Q8_0: blocks of 32 values along the innermost dimension, each an f16 scale + 32 int8 (34 bytes). */
export function dequantizeQ8_0(bytes: Uint8Array, out: Float32Array): void {
  const table = f16Table();
  const blocks = out.length / 32;
  for (let b = 0; b < blocks; b++) {
    const at = b * 34;
    const scale = table[bytes[at] | (bytes[at + 1] << 8)];
    for (let j = 0; j < 32; j++) {
      const q = bytes[at + 2 + j];
      out[b * 32 + j] = scale * (q > 127 ? q - 256 : q);
    }
  }
}

let f16Values: Float32Array | null = null;

/** All 65536 half-precision values as f32 (256 KiB, built once): one lookup per element. */
function f16Table(): Float32Array {
  if (f16Values !== null) return f16Values;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0) table[h] = sign * mantissa * 2 ** -24;
    else if (exponent === 31) table[h] = mantissa === 0 ? sign * Infinity : NaN;
    else table[h] = sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
  }
  f16Values = table;
  return table;
}
