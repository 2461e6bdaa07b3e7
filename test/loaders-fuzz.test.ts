// Fuzzing the header parsers with real headers (tiny-en-llama safetensors and GGUF, writer outputs):
// thousands of seeded mutations (bit flips, random bytes, truncation, length-field and digit edits,
// insertions and deletions). Every outcome must be either a parse whose tensor ranges lie inside
// the file or a WinaLoadError: never another exception type, never a hang.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WinaLoadError } from '../lib/errors.js';
import { checkTensorsAgainstConfig, expectedTensorShapes, parseModelConfig } from '../lib/loaders/config.js';
import { ggufCheckpointFromSource, parseGgufHeader } from '../lib/loaders/gguf.js';
import { parseSafetensors } from '../lib/loaders/safetensors.js';
import { bufferSource, type ByteSource } from '../lib/loaders/source.js';
import type { ModelConfig, TensorInfo } from '../lib/loaders/types.js';
import { syntheticGgufVocab, writeGguf, writeSafetensors } from '../lib/loaders/writers.js';
import { mulberry32 } from './helpers/rng.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tiny = path.resolve(repoRoot, '../shared/models/tiny-en-llama');
const noShared = !fs.existsSync(tiny);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-fuzz-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A file under test: its first `prefix` bytes are real, the rest of `size` reads as zeros. */
interface Seed { name: string; bytes: Uint8Array; size: number }

/** The header of a real file plus `extra` bytes of data; the declared size stays the real one. */
function seedFromFile(file: string, headerBytes: number, extra = 256): Seed {
  const size = fs.statSync(file).size;
  const length = Math.min(size, headerBytes + extra);
  const bytes = new Uint8Array(length);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, bytes, 0, length, 0);
  } finally {
    fs.closeSync(fd);
  }
  return { name: path.basename(file), bytes, size };
}

function mutate(seed: Seed, rand: () => number): { bytes: Uint8Array; size: number } {
  const bytes = Uint8Array.from(seed.bytes); // a copy (Buffer#slice would be a view)
  let size = seed.size;
  const at = (): number => Math.floor(rand() * bytes.length);
  const kind = Math.floor(rand() * 8);
  switch (kind) {
    case 0: // bit flips
      for (let k = 1 + Math.floor(rand() * 4); k > 0; k--) bytes[at()] ^= 1 << Math.floor(rand() * 8);
      break;
    case 1: // a run of random bytes
      for (let i = at(), n = 1 + Math.floor(rand() * 16); n > 0 && i < bytes.length; n--, i++) bytes[i] = Math.floor(rand() * 256);
      break;
    case 2: { // truncation: inside the header, or of the data
      const cut = rand() < 0.5 ? at() : Math.floor(rand() * size);
      size = Math.min(size, cut);
      return { bytes: bytes.subarray(0, Math.min(bytes.length, size)), size };
    }
    case 3: { // a u64 length/count field: the first ones, or any 8 bytes, nudged or replaced
      const pos = rand() < 0.5 ? [0, 8, 16][Math.floor(rand() * 3)] : at() & ~7;
      if (pos + 8 > bytes.length) break;
      const view = new DataView(bytes.buffer, bytes.byteOffset + pos, 8);
      const old = view.getBigUint64(0, true);
      const choices = [old + 1n, old - 1n, old * 2n, old + 8n, 2n ** 63n, 2n ** 64n - 1n, BigInt(Math.floor(rand() * 2 ** 32))];
      view.setBigUint64(0, BigInt.asUintN(64, choices[Math.floor(rand() * choices.length)]), true);
      break;
    }
    case 4: { // an ASCII digit changed (offsets and shapes in JSON), or a u32 field nudged
      for (let tries = 0; tries < 64; tries++) {
        const i = at();
        if (bytes[i] >= 0x30 && bytes[i] <= 0x39) {
          bytes[i] = 0x30 + Math.floor(rand() * 10);
          break;
        }
      }
      const i = at() & ~3;
      if (rand() < 0.5 && i + 4 <= bytes.length) new DataView(bytes.buffer, bytes.byteOffset + i, 4).setUint32(0, Math.floor(rand() * 40), true);
      break;
    }
    case 5: { // bytes inserted (the file grows by as much)
      const i = at();
      const n = 1 + Math.floor(rand() * 8);
      const out = new Uint8Array(bytes.length + n);
      out.set(bytes.subarray(0, i));
      for (let k = 0; k < n; k++) out[i + k] = Math.floor(rand() * 256);
      out.set(bytes.subarray(i), i + n);
      return { bytes: out, size: size + n };
    }
    case 6: { // bytes deleted
      const n = Math.min(bytes.length, 1 + Math.floor(rand() * 8));
      const i = Math.floor(rand() * (bytes.length - n + 1));
      const out = new Uint8Array(bytes.length - n);
      out.set(bytes.subarray(0, i));
      out.set(bytes.subarray(i + n), i);
      return { bytes: out, size: Math.max(0, size - n) };
    }
    default: // one random byte
      bytes[at()] = Math.floor(rand() * 256);
  }
  return { bytes, size };
}

interface Outcome { parsed: number; refused: number; kinds: Set<string> }

