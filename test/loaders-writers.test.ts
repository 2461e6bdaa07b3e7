// Writers: safetensors and GGUF round trips through the loaders (no ../shared needed), streaming
// (one tensor at a time, nothing left behind on failure), and, with ../shared, byte equality with
// llama.cpp's own converter output for tiny-en-llama.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { expectedTensorShapes, parseModelConfig } from '../lib/loaders/config.js';
import { readGgufHeader } from '../lib/loaders/gguf.js';
import { isGgufCheckpoint, openCheckpoint, readTensorAsF32, readTensorBytes } from '../lib/loaders/index.js';
import { readSafetensorsFile } from '../lib/loaders/safetensors.js';
import type { ModelConfig, TensorInfo, TensorToWrite } from '../lib/loaders/types.js';
import {
  ggufVocabFromTokenizerJson,
  hfTensorToGgufName,
  syntheticGgufVocab,
  writeGguf,
  writeSafetensors,
  type TensorSource,
} from '../lib/loaders/writers.js';
import { mulberry32 } from './helpers/rng.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tiny = path.resolve(repoRoot, '../shared/models/tiny-en-llama');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-writers-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Random values exactly representable in `dtype`, as stored bytes plus their f32 values. */
function randomTensor(name: string, dtype: 'F32' | 'F16' | 'BF16', shape: number[], rand: () => number): { tensor: TensorToWrite; values: Float32Array } {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(n);
  if (dtype === 'F32') {
    for (let i = 0; i < n; i++) values[i] = rand() * 2 - 1;
    return { tensor: { name, dtype, shape, data: new Uint8Array(values.slice().buffer) }, values };
  }
  const bits = new Uint16Array(n);
  const valueBits = new Uint32Array(values.buffer);
  for (let i = 0; i < n; i++) {
    // F16: sign, exponent 10..17 (|x| in [2^-5, 8)), 10-bit mantissa. BF16: the top half of an f32.
    const sign = rand() < 0.5 ? 0x8000 : 0;
    if (dtype === 'F16') {
      const exponent = 10 + Math.floor(rand() * 8);
      const mantissa = Math.floor(rand() * 1024);
      bits[i] = sign | (exponent << 10) | mantissa;
      values[i] = (sign ? -1 : 1) * (1 + mantissa / 1024) * 2 ** (exponent - 15);
    } else {
      bits[i] = sign | (0x3c00 + Math.floor(rand() * 0x300));
      valueBits[i] = bits[i] << 16;
    }
  }
  return { tensor: { name, dtype, shape, data: new Uint8Array(bits.buffer) }, values };
}

const smallLlama = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 300,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-6,
  rope_theta: 500000,
  bos_token_id: 1,
  eos_token_id: 2,
};

function randomModel(config: ModelConfig, seed: number, dtypeOf: (name: string, shape: number[]) => 'F32' | 'F16' | 'BF16') {
  const rand = mulberry32(seed);
  const tensors: TensorToWrite[] = [];
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of expectedTensorShapes(config)) {
    const r = randomTensor(name, dtypeOf(name, shape), shape, rand);
    tensors.push(r.tensor);
    values.set(name, r.values);
  }
  return { tensors, values };
}

