// safetensors loader: header validation (every malformed case names file and field), sharded
// folders, positional tensor reads, and the tiny-en-llama BF16/F32 pair.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { WinaLoadError } from '../lib/errors.js';
import { expectedTensorShapes } from '../lib/loaders/config.js';
import { openCheckpoint, readTensorAsF32, readTensorBytes } from '../lib/loaders/index.js';
import { firstDuplicateTopLevelKey, parseSafetensors, readSafetensorsFolder } from '../lib/loaders/safetensors.js';
import { bufferSource } from '../lib/loaders/source.js';
import { writeSafetensors } from '../lib/loaders/writers.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tiny = path.resolve(repoRoot, '../shared/models/tiny-en-llama');
const noShared = !fs.existsSync(tiny);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-st-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A safetensors file from a header object or raw header text (no writer involved). */
function stBytes(header: unknown, dataBytes: number, rawHeader?: Buffer): Buffer {
  const json = rawHeader ?? Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(dataBytes)]);
}

function loadError(fn: () => unknown): WinaLoadError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(WinaLoadError);
    return err as WinaLoadError;
  }
  throw new Error('expected a WinaLoadError, nothing was thrown');
}

const ok = { a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] }, b: { dtype: 'BF16', shape: [4], data_offsets: [24, 32] } };

describe('safetensors header validation', () => {
  it('parses a valid header into absolute offsets, in file order', () => {
    const st = parseSafetensors(bufferSource('m.safetensors', stBytes({ __metadata__: { format: 'pt' }, b: ok.b, a: ok.a }, 32)));
    const header = JSON.stringify({ __metadata__: { format: 'pt' }, b: ok.b, a: ok.a });
    expect(st.metadata).toEqual({ format: 'pt' });
    expect(st.tensors.map((t) => [t.name, t.dtype, t.shape, t.offset, t.byteLength])).toEqual([
      ['a', 'F32', [2, 3], 8 + header.length, 24],
      ['b', 'BF16', [4], 8 + header.length + 24, 8],
    ]);
  });

  const entry = (patch: object): object => ({ w: { ...ok.a, ...patch } });
  const cases: Array<[string, () => Buffer, string | undefined, RegExp]> = [
    ['a file shorter than 8 bytes', () => Buffer.alloc(5), 'header length', /8-byte header length/],
    ['a header length past the end', () => stBytes(ok, 32).subarray(0, 40), 'header length', /past the end/],
    ['a header length over 100 MB', () => { const b = stBytes(ok, 32); b.writeBigUInt64LE(2n ** 40n); return b; }, 'header length', /at most 100000000/],
    ['invalid UTF-8', () => stBytes(null, 0, Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])), 'header', /UTF-8/],
    ['invalid JSON', () => stBytes(null, 0, Buffer.from('{"a": {"dtype": "F32",')), 'header', /JSON syntax error/],
    ['a JSON array', () => stBytes([1, 2], 0), 'header', /a JSON object/],
    ['an unknown dtype', () => stBytes(entry({ dtype: 'F17' }), 24), 'w.dtype', /unknown dtype "F17"/],
    ['an unsupported dtype', () => stBytes(entry({ dtype: 'I64', shape: [3] }), 24), 'w.dtype', /unsupported dtype "I64"/],
    ['a negative dimension', () => stBytes(entry({ shape: [-2, 3] }), 24), 'w.shape', /non-negative integers/],
    ['a fractional dimension', () => stBytes(entry({ shape: [1.5, 4] }), 24), 'w.shape', /non-negative integers/],
    ['reversed data_offsets', () => stBytes(entry({ data_offsets: [24, 0] }), 24), 'w.data_offsets', /begin <= end/],
    ['data_offsets of 3 numbers', () => stBytes(entry({ data_offsets: [0, 12, 24] }), 24), 'w.data_offsets', /\[begin, end\]/],
    ['offsets past the data section', () => stBytes(ok, 31), 'b', /inside the 31-byte data section/],
    ['shape x dtype != byte range', () => stBytes(entry({ shape: [2, 4] }), 24), 'w', /\[2,4\] x F32 = 32 bytes/],
    ['a shape whose size overflows', () => stBytes(entry({ shape: [2 ** 40, 2 ** 40] }), 24), 'w', /x F32/],
    ['overlapping tensors', () => stBytes({ a: ok.a, b: { ...ok.b, data_offsets: [20, 28] } }, 32), 'b', /overlapping/],
    ['a duplicate name', () => stBytes(null, 32, Buffer.from(`{"a":${JSON.stringify(ok.a)},"a":${JSON.stringify(ok.a)}}`)), 'a', /each tensor name once/],
    ['a non-string __metadata__ value', () => stBytes({ __metadata__: { n: 1 }, ...ok }, 32), '__metadata__.n', /a string/],
    ['a non-object entry', () => stBytes({ w: [1, 2] }, 0), 'w', /an object/],
  ];
  for (const [title, bytes, what, message] of cases) {
    it(`refuses ${title}, naming the file and ${what}`, () => {
      const err = loadError(() => parseSafetensors(bufferSource('bad.safetensors', bytes())));
      expect(err.file).toBe('bad.safetensors');
      expect(err.what).toBe(what);
      expect(err.message).toMatch(message);
      expect(err.message.startsWith(`bad.safetensors: ${what}: expected `)).toBe(true);
      expect(err.message).toContain('Possible fixes:');
    });
  }

  it('finds duplicate keys only at the top level, across escapes and nesting', () => {
    expect(firstDuplicateTopLevelKey('{"a":{"x":1,"x":2},"b":[{"a":1}]}')).toBeNull();
    expect(firstDuplicateTopLevelKey('{"a\\"":1,"b":{"c":"}"},"a\\"":2}')).toBe('a"');
    expect(firstDuplicateTopLevelKey('{"\\u0061":1,"a":2}')).toBe('a');
  });

  it('metadata-only: a 40 GB tensor is described without reading its data', () => {
    const bytes = 8192 * 1310720 * 4;
    const head = stBytes({ w: { dtype: 'F32', shape: [8192, 1310720], data_offsets: [0, bytes] } }, 0);
    const st = parseSafetensors(bufferSource('huge.safetensors', head, head.length + bytes));
    expect(st.tensors[0].byteLength).toBe(bytes);
  });
});

