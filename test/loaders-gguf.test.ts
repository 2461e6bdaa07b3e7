// GGUF loader: the three llama.cpp-converted tiny-en-llama files must give the same Hugging Face
// tensors as the safetensors checkpoint (exactly, or within Q8_0's quantisation error), plus header
// validation, name mapping, the q/k permutation and llama3 RoPE factors on hand-made inputs.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { WinaLoadError } from '../lib/errors.js';
import {
  fitLlama3RopeScaling,
  ggufCheckpointFromSource,
  ggufQkRowPermutation,
  ggufToHfName,
  hfToGgufName,
  llama3RopeFactors,
  parseGgufHeader,
  readGgufHeader,
  shortestF32,
} from '../lib/loaders/gguf.js';
import { isGgufCheckpoint, openCheckpoint, readTensorAsF32 } from '../lib/loaders/index.js';
import { bufferSource } from '../lib/loaders/source.js';
import type { Checkpoint } from '../lib/loaders/types.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const tiny = path.join(shared, 'models/tiny-en-llama');
const vocabGguf = path.join(shared, 'models/gguf-vocab-llama/ggml-vocab-llama.gguf');
const noShared = !fs.existsSync(tiny);

// ---- a minimal GGUF encoder for malformed inputs (independent of lib/loaders/writers.ts) --------

type Kv = [key: string, type: number, value: Buffer];
const u32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
const u64 = (v: number | bigint): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
const str = (s: string): Buffer => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)]);
const f32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeFloatLE(v); return b; };

interface RawTensor { name: string; ne: number[]; type: number; offset: number }

function ggufBytes(kvs: Kv[], tensors: RawTensor[], dataBytes: number, opts: { version?: number; magic?: string } = {}): Buffer {
  const parts: Buffer[] = [Buffer.from(opts.magic ?? 'GGUF'), u32(opts.version ?? 3), u64(tensors.length), u64(kvs.length)];
  for (const [k, type, value] of kvs) parts.push(str(k), u32(type), value);
  for (const t of tensors) parts.push(str(t.name), u32(t.ne.length), ...t.ne.map((n) => u64(n)), u32(t.type), u64(t.offset));
  let head = Buffer.concat(parts);
  head = Buffer.concat([head, Buffer.alloc(Math.ceil(head.length / 32) * 32 - head.length)]);
  return Buffer.concat([head, Buffer.alloc(dataBytes)]);
}