describe('writeSafetensors', () => {
  it('writes an 8-byte aligned, space-padded header and contiguous data that reads back exactly', async () => {
    const rand = mulberry32(1);
    const parts = [randomTensor('x', 'F32', [3, 5], rand), randomTensor('y', 'BF16', [7], rand), randomTensor('z', 'F16', [2, 1, 3], rand)];
    const file = path.join(tmp, 'a.safetensors');
    await writeSafetensors(file, parts.map((p) => p.tensor), { format: 'pt' });
    const bytes = fs.readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const text = bytes.subarray(8, 8 + n).toString('utf8');
    expect(text.trimEnd().length).toBeGreaterThan(n - 8);
    expect(text.slice(text.trimEnd().length)).toMatch(/^ *$/);
    const header = JSON.parse(text);
    expect(header.__metadata__).toEqual({ format: 'pt' });
    expect([header.x.data_offsets, header.y.data_offsets, header.z.data_offsets]).toEqual([[0, 60], [60, 74], [74, 86]]);
    expect(bytes.length).toBe(8 + n + 86);
    const st = readSafetensorsFile(file);
    for (const p of parts) {
      const t = st.tensors.find((s) => s.name === p.tensor.name)!;
      expect(t.shape).toEqual(p.tensor.shape);
      expect(Buffer.from(readTensorBytes(t)).equals(Buffer.from(p.tensor.data))).toBe(true);
      expect(Array.from(readTensorAsF32(t))).toEqual(Array.from(p.values));
    }
  });

  it('streams: each source is read once, in order, after the previous tensor reached the file', async () => {
    const file = path.join(tmp, 'stream.safetensors');
    const sizesSeen: number[] = [];
    const calls: string[] = [];
    const sources: TensorSource[] = ['a', 'b', 'c'].map((name, i) => ({
      name,
      dtype: 'F32',
      shape: [1000 * (i + 1)],
      read: async () => {
        calls.push(name);
        sizesSeen.push(fs.statSync(`${file}.partial`).size);
        return new Uint8Array(4000 * (i + 1)).fill(i + 1);
      },
    }));
    await writeSafetensors(file, sources);
    expect(calls).toEqual(['a', 'b', 'c']);
    const headerEnd = readSafetensorsFile(file).dataOffset;
    expect(sizesSeen).toEqual([headerEnd, headerEnd + 4000, headerEnd + 12000]);
    expect(fs.existsSync(`${file}.partial`)).toBe(false);
  });

  it('a wrong data length or a duplicate name throws and leaves no file behind', async () => {
    const file = path.join(tmp, 'bad.safetensors');
    await expect(writeSafetensors(file, [{ name: 'a', dtype: 'F32', shape: [4], data: new Uint8Array(12) }])).rejects.toThrow(/12 bytes of data/);
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('bad.'))).toEqual([]);
    const t = { name: 'a', dtype: 'F32' as const, shape: [1], data: new Uint8Array(4) };
    await expect(writeSafetensors(file, [t, t])).rejects.toThrow(/twice/);
  });
});