describe('reading tensors', () => {
  it('readTensorBytes reads the exact range, into a caller buffer when given; readTensorAsF32 decodes BF16/F16', async () => {
    const file = path.join(tmp, 'read.safetensors');
    const f32 = new Float32Array([1.5, -2, 3.25, 0]);
    const bf16 = new Uint16Array([0x3fc0, 0xc000, 0x7f80, 0x8000]); // 1.5, -2, inf, -0
    const f16 = new Uint16Array([0x3e00, 0xc000, 0x0001, 0x7c00]); // 1.5, -2, 2^-24, inf
    await writeSafetensors(file, [
      { name: 'f32', dtype: 'F32', shape: [2, 2], data: new Uint8Array(f32.buffer) },
      { name: 'bf16', dtype: 'BF16', shape: [4], data: new Uint8Array(bf16.buffer) },
      { name: 'f16', dtype: 'F16', shape: [4], data: new Uint8Array(f16.buffer) },
    ]);
    const { tensors } = readSafetensorsFolder(tmp);
    const t = tensors.get('f32')!;
    expect(Array.from(new Float32Array(new Uint8Array(readTensorBytes(t)).buffer))).toEqual([1.5, -2, 3.25, 0]);
    const into = Buffer.alloc(64, 7);
    const view = readTensorBytes(t, into);
    expect(view.buffer).toBe(into.buffer);
    expect(view.length).toBe(16);
    expect(into[16]).toBe(7);
    expect(() => readTensorBytes(t, Buffer.alloc(8))).toThrow(RangeError);
    expect(Array.from(readTensorAsF32(tensors.get('bf16')!))).toEqual([1.5, -2, Infinity, -0]);
    expect(Array.from(readTensorAsF32(tensors.get('f16')!))).toEqual([1.5, -2, 2 ** -24, Infinity]);
  });

  it('a truncated data section is a WinaLoadError naming the file', () => {
    const file = path.join(tmp, 'short.safetensors');
    fs.writeFileSync(file, stBytes(ok, 32));
    const st = parseSafetensors(bufferSource(file, fs.readFileSync(file)));
    fs.truncateSync(file, fs.statSync(file).size - 4); // shrinks after the header was read
    const err = loadError(() => readTensorBytes(st.tensors[1]));
    expect(err.file).toBe(file);
  });
});