/** A 1-layer llama (hidden 8, 2 heads of 4, ff 16, vocab 4) with every tensor in F32. */
function tinyLlamaGguf(overrides: { extraKv?: Kv[]; dropKey?: string; tensorType?: number; extraTensor?: RawTensor } = {}): Buffer {
  const kvs: Kv[] = [
    ['general.architecture', 8, str('llama')],
    ['llama.context_length', 4, u32(16)],
    ['llama.embedding_length', 4, u32(8)],
    ['llama.block_count', 4, u32(1)],
    ['llama.feed_forward_length', 4, u32(16)],
    ['llama.attention.head_count', 4, u32(2)],
    ['llama.attention.layer_norm_rms_epsilon', 6, f32(1e-5)],
    ['llama.vocab_size', 4, u32(4)],
    ...(overrides.extraKv ?? []),
  ].filter(([k]) => k !== overrides.dropKey) as Kv[];
  const shapes: Array<[string, number[]]> = [
    ['token_embd.weight', [8, 4]],
    ['output_norm.weight', [8]],
    ['blk.0.attn_norm.weight', [8]],
    ['blk.0.attn_q.weight', [8, 8]],
    ['blk.0.attn_k.weight', [8, 8]],
    ['blk.0.attn_v.weight', [8, 8]],
    ['blk.0.attn_output.weight', [8, 8]],
    ['blk.0.ffn_norm.weight', [8]],
    ['blk.0.ffn_gate.weight', [8, 16]],
    ['blk.0.ffn_up.weight', [8, 16]],
    ['blk.0.ffn_down.weight', [16, 8]],
  ];
  let offset = 0;
  const tensors: RawTensor[] = shapes.map(([name, ne]) => {
    const t = { name, ne, type: name === 'blk.0.attn_q.weight' ? (overrides.tensorType ?? 0) : 0, offset };
    offset += Math.ceil((ne.reduce((a, b) => a * b, 1) * 4) / 32) * 32;
    return t;
  });
  if (overrides.extraTensor) tensors.push({ ...overrides.extraTensor, offset });
  return ggufBytes(kvs, tensors, offset + 64);
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

// ---- fixtures ------------------------------------------------------------------------------------

describe.skipIf(noShared)('tiny-en-llama GGUF files from llama.cpp (skipped: ../shared not found)', () => {
  let f32Ref: Checkpoint;
  let bf16Ref: Checkpoint;
  const open = async (name: string): Promise<Checkpoint> => openCheckpoint(path.join(tiny, 'gguf', name));

  it('opens the safetensors references', async () => {
    f32Ref = await openCheckpoint(path.join(tiny, 'f32'));
    bf16Ref = await openCheckpoint(tiny);
    expect(f32Ref.tensors.size).toBe(39);
  });

  it('F32 GGUF: same config and, after un-permuting q/k, exactly the same f32 tensors', async () => {
    const ck = await open('tiny-en-llama-f32.gguf');
    expect(isGgufCheckpoint(ck)).toBe(true);
    expect(ck.config).toEqual(f32Ref.config);
    expect([...ck.tensors.keys()].sort()).toEqual([...f32Ref.tensors.keys()].sort());
    for (const [name, ref] of f32Ref.tensors) {
      const t = ck.tensors.get(name)!;
      expect(t.shape, name).toEqual(ref.shape);
      expect(t.dtype).toBe('F32');
      expect(Buffer.from(readTensorAsF32(t).buffer).equals(Buffer.from(readTensorAsF32(ref).buffer)), name).toBe(true);
    }
  });

  it('the q/k rows really are permuted in the file (and only q/k)', async () => {
    const ck = await open('tiny-en-llama-f32.gguf');
    const permuted = [...ck.tensors.values()].filter((t) => t.rowPermutation !== undefined).map((t) => t.name).sort();
    expect(permuted).toEqual(
      [0, 1, 2, 3].flatMap((i) => [`model.layers.${i}.self_attn.k_proj.weight`, `model.layers.${i}.self_attn.q_proj.weight`]).sort(),
    );
    const q = ck.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
    const stored = readTensorAsF32({ ...q, rowPermutation: undefined });
    const hf = readTensorAsF32(f32Ref.tensors.get(q.name)!);
    expect(Buffer.from(stored.buffer).equals(Buffer.from(hf.buffer))).toBe(false);
  });

  it('BF16 GGUF: exactly the BF16 safetensors tensors', async () => {
    const ck = await open('tiny-en-llama-bf16.gguf');
    expect(ck.config).toEqual(bf16Ref.config);
    for (const [name, ref] of bf16Ref.tensors) {
      const t = ck.tensors.get(name)!;
      expect(t.shape, name).toEqual(ref.shape);
      expect(Buffer.from(readTensorAsF32(t).buffer).equals(Buffer.from(readTensorAsF32(ref).buffer)), name).toBe(true);
    }
  });

  it('Q8_0 GGUF: every value within its block quantisation error of the F32 weights', async () => {
    const ck = await open('tiny-en-llama-q8_0.gguf');
    expect(ck.config).toEqual(f32Ref.config);
    let quantized = 0;
    for (const [name, ref] of f32Ref.tensors) {
      const t = ck.tensors.get(name)!;
      const got = readTensorAsF32(t);
      const want = readTensorAsF32(ref);
      if (t.dtype !== 'Q8_0') {
        expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), name).toBe(true);
        continue;
      }
      quantized++;
      // Per block of 32: q = round(x / d), d = amax / 127 stored as f16, so the error is at most
      // d/2 plus 127 times the f16 rounding of d (2^-11 relative).
      let worst = 0;
      for (let b = 0; b < want.length; b += 32) {
        let amax = 0;
        for (let j = b; j < b + 32; j++) amax = Math.max(amax, Math.abs(want[j]));
        const bound = (amax / 127) * (0.5 + 127 * 2 ** -11) + 1e-12;
        for (let j = b; j < b + 32; j++) worst = Math.max(worst, Math.abs(got[j] - want[j]) / bound);
      }
      expect(worst, name).toBeLessThanOrEqual(1);
      expect(worst, name).toBeGreaterThan(0.2); // really quantised, not a copy
    }
    expect(quantized).toBeGreaterThanOrEqual(28);
  });

  it('exposes the raw tokenizer metadata and returns tokenizer: null', async () => {
    const ck = await open('tiny-en-llama-q8_0.gguf');
    if (!isGgufCheckpoint(ck)) throw new Error('not GGUF');
    expect(ck.tokenizer).toBeNull();
    expect(ck.ggufMetadata.get('tokenizer.ggml.model')).toBe('llama');
    const tokens = ck.ggufMetadata.get('tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(4096);
    expect(tokens.slice(0, 3)).toEqual(['<unk>', '<s>', '</s>']);
    expect(ck.ggufMetadata.get('tokenizer.ggml.scores')).toBeInstanceOf(Float32Array);
    expect(ck.ggufMetadataTypes.get('tokenizer.ggml.token_type')).toBe('array<i32>');
  });

  it('a folder holding several .gguf files is refused with the files named', async () => {
    const err = await openCheckpoint(path.join(tiny, 'gguf')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WinaLoadError);
    expect((err as Error).message).toContain('tiny-en-llama-q8_0.gguf');
  });
});