/** Runs `parse` on `iterations` mutants of `seed`; anything but success or WinaLoadError fails. */
function fuzz(seed: Seed, iterations: number, seedNumber: number, parse: (source: ByteSource) => TensorInfo[] | Array<{ offset: number; byteLength: number }>): Outcome {
  const rand = mulberry32(seedNumber);
  const outcome: Outcome = { parsed: 0, refused: 0, kinds: new Set() };
  for (let i = 0; i < iterations; i++) {
    const m = mutate(seed, rand);
    const source = bufferSource(seed.name, m.bytes, m.size);
    let tensors: Array<{ offset: number; byteLength: number }>;
    try {
      tensors = parse(source);
    } catch (err) {
      if (!(err instanceof WinaLoadError)) {
        throw new Error(`iteration ${i} of ${seed.name} (seed ${seedNumber}) threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.stack}`);
      }
      if (!err.message.includes(seed.name)) throw new Error(`error without the file name: ${err.message}`);
      outcome.refused++;
      outcome.kinds.add(err.what ?? '(file)');
      continue;
    }
    for (const t of tensors) {
      if (!Number.isSafeInteger(t.offset) || !Number.isSafeInteger(t.byteLength) || t.offset < 0 || t.byteLength < 0 || t.offset + t.byteLength > m.size) {
        throw new Error(`iteration ${i} of ${seed.name}: tensor range ${t.offset}+${t.byteLength} outside the ${m.size}-byte file`);
      }
    }
    outcome.parsed++;
  }
  return outcome;
}

const parseSt = (config: ModelConfig | null) => (source: ByteSource): TensorInfo[] => {
  const st = parseSafetensors(source);
  for (const t of st.tensors) {
    const bytes = t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'F32' ? 4 : 2);
    if (bytes !== t.byteLength) throw new Error(`${t.name}: shape and byte length disagree`);
  }
  if (config !== null) checkTensorsAgainstConfig(config, new Map(st.tensors.map((t) => [t.name, t])), source.name);
  return st.tensors;
};
const parseGgufModel = (source: ByteSource): TensorInfo[] => [...ggufCheckpointFromSource(source).tensors.values()];
const parseGgufRaw = (source: ByteSource): Array<{ offset: number; byteLength: number }> => parseGgufHeader(source).tensors;

const small = parseModelConfig({
  architectures: ['LlamaForCausalLM'], hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1, num_attention_heads: 2,
  num_key_value_heads: 1, vocab_size: 260, max_position_embeddings: 32, rms_norm_eps: 1e-5, bos_token_id: 1, eos_token_id: 2,
  rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 },
}, 'config.json');

describe('fuzzing writer outputs', () => {
  const seeds: Record<string, Seed> = {};
  beforeAll(async () => {
    const tensors = [...expectedTensorShapes(small)].map(([name, shape]) => ({
      name, dtype: (shape.length === 1 ? 'F32' : 'BF16') as 'F32' | 'BF16', shape,
      data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * (shape.length === 1 ? 4 : 2)).fill(0x3f),
    }));
    const st = path.join(tmp, 'small.safetensors');
    await writeSafetensors(st, tensors, { format: 'pt' });
    const gguf = path.join(tmp, 'small.gguf');
    const qwen = path.join(tmp, 'qwen.gguf');
    await writeGguf(gguf, { config: small, vocab: syntheticGgufVocab(260), tensors });
    const qwenConfig = { ...small, arch: 'qwen2' as const, attentionBias: true, ropeScaling: null, tieWordEmbeddings: true };
    const qwenTensors = [...expectedTensorShapes(qwenConfig)].map(([name, shape]) => ({
      name, dtype: 'F32' as const, shape, data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * 4),
    }));
    await writeGguf(qwen, { config: qwenConfig, vocab: syntheticGgufVocab(260), tensors: qwenTensors });
    for (const file of [st, gguf, qwen]) seeds[path.basename(file)] = { name: path.basename(file), bytes: fs.readFileSync(file), size: fs.statSync(file).size };
  });

  it('safetensors: 2500 mutants parse inside the file or raise WinaLoadError', () => {
    const o = fuzz(seeds['small.safetensors'], 2500, 1, parseSt(small));
    expect(o.parsed).toBeGreaterThan(50);
    expect(o.refused).toBeGreaterThan(500);
  });

  it('GGUF (llama with rope_freqs): 2500 mutants parse inside the file or raise WinaLoadError', () => {
    const o = fuzz(seeds['small.gguf'], 2500, 2, parseGgufModel);
    expect(o.parsed).toBeGreaterThan(50);
    expect(o.refused).toBeGreaterThan(500);
    expect(o.kinds.size).toBeGreaterThan(10);
  });

  it('GGUF (qwen2, tied): 2000 mutants, raw header and model mapping', () => {
    const o = fuzz(seeds['qwen.gguf'], 1000, 3, parseGgufModel);
    const raw = fuzz(seeds['qwen.gguf'], 1000, 4, parseGgufRaw);
    expect(o.parsed + raw.parsed).toBeGreaterThan(50);
    expect(o.refused + raw.refused).toBeGreaterThan(500);
  });
});

describe.skipIf(noShared)('fuzzing tiny-en-llama headers (skipped: ../shared not found)', () => {
  it('model.safetensors: 2000 mutants of the real header', () => {
    const file = path.join(tiny, 'model.safetensors');
    const headerLength = Number(fs.readFileSync(file).readBigUInt64LE(0));
    const config = parseModelConfig(JSON.parse(fs.readFileSync(path.join(tiny, 'config.json'), 'utf8')), 'config.json');
    const o = fuzz(seedFromFile(file, 8 + headerLength), 2000, 5, parseSt(config));
    expect(o.parsed).toBeGreaterThan(50);
    expect(o.refused).toBeGreaterThan(200);
  });

  it('tiny-en-llama-q8_0.gguf: 800 mutants of the real header (metadata, 4096-token vocab, tensor infos)', () => {
    const file = path.join(tiny, 'gguf/tiny-en-llama-q8_0.gguf');
    const dataOffset = parseGgufHeader(bufferSource(file, fs.readFileSync(file))).dataOffset;
    const o = fuzz(seedFromFile(file, dataOffset), 800, 6, parseGgufModel);
    expect(o.parsed).toBeGreaterThan(50);
    expect(o.refused).toBeGreaterThan(200);
  });
});