describe('folders and shards', () => {
  const t = (name: string, n: number): { name: string; dtype: 'F32'; shape: number[]; data: Uint8Array } => ({
    name, dtype: 'F32', shape: [n], data: new Uint8Array(new Float32Array(n).fill(n).buffer),
  });
  async function shardedFolder(name: string, index: Record<string, string>): Promise<string> {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir);
    await writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), [t('a', 2), t('b', 3)]);
    await writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), [t('c', 4)]);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: index }));
    return dir;
  }
  const s1 = 'model-00001-of-00002.safetensors';
  const s2 = 'model-00002-of-00002.safetensors';

  it('reads every shard named by the index', async () => {
    const dir = await shardedFolder('good', { a: s1, b: s1, c: s2 });
    const { tensors, files } = readSafetensorsFolder(dir);
    expect(files.map((f) => path.basename(f))).toEqual([s1, s2]);
    expect(Array.from(readTensorAsF32(tensors.get('c')!))).toEqual([4, 4, 4, 4]);
    expect(path.basename(tensors.get('b')!.file)).toBe(s1);
  });

  it('refuses a missing shard, a tensor absent from its shard, an unindexed tensor and a path outside the folder', async () => {
    const empty = path.join(tmp, 'empty');
    fs.mkdirSync(empty);
    expect(loadError(() => readSafetensorsFolder(empty)).message).toMatch(/found no \.safetensors file/);
    const cases: Array<[string, Record<string, string>, string]> = [
      ['missing', { a: s1, b: s1, c: 'model-00003-of-00002.safetensors' }, 'model-00003-of-00002.safetensors'],
      ['wrong-shard', { a: s1, b: s2, c: s2 }, 'b'],
      ['unindexed', { a: s1, c: s2 }, 'b'],
      ['escape', { a: s1, b: s1, c: `../${s2}` }, 'weight_map.c'],
    ];
    for (const [name, index, what] of cases) {
      const dir = await shardedFolder(name, index);
      const err = loadError(() => readSafetensorsFolder(dir));
      expect(err.what, name).toBe(what);
      expect(err.file.startsWith(dir), name).toBe(true);
    }
  });

  it('refuses a folder with several .safetensors files and no index', async () => {
    const dir = path.join(tmp, 'two');
    fs.mkdirSync(dir);
    await writeSafetensors(path.join(dir, 'x.safetensors'), [t('a', 1)]);
    await writeSafetensors(path.join(dir, 'y.safetensors'), [t('a', 1)]);
    const err = loadError(() => readSafetensorsFolder(dir));
    expect(err.message).toMatch(/2 \.safetensors files and no index/);
  });
});

describe.skipIf(noShared)('tiny-en-llama safetensors (skipped: ../shared not found)', () => {
  it('BF16 file = F32 file rounded to nearest even, tensor by tensor, with the config\'s names', async () => {
    const bf16 = await openCheckpoint(tiny);
    const f32 = await openCheckpoint(path.join(tiny, 'f32'));
    expect([...bf16.tensors.keys()].sort()).toEqual([...expectedTensorShapes(bf16.config).keys()].sort());
    expect(bf16.totalBytes * 2).toBe(f32.totalBytes);
    for (const [name, info] of f32.tensors) {
      const wide = new Uint32Array(readTensorAsF32(info).buffer);
      const narrow = new Uint32Array(readTensorAsF32(bf16.tensors.get(name)!).buffer);
      for (let i = 0; i < wide.length; i++) {
        const x = wide[i];
        const rounded = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) << 16; // no NaNs in trained weights
        if (narrow[i] !== rounded >>> 0) throw new Error(`${name}[${i}]: ${narrow[i]} != ${rounded >>> 0}`);
      }
    }
  });

  it('aidreams260K: tied embeddings, no lm_head; a single .safetensors path opens with its folder\'s config', async () => {
    const dir = path.resolve(tiny, '../aidreams260K');
    const ck = await openCheckpoint(dir);
    expect(ck.config.tieWordEmbeddings).toBe(true);
    expect(ck.tensors.has('lm_head.weight')).toBe(false);
    expect(ck.tensors.size).toBe(2 + 4 * 9);
    expect(ck.tokenizer).toBeNull();
    const single = await openCheckpoint(path.join(dir, 'model.safetensors'));
    expect(single.config).toEqual(ck.config);
    expect(single.totalBytes).toBe(ck.totalBytes);
  });

  it('reads tokenizer.json, tokenizer_config.json and generation_config.json', async () => {
    const ck = await openCheckpoint(tiny);
    expect(ck.format).toBe('safetensors');
    expect((ck.tokenizer!.json.model as { type: string }).type).toBe('BPE');
    expect(ck.tokenizer!.config.bos_token).toBe('<s>');
    expect(ck.generationConfig).toEqual({ bos_token_id: 1, eos_token_id: 2, do_sample: false, max_length: 256 });
    expect(ck.config.eosTokenIds).toEqual([2]);
  });
});