describe.skipIf(!fs.existsSync(vocabGguf))('vocab-only GGUF v3 (skipped: ../shared not found)', () => {
  it('parses 32000 tokens, scores and types', () => {
    const h = readGgufHeader(vocabGguf);
    expect(h.version).toBe(3);
    expect(h.tensors).toEqual([]);
    expect(h.metadata.size).toBe(17);
    const tokens = h.metadata.get('tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(32000);
    expect(tokens[29871]).toBe('\u2581');
    expect((h.metadata.get('tokenizer.ggml.scores') as Float32Array).length).toBe(32000);
    expect(Array.from((h.metadata.get('tokenizer.ggml.token_type') as Int32Array).slice(0, 4))).toEqual([2, 3, 3, 6]);
    expect(h.metadata.get('llama.embedding_length')).toBe(4096);
  });

  it('is not a model: opening it as a checkpoint names the missing tensor', async () => {
    const err = await openCheckpoint(vocabGguf).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WinaLoadError);
    expect((err as WinaLoadError).what).toBe('model.embed_tokens.weight');
  });
});

// ---- hand-made inputs ----------------------------------------------------------------------------

describe('GGUF header validation', () => {
  it('accepts the minimal llama file and maps it to HF names and shapes', () => {
    const ck = ggufCheckpointFromSource(bufferSource('tiny.gguf', tinyLlamaGguf()));
    expect(ck.config).toMatchObject({ arch: 'llama', hiddenSize: 8, numHeads: 2, numKvHeads: 2, headDim: 4, vocabSize: 4, tieWordEmbeddings: true, rmsNormEps: 1e-5 });
    expect(ck.tensors.get('model.layers.0.mlp.down_proj.weight')!.shape).toEqual([8, 16]);
    expect(ck.tensors.get('model.embed_tokens.weight')!.shape).toEqual([4, 8]);
  });

  it('accepts GGUF v2 (same layout as v3)', () => {
    const h = parseGgufHeader(bufferSource('v2.gguf', ggufBytes([['general.name', 8, str('x')]], [{ name: 'w', ne: [8], type: 0, offset: 0 }], 32, { version: 2 })));
    expect([h.version, h.metadata.get('general.name'), h.tensors[0].byteLength]).toEqual([2, 'x', 32]);
  });

  const cases: Array<[string, () => Buffer, string, RegExp]> = [
    ['bad magic', () => ggufBytes([], [], 0, { magic: 'GGUX' }), 'magic', /GGUF/],
    ['version 1', () => ggufBytes([], [], 0, { version: 1 }), 'version', /version 2 or 3/],
    ['big-endian', () => ggufBytes([], [], 0, { version: 0x03000000 }), 'version', /big-endian/],
    ['truncated header', () => ggufBytes([['x', 4, u32(1)]], [], 0).subarray(0, 39), 'metadata "x"', /truncated/],
    ['truncated tensor infos', () => tinyLlamaGguf().subarray(0, 100), 'tensor count', /fits in the \d+ bytes left/],
    ['tensor count past the file', () => Buffer.concat([Buffer.from('GGUF'), u32(3), u64(2n ** 62n), u64(0)]), 'tensor count', /fits/],
    ['metadata count past the file', () => Buffer.concat([Buffer.from('GGUF'), u32(3), u64(0), u64(2n ** 64n - 1n)]), 'metadata count', /fits/],
    ['string longer than the file', () => ggufBytes([['general.name', 8, u64(1e9)]], [], 0), 'metadata "general.name"', /string length/],
    ['unknown value type', () => ggufBytes([['x', 13, u32(0)]], [], 0), 'metadata "x"', /value type/],
    ['array count overflow', () => ggufBytes([['x', 9, Buffer.concat([u32(4), u64(2n ** 63n)])]], [], 0), 'metadata "x"', /array length/],
    ['bool out of range', () => ggufBytes([['x', 7, Buffer.from([7])]], [], 0), 'metadata "x"', /bool/],
    ['duplicate key', () => ggufBytes([['x', 4, u32(1)], ['x', 4, u32(2)]], [], 0), 'metadata "x"', /once/],
    ['alignment not a power of two', () => ggufBytes([['general.alignment', 4, u32(24)]], [], 0), 'metadata "general.alignment"', /power of two/],
    ['5 dimensions', () => ggufBytes([], [{ name: 't', ne: [1, 1, 1, 1, 1], type: 0, offset: 0 }], 32), 'tensor "t"', /dimensions/],
    ['tensor past the end', () => ggufBytes([], [{ name: 't', ne: [64], type: 0, offset: 0 }], 32), 'tensor "t"', /truncated/],
    ['misaligned offset', () => ggufBytes([], [{ name: 't', ne: [1], type: 0, offset: 4 }], 64), 'tensor "t"', /aligned/],
    ['overlapping tensors', () => ggufBytes([], [{ name: 'a', ne: [16], type: 0, offset: 0 }, { name: 'b', ne: [8], type: 0, offset: 32 }], 64), 'tensor "b"', /overlapping/],
    ['Q4_K tensor', () => ggufBytes([], [{ name: 'w', ne: [256], type: 12, offset: 0 }], 256), 'tensor "w"', /Q4_K \(ggml type 12\)/],
    ['Q8_0 row not a multiple of 32', () => ggufBytes([], [{ name: 'w', ne: [48, 2], type: 8, offset: 0 }], 256), 'tensor "w"', /multiple of 32/],
    ['duplicate tensor', () => ggufBytes([], [{ name: 'w', ne: [8], type: 0, offset: 0 }, { name: 'w', ne: [8], type: 0, offset: 32 }], 64), 'tensor "w"', /once/],
  ];
  for (const [title, bytes, what, message] of cases) {
    it(`refuses ${title}, naming the file and ${what}`, () => {
      const err = loadError(() => parseGgufHeader(bufferSource('bad.gguf', bytes())));
      expect(err.file).toBe('bad.gguf');
      expect(err.what).toBe(what);
      expect(err.message).toMatch(message);
      expect(err.message).toContain('bad.gguf');
    });
  }

  it('reads every value type, including nested arrays', () => {
    const i64 = Buffer.alloc(8); i64.writeBigInt64LE(-5n);
    const f64 = Buffer.alloc(8); f64.writeDoubleLE(0.1);
    const nested = Buffer.concat([u32(9), u64(2), u32(5), u64(2), u32(1), u32(2), u32(8), u64(1), str('ü')]);
    const h = parseGgufHeader(bufferSource('v.gguf', ggufBytes([
      ['u8', 0, Buffer.from([200])], ['i8', 1, Buffer.from([0xff])], ['u16', 2, Buffer.from([1, 1])],
      ['i16', 3, Buffer.from([0xfe, 0xff])], ['i32', 5, Buffer.from([0xfd, 0xff, 0xff, 0xff])], ['f32', 6, f32(0.5)],
      ['b', 7, Buffer.from([1])], ['big', 10, u64(2n ** 60n)], ['i64', 11, i64], ['f64', 12, f64], ['nested', 9, nested],
    ], [], 0)));
    expect(Object.fromEntries([...h.metadata].filter(([k]) => k !== 'nested'))).toEqual({ u8: 200, i8: -1, u16: 257, i16: -2, i32: -3, f32: 0.5, b: true, big: 2n ** 60n, i64: -5, f64: 0.1 });
    const [ints, strs] = h.metadata.get('nested') as [Int32Array, string[]];
    expect(Array.from(ints)).toEqual([1, 2]);
    expect(strs).toEqual(['ü']);
    expect(h.metadataTypes.get('nested')).toBe('array<array<string>>');
  });

  it('refuses an unsupported architecture, a missing hyper-parameter and an unknown tensor by name', () => {
    const gemma = ggufBytes([['general.architecture', 8, str('gemma')]], [], 0);
    expect(loadError(() => ggufCheckpointFromSource(bufferSource('g.gguf', gemma))).what).toBe('general.architecture');
    const noEps = tinyLlamaGguf({ dropKey: 'llama.attention.layer_norm_rms_epsilon' });
    expect(loadError(() => ggufCheckpointFromSource(bufferSource('e.gguf', noEps))).what).toBe('llama.attention.layer_norm_rms_epsilon');
    const extra = tinyLlamaGguf({ extraTensor: { name: 'blk.0.attn_q_norm.weight', ne: [4], type: 0, offset: 0 } });
    expect(loadError(() => ggufCheckpointFromSource(bufferSource('x.gguf', extra))).what).toBe('blk.0.attn_q_norm.weight');
    const partialRope = tinyLlamaGguf({ extraKv: [['llama.rope.dimension_count', 4, u32(2)]] });
    expect(loadError(() => ggufCheckpointFromSource(bufferSource('r.gguf', partialRope))).what).toBe('llama.rope.dimension_count');
  });

  it('metadata-only: a header announcing 40 GB of data is parsed without reading it', () => {
    const ne = [8192, 1310720]; // 10.7G F32 values
    const head = ggufBytes([], [{ name: 'w', ne, type: 0, offset: 0 }], 0);
    const h = parseGgufHeader(bufferSource('huge.gguf', head, head.length + 8192 * 1310720 * 4));
    expect(h.tensors[0].byteLength).toBe(8192 * 1310720 * 4);
  });
});