describe('writeGguf', () => {
  it('round-trips a llama model through openCheckpoint: config, names, F32/F16/BF16 values, un-permuted q/k', async () => {
    const config = parseModelConfig(smallLlama, 'config.json');
    const dtypeOf = (name: string, shape: number[]): 'F32' | 'F16' | 'BF16' => (shape.length === 1 ? 'F32' : name.includes('mlp') ? 'F16' : 'BF16');
    const { tensors, values } = randomModel(config, 7, dtypeOf);
    const file = path.join(tmp, 'llama.gguf');
    await writeGguf(file, { config, vocab: syntheticGgufVocab(config.vocabSize), tensors });

    const ck = await openCheckpoint(file);
    expect(isGgufCheckpoint(ck)).toBe(true);
    expect(ck.config).toEqual(config);
    expect([...ck.tensors.keys()].sort()).toEqual([...values.keys()].sort());
    for (const [name, want] of values) {
      const t = ck.tensors.get(name)!;
      expect(t.dtype, name).toBe(dtypeOf(name, t.shape));
      expect(Array.from(readTensorAsF32(t)), name).toEqual(Array.from(want));
    }
    // The file itself holds the converter's layout: stored q row h*hd + 2j + p = HF row h*hd + p*hd/2 + j.
    const k = ck.tensors.get('model.layers.1.self_attn.k_proj.weight')!;
    const stored = readTensorAsF32({ ...k, rowPermutation: undefined });
    const hf = values.get(k.name)!;
    const cols = 32;
    const hd = 8;
    for (const [h, p, j] of [[0, 0, 0], [0, 1, 0], [1, 0, 3], [1, 1, 2]]) {
      const fileRow = h * hd + 2 * j + p;
      const hfRow = h * hd + p * (hd / 2) + j;
      expect(Array.from(stored.subarray(fileRow * cols, fileRow * cols + cols))).toEqual(Array.from(hf.subarray(hfRow * cols, hfRow * cols + cols)));
    }
  });

  it('writes the keys and types llama.cpp reads, 32-byte aligned tensors and a tokenizer', async () => {
    const config = parseModelConfig(smallLlama, 'config.json');
    const { tensors } = randomModel(config, 8, () => 'F32');
    const file = path.join(tmp, 'keys.gguf');
    const vocab = syntheticGgufVocab(config.vocabSize);
    await writeGguf(file, { config, vocab, tensors, metadata: { 'general.name': { type: 'string', value: 'tiny test' } } });
    const h = readGgufHeader(file);
    expect(h.version).toBe(3);
    expect(h.dataOffset % 32).toBe(0);
    for (const t of h.tensors) expect((t.offset - h.dataOffset) % 32).toBe(0);
    const types = Object.fromEntries(h.metadataTypes);
    expect(types).toMatchObject({
      'general.architecture': 'string', 'llama.block_count': 'u32', 'llama.context_length': 'u32', 'llama.embedding_length': 'u32',
      'llama.feed_forward_length': 'u32', 'llama.attention.head_count': 'u32', 'llama.attention.head_count_kv': 'u32',
      'llama.rope.freq_base': 'f32', 'llama.attention.layer_norm_rms_epsilon': 'f32', 'llama.rope.dimension_count': 'u32',
      'tokenizer.ggml.model': 'string', 'tokenizer.ggml.tokens': 'array<string>', 'tokenizer.ggml.scores': 'array<f32>',
      'tokenizer.ggml.token_type': 'array<i32>', 'tokenizer.ggml.bos_token_id': 'u32', 'tokenizer.ggml.eos_token_id': 'u32',
      'tokenizer.ggml.add_bos_token': 'bool',
    });
    expect(h.metadata.get('general.name')).toBe('tiny test');
    expect(h.metadata.get('llama.rope.freq_base')).toBe(500000);
    const tokens = h.metadata.get('tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(300);
    expect(tokens.indexOf('<0x0A>')).toBe(3 + 10); // llama.cpp looks the newline byte token up
    expect(h.tensors.find((t) => t.name === 'blk.1.ffn_down.weight')!.ne).toEqual([48, 32]);
    expect(h.tensors.some((t) => t.name === 'output.weight')).toBe(true);
  });

  it('qwen2: biases kept, no q/k permutation, tied embeddings without output.weight', async () => {
    const config = parseModelConfig({ ...smallLlama, architectures: ['Qwen2ForCausalLM'], tie_word_embeddings: true }, 'config.json');
    const { tensors, values } = randomModel(config, 9, () => 'F32');
    const file = path.join(tmp, 'qwen.gguf');
    await writeGguf(file, { config, vocab: syntheticGgufVocab(config.vocabSize), tensors });
    expect(readGgufHeader(file).tensors.map((t) => t.name)).not.toContain('output.weight');
    const ck = await openCheckpoint(file);
    expect(ck.config).toEqual(config);
    const q = ck.tensors.get('model.layers.0.self_attn.q_proj.weight')!;
    expect(q.rowPermutation).toBeUndefined();
    expect(Array.from(readTensorAsF32(q))).toEqual(Array.from(values.get(q.name)!));
    expect(Array.from(readTensorAsF32(ck.tensors.get('model.layers.1.self_attn.k_proj.bias')!))).toEqual(Array.from(values.get('model.layers.1.self_attn.k_proj.bias')!));
  });

  it('llama3 RoPE scaling travels as rope_freqs.weight; shortcut rotations as wina.residual_rotations', async () => {
    const scaling = { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    const config = parseModelConfig({ ...smallLlama, hidden_size: 256, num_attention_heads: 4, num_key_value_heads: 4, intermediate_size: 8, num_hidden_layers: 1, rope_scaling: scaling, wina_transform: {} }, 'c');
    expect(config.headDim).toBe(64);
    const { tensors } = randomModel(config, 10, () => 'BF16');
    const file = path.join(tmp, 'llama3.gguf');
    await writeGguf(file, { config, vocab: syntheticGgufVocab(config.vocabSize), tensors });
    expect(readGgufHeader(file).tensors.find((t) => t.name === 'rope_freqs.weight')!.ne).toEqual([32]);
    const ck = await openCheckpoint(file);
    expect(ck.config.ropeScaling).toEqual(config.ropeScaling);
    expect(ck.config.residualRotations).toBe(true);
    expect(ck.tensors.get('model.layers.0.attn_shortcut.weight')!.shape).toEqual([256, 256]);
  });

  it('a folder holding exactly one .gguf opens as that file', async () => {
    const config = parseModelConfig({ ...smallLlama, num_hidden_layers: 1 }, 'c');
    const dir = path.join(tmp, 'one-gguf');
    fs.mkdirSync(dir);
    await writeGguf(path.join(dir, 'model.gguf'), { config, vocab: syntheticGgufVocab(config.vocabSize), tensors: randomModel(config, 11, () => 'F16').tensors });
    const ck = await openCheckpoint(dir);
    expect([ck.format, ck.path, ck.config.numLayers]).toEqual(['gguf', path.join(dir, 'model.gguf'), 1]);
  });

  it('hfTensorToGgufName maps model tensors and refuses others', () => {
    expect(hfTensorToGgufName('model.layers.7.mlp.up_proj.weight')).toBe('blk.7.ffn_up.weight');
    expect(hfTensorToGgufName('lm_head.weight')).toBe('output.weight');
    expect(() => hfTensorToGgufName('model.layers.0.self_attn.rotary_emb.inv_freq')).toThrow(RangeError);
  });
});

const rawRange = (file: string, offset: number, byteLength: number): TensorInfo => ({
  name: 'raw', fileName: 'raw', dtype: 'F32', shape: [byteLength / 4], file, offset, byteLength,
});

describe.skipIf(!fs.existsSync(tiny))('tiny-en-llama: our GGUF = llama.cpp\'s converter output (skipped: ../shared not found)', () => {
  it('same tensor bytes (q/k permutation included), same hyper-parameters, same tokenizer arrays', async () => {
    const st = await openCheckpoint(path.join(tiny, 'f32'));
    const tensors: TensorSource[] = [...st.tensors.values()].map((t) => ({ name: t.name, dtype: 'F32', shape: t.shape, read: () => readTensorBytes(t) }));
    const vocab = ggufVocabFromTokenizerJson(st.tokenizer!.json, st.tokenizer!.config);
    const file = path.join(tmp, 'tiny-f32.gguf');
    await writeGguf(file, { config: st.config, vocab, tensors });

    const ours = readGgufHeader(file);
    const ref = readGgufHeader(path.join(tiny, 'gguf/tiny-en-llama-f32.gguf'));
    const oursByName = new Map(ours.tensors.map((t) => [t.name, t]));
    expect(ours.tensors.length).toBe(ref.tensors.length);
    for (const t of ref.tensors) {
      const o = oursByName.get(t.name)!;
      expect(o.ne, t.name).toEqual(t.ne);
      const a = readTensorBytes(rawRange(ref.file, t.offset, t.byteLength));
      const b = readTensorBytes(rawRange(ours.file, o.offset, o.byteLength));
      expect(a.equals(b), t.name).toBe(true);
    }
    const cosmetic = new Set(['general.name', 'general.type', 'general.size_label', 'tokenizer.ggml.add_sep_token']);
    for (const [key, value] of ref.metadata) {
      if (cosmetic.has(key)) continue;
      expect(ours.metadataTypes.get(key), key).toBe(ref.metadataTypes.get(key));
      const norm = (v: unknown): unknown => (ArrayBuffer.isView(v) ? Array.from(v as Float32Array) : v);
      expect(norm(ours.metadata.get(key)), key).toEqual(norm(value));
    }
  });
});
