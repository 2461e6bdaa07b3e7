// safetensors headers: u64 LE header length, a JSON header {name: {dtype, shape, data_offsets}} and
// the data section. Only the header is read here; tensor bytes stay on disk until readTensorBytes().
// Every field is validated because the header is untrusted input that decides where we read.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { WinaLoadError, describeFound } from '../errors.js';
import { openFileSource, type ByteSource } from './source.js';
import type { FileDType, TensorInfo } from './types.js';

/** The reference implementation refuses larger headers too; it bounds what a bad length can allocate. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

const DTYPE_BYTES: Partial<Record<string, number>> = { F32: 4, F16: 2, BF16: 2 };

/** dtypes the format defines that we cannot compute with (named separately from typos in errors). */
const UNSUPPORTED_DTYPES = new Set([
  'F64', 'I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL', 'C64',
  'F8_E4M3', 'F8_E5M2', 'F8_E8M0', 'F6_E2M3', 'F6_E3M2', 'F4',
]);

const SAFETENSORS_FIXES = [
  'Re-download or re-export the checkpoint (safetensors.torch.save_file or save_pretrained).',
];

export interface SafetensorsFile {
  file: string;
  size: number;
  /** Absolute offset of the data section (8 + header length). */
  dataOffset: number;
  /** The optional `__metadata__` string map. */
  metadata: Record<string, string> | null;
  /** In file (offset) order; `name` and `fileName` are the names in the header. */
  tensors: TensorInfo[];
}

function fail(file: string, what: string | undefined, expected: string, found: string, fixes = SAFETENSORS_FIXES): never {
  throw new WinaLoadError({ file, what, expected, found, fixes });
}

// ---- single file --------------------------------------------------------------------------------

export function readSafetensorsFile(file: string): SafetensorsFile {
  const source = openFileSource(file);
  try {
    return parseSafetensors(source);
  } finally {
    source.close();
  }
}

export function parseSafetensors(source: ByteSource): SafetensorsFile {
  const file = source.name;
  if (source.size < 8) fail(file, 'header length', 'an 8-byte header length', `a ${source.size}-byte file`);
  const lengthBytes = source.read(0, 8);
  const headerLength = new DataView(lengthBytes.buffer, lengthBytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    fail(file, 'header length', `at most ${SAFETENSORS_MAX_HEADER_BYTES} bytes`, `${headerLength}`);
  }
  const n = Number(headerLength);
  if (8 + n > source.size) {
    fail(file, 'header length', `a header inside the ${source.size}-byte file`, `${n} bytes (past the end; truncated file?)`);
  }
  const header = parseHeaderJson(file, source.read(8, n));
  const dataOffset = 8 + n;
  const dataSize = source.size - dataOffset;

  let metadata: Record<string, string> | null = null;
  const tensors: TensorInfo[] = [];
  const ranges: Array<{ name: string; begin: number; end: number }> = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(file, entry);
      continue;
    }
    const { dtype, shape, begin, end } = parseEntry(file, name, entry);
    if (end > dataSize) {
      fail(file, name, `data_offsets inside the ${dataSize}-byte data section`, `[${begin}, ${end}] (truncated file?)`);
    }
    ranges.push({ name, begin, end });
    tensors.push({ name, fileName: name, dtype, shape, file, offset: dataOffset + begin, byteLength: end - begin });
  }
  checkNoOverlap(file, ranges);
  tensors.sort((a, b) => a.offset - b.offset);
  return { file, size: source.size, dataOffset, metadata, tensors };
}

function parseHeaderJson(file: string, bytes: Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    fail(file, 'header', 'UTF-8 JSON', 'bytes that are not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    fail(file, 'header', 'valid JSON', `a JSON syntax error (${describeFound((err as Error).message, 120)})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    fail(file, 'header', 'a JSON object', describeFound(header));
  }
  // JSON.parse keeps the last of two equal keys; a duplicated tensor name must not pass silently.
  const duplicate = firstDuplicateTopLevelKey(text);
  if (duplicate !== null) fail(file, duplicate, 'each tensor name once', 'a duplicate name in the header');
  return header as Record<string, unknown>;
}

function parseMetadata(file: string, entry: unknown): Record<string, string> {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
    fail(file, '__metadata__', 'an object of strings', describeFound(entry));
  }
  for (const [key, value] of Object.entries(entry)) {
    if (typeof value !== 'string') fail(file, `__metadata__.${key}`, 'a string', describeFound(value));
  }
  return entry as Record<string, string>;
}