describe('GGUF <-> HF names, q/k permutation, llama3 RoPE factors', () => {
  it('maps every llama / qwen2 tensor both ways and refuses look-alikes', () => {
    const pairs: Array<[string, string]> = [
      ['token_embd.weight', 'model.embed_tokens.weight'],
      ['output_norm.weight', 'model.norm.weight'],
      ['output.weight', 'lm_head.weight'],
      ['blk.12.attn_norm.weight', 'model.layers.12.input_layernorm.weight'],
      ['blk.0.attn_q.weight', 'model.layers.0.self_attn.q_proj.weight'],
      ['blk.0.attn_k.bias', 'model.layers.0.self_attn.k_proj.bias'],
      ['blk.0.attn_v.weight', 'model.layers.0.self_attn.v_proj.weight'],
      ['blk.0.attn_output.weight', 'model.layers.0.self_attn.o_proj.weight'],
      ['blk.3.ffn_norm.weight', 'model.layers.3.post_attention_layernorm.weight'],
      ['blk.3.ffn_gate.weight', 'model.layers.3.mlp.gate_proj.weight'],
      ['blk.3.ffn_up.weight', 'model.layers.3.mlp.up_proj.weight'],
      ['blk.3.ffn_down.weight', 'model.layers.3.mlp.down_proj.weight'],
      ['blk.1.attn_shortcut.weight', 'model.layers.1.attn_shortcut.weight'],
    ];
    for (const [gguf, hf] of pairs) {
      expect(ggufToHfName(gguf)).toBe(hf);
      expect(hfToGgufName(hf)).toBe(gguf);
    }
    for (const bad of ['blk.01.attn_q.weight', 'blk.x.attn_q.weight', 'blk.0.attn_q', 'rope_freqs.weight', 'toString', 'blk.0.constructor']) {
      expect(ggufToHfName(bad)).toBeNull();
    }
    expect(hfToGgufName('model.layers.0.self_attn.rotary_emb.inv_freq')).toBeNull();
  });

  it('ggufQkRowPermutation inverts the converter reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)', () => {
    const nHead = 3;
    const rows = 3 * 8;
    // Simulate the numpy ops on row indices: index [h][p][j] -> file position of [h][j][p].
    const hfRows = Array.from({ length: rows }, (_, r) => r);
    const file = new Array<number>(rows);
    const half = rows / nHead / 2;
    for (let h = 0; h < nHead; h++) {
      for (let p = 0; p < 2; p++) for (let j = 0; j < half; j++) file[h * 2 * half + j * 2 + p] = hfRows[h * 2 * half + p * half + j];
    }
    const perm = ggufQkRowPermutation(rows, nHead);
    for (let r = 0; r < rows; r++) expect(file[perm[r]]).toBe(r);
    expect(new Set(perm).size).toBe(rows);
    expect(() => ggufQkRowPermutation(10, 3)).toThrow(RangeError);
  });

  it('fits llama3 scaling parameters back from rope_freqs factors (Llama 3.2 1B and 3 8B-style)', () => {
    const llama32 = { type: 'llama3' as const, factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };
    for (const headDim of [64, 128]) {
      const factors = llama3RopeFactors(llama32, headDim, 500000);
      expect(factors[0]).toBe(1);
      expect(factors[headDim / 2 - 1]).toBe(32);
      expect(fitLlama3RopeScaling(factors, headDim, 500000)).toEqual(llama32);
    }
    // Other (low, high, old) with the same ratios are the same scaling; the fit reproduces the factors.
    const odd = { type: 'llama3' as const, factor: 8, lowFreqFactor: 2, highFreqFactor: 6, originalMaxPositions: 16384 };
    const fit = fitLlama3RopeScaling(llama3RopeFactors(odd, 128, 500000), 128, 500000)!;
    expect(Array.from(llama3RopeFactors(fit, 128, 500000))).toEqual(Array.from(llama3RopeFactors(odd, 128, 500000)));
    expect(fitLlama3RopeScaling(new Float32Array(32).fill(1), 64, 500000)).toBeNull();
    expect(fitLlama3RopeScaling(new Float32Array(32).map((_, i) => 1 + i), 64, 500000)).toBeNull();
  });

  it('reads f32 hyper-parameters back as the decimal they were written from', () => {
    expect(shortestF32(Math.fround(1e-5))).toBe(1e-5);
    expect(shortestF32(Math.fround(1e-6))).toBe(1e-6);
    expect(shortestF32(Math.fround(500000))).toBe(500000);
    expect(shortestF32(Math.fround(0.1234567))).toBe(0.1234567);
  });
});