function parseEntry(file: string, name: string, entry: unknown): { dtype: FileDType; shape: number[]; begin: number; end: number } {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
    fail(file, name, 'an object {dtype, shape, data_offsets}', describeFound(entry));
  }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== 'string') fail(file, `${name}.dtype`, 'a dtype string', describeFound(dtype));
  const elementBytes = DTYPE_BYTES[dtype];
  if (elementBytes === undefined) {
    const kind = UNSUPPORTED_DTYPES.has(dtype) ? 'unsupported dtype' : 'unknown dtype';
    fail(file, `${name}.dtype`, 'F32, F16 or BF16', `${kind} ${describeFound(dtype)}`, [
      'Convert the checkpoint to float32, float16 or bfloat16 (e.g. model.to(torch.bfloat16).save_pretrained(...)).',
    ]);
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    fail(file, `${name}.shape`, 'an array of non-negative integers', describeFound(shape));
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
    fail(file, `${name}.data_offsets`, '[begin, end] with 0 <= begin <= end', describeFound(offsets));
  }
  const [begin, end] = offsets as [number, number];
  const elements = shape.reduce((a: number, b: number) => a * b, 1);
  const expectedBytes = elements * elementBytes;
  if (!Number.isSafeInteger(expectedBytes) || expectedBytes !== end - begin) {
    fail(
      file,
      name,
      `${describeFound(shape)} x ${dtype} = ${expectedBytes} bytes`,
      `data_offsets [${begin}, ${end}] (${end - begin} bytes)`,
    );
  }
  return { dtype: dtype as FileDType, shape: shape as number[], begin, end };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function checkNoOverlap(file: string, ranges: Array<{ name: string; begin: number; end: number }>): void {
  const nonEmpty = ranges.filter((r) => r.end > r.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < nonEmpty.length; i++) {
    const prev = nonEmpty[i - 1];
    const cur = nonEmpty[i];
    if (cur.begin < prev.end) {
      fail(file, cur.name, `data_offsets after those of ${prev.name} (ending at ${prev.end})`, `[${cur.begin}, ${cur.end}] (overlapping)`);
    }
  }
}

/**
 * The first key that occurs twice at the top level of a JSON object text, or null. The text is
 * already known to be valid JSON, so a small scanner that tracks depth and strings is enough.
 */
export function firstDuplicateTopLevelKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = depth === 1 && c === '{';
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return null;
}

// ---- folders (single file or sharded) -----------------------------------------------------------

export interface SafetensorsFolder {
  /** Keyed by tensor name. */
  tensors: Map<string, TensorInfo>;
  /** The .safetensors files read, absolute paths. */
  files: string[];
}

export const SAFETENSORS_INDEX = 'model.safetensors.index.json';

/**
 * All tensors of a checkpoint folder: `model.safetensors.index.json` + its shards when present,
 * else `model.safetensors`, else the folder's only `*.safetensors` file.
 */
export function readSafetensorsFolder(folder: string): SafetensorsFolder {
  const indexFile = path.join(folder, SAFETENSORS_INDEX);
  if (fs.existsSync(indexFile)) return readShardedFolder(folder, indexFile);
  const single = path.join(folder, 'model.safetensors');
  if (fs.existsSync(single)) return fromFiles([readSafetensorsFile(single)]);
  const candidates = fs.readdirSync(folder).filter((f) => f.endsWith('.safetensors'));
  if (candidates.length !== 1) {
    fail(folder, undefined, 'model.safetensors, one *.safetensors file, or model.safetensors.index.json', candidates.length === 0 ? 'no .safetensors file' : `${candidates.length} .safetensors files and no index: ${describeFound(candidates)}`, [
      'Point at the folder written by save_pretrained (it holds config.json and the weights).',
      'For sharded weights keep model.safetensors.index.json next to the shards.',
    ]);
  }
  return fromFiles([readSafetensorsFile(path.join(folder, candidates[0]))]);
}

function fromFiles(parsed: SafetensorsFile[]): SafetensorsFolder {
  const tensors = new Map<string, TensorInfo>();
  for (const p of parsed) {
    for (const t of p.tensors) {
      const other = tensors.get(t.name);
      if (other !== undefined) fail(t.file, t.name, 'each tensor in one shard', `a second copy in ${other.file}`);
      tensors.set(t.name, t);
    }
  }
  return { tensors, files: parsed.map((p) => p.file) };
}

function readShardedFolder(folder: string, indexFile: string): SafetensorsFolder {
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  } catch (err) {
    fail(indexFile, undefined, 'valid JSON', describeFound((err as Error).message, 120));
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
    fail(indexFile, 'weight_map', 'an object {tensor name: shard file}', describeFound(weightMap));
  }
  const shardOf = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap as Record<string, unknown>)) {
    // Shard names come from the file; never let them reach outside the folder.
    if (typeof shard !== 'string' || !shard.endsWith('.safetensors') || shard !== path.basename(shard)) {
      fail(indexFile, `weight_map.${name}`, 'a .safetensors file name in the same folder', describeFound(shard));
    }
    shardOf.set(name, shard);
  }
  const shards = [...new Set(shardOf.values())].sort();
  const parsed = shards.map((shard) => {
    const shardFile = path.join(folder, shard);
    if (!fs.existsSync(shardFile)) {
      fail(indexFile, shard, 'the shard named by weight_map to exist', 'no such file', [
        'Download every shard listed in model.safetensors.index.json.',
      ]);
    }
    return readSafetensorsFile(shardFile);
  });
  const result = fromFiles(parsed);
  for (const [name, shard] of shardOf) {
    const t = result.tensors.get(name);
    if (t === undefined || path.basename(t.file) !== shard) {
      fail(path.join(folder, shard), name, `tensor ${name} (listed in ${SAFETENSORS_INDEX})`, t === undefined ? 'no such tensor' : `the tensor in ${t.file}`);
    }
  }
  for (const t of result.tensors.values()) {
    if (!shardOf.has(t.name)) fail(t.file, t.name, `only tensors listed in ${SAFETENSORS_INDEX}`, 'a tensor missing from the index');
  }
  return result;
}
