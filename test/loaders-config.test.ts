// config.json -> ModelConfig: the real configs of ../shared/models/shapes, every refusal naming its
// field, and the check of a checkpoint's tensors against its configuration.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { WinaLoadError } from '../lib/errors.js';
import { checkTensorsAgainstConfig, expectedTensorShapes, parseModelConfig, readModelConfig } from '../lib/loaders/config.js';
import type { ModelConfig, TensorInfo } from '../lib/loaders/types.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shapes = path.resolve(repoRoot, '../shared/models/shapes');

const llama = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 64,
  intermediate_size: 160,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 100,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  hidden_act: 'silu',
  bos_token_id: 1,
  eos_token_id: 2,
};

function refusal(json: object): WinaLoadError {
  try {
    parseModelConfig(json, 'config.json');
  } catch (err) {
    expect(err).toBeInstanceOf(WinaLoadError);
    return err as WinaLoadError;
  }
  throw new Error('expected a WinaLoadError');
}

describe.skipIf(!fs.existsSync(shapes))('real model configs (skipped: ../shared not found)', () => {
  const expected: Record<string, Partial<ModelConfig>> = {
    'llama-2-7b.json': { arch: 'llama', numHeads: 32, numKvHeads: 32, headDim: 128, vocabSize: 32000, ropeScaling: null, tieWordEmbeddings: false },
    'llama-3-8b.json': { arch: 'llama', numKvHeads: 8, ropeTheta: 500000, intermediateSize: 14336, eosTokenIds: [128001] },
    'llama-3.2-1b.json': {
      arch: 'llama', hiddenSize: 2048, headDim: 64, tieWordEmbeddings: true, maxPositions: 131072,
      ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    },
    'mistral-7b.json': { arch: 'mistral', slidingWindow: 4096, numKvHeads: 8, vocabSize: 32000 },
    'qwen2.5-0.5b.json': { arch: 'qwen2', attentionBias: true, slidingWindow: null, numHeads: 14, numKvHeads: 2, headDim: 64, rmsNormEps: 1e-6, tieWordEmbeddings: true },
  };
  for (const [file, want] of Object.entries(expected)) {
    it(`parses ${file}`, () => {
      const config = readModelConfig(path.join(shapes, file));
      expect(config).toMatchObject({ ...want, residualRotations: false });
    });
  }

  it('covers every file of the shapes folder', () => {
    expect(fs.readdirSync(shapes).filter((f) => f.endsWith('.json')).sort()).toEqual(Object.keys(expected).sort());
  });
});

describe('config.json parsing', () => {
  it('fills defaults: head_dim, num_key_value_heads, rope_theta, tie_word_embeddings', () => {
    const { num_key_value_heads: _, ...mha } = llama;
    const c = parseModelConfig(mha, 'config.json');
    expect(c).toEqual({
      arch: 'llama', hiddenSize: 64, intermediateSize: 160, numLayers: 2, numHeads: 4, numKvHeads: 4, headDim: 16,
      vocabSize: 100, maxPositions: 128, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, tieWordEmbeddings: false,
      attentionBias: false, slidingWindow: null, residualRotations: false, bosTokenId: 1, eosTokenIds: [2],
    });
  });

  it('accepts eos as a list, rope_scaling with "type", transformers 5 rope_parameters, and wina_transform', () => {
    expect(parseModelConfig({ ...llama, eos_token_id: [2, 7, 2] }, 'c').eosTokenIds).toEqual([2, 7]);
    expect(parseModelConfig({ ...llama, eos_token_id: null, bos_token_id: null }, 'c')).toMatchObject({ eosTokenIds: [], bosTokenId: null });
    const scaling = { type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    expect(parseModelConfig({ ...llama, rope_scaling: scaling }, 'c').ropeScaling).toEqual({
      type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192,
    });
    expect(parseModelConfig({ ...llama, rope_parameters: { rope_type: 'default', rope_theta: 5e5 } }, 'c')).toMatchObject({ ropeTheta: 5e5, ropeScaling: null });
    expect(parseModelConfig({ ...llama, wina_transform: { method: 'pca' } }, 'c').residualRotations).toBe(true);
  });

  const refusals: Array<[string, object, string, RegExp]> = [
    ['another architecture', { ...llama, architectures: ['GemmaForCausalLM'] }, 'architectures', /LlamaForCausalLM/],
    ['two architectures', { ...llama, architectures: ['LlamaForCausalLM', 'MistralForCausalLM'] }, 'architectures', /one of/],
    ['yarn rope scaling', { ...llama, rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'rope_scaling.rope_type', /"llama3"/],
    ['linear rope scaling via "type"', { ...llama, rope_scaling: { type: 'linear', factor: 2 } }, 'rope_scaling.rope_type', /"linear"/],
    ['llama3 without factor', { ...llama, rope_scaling: { rope_type: 'llama3', low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } }, 'rope_scaling.factor', /positive number/],
    ['gelu', { ...llama, hidden_act: 'gelu' }, 'hidden_act', /"silu"/],
    ['mlp_bias', { ...llama, mlp_bias: true }, 'mlp_bias', /false/],
    ['llama attention_bias', { ...llama, attention_bias: true }, 'attention_bias', /Qwen2 only/],
    ['qwen2 sliding windows', { ...llama, architectures: ['Qwen2ForCausalLM'], use_sliding_window: true }, 'use_sliding_window', /false/],
    ['a missing hidden_size', { ...llama, hidden_size: undefined }, 'hidden_size', /positive integer/],
    ['a string layer count', { ...llama, num_hidden_layers: '2' }, 'num_hidden_layers', /positive integer/],
    ['kv heads not dividing heads', { ...llama, num_key_value_heads: 3 }, 'num_key_value_heads', /divisor/],
    ['an odd head_dim', { ...llama, head_dim: 15 }, 'head_dim', /even/],
    ['hidden not divisible by heads', { ...llama, hidden_size: 66 }, 'hidden_size', /multiple/],
    ['eos as a string', { ...llama, eos_token_id: '</s>' }, 'eos_token_id', /token id/],
    ['a negative eps', { ...llama, rms_norm_eps: -1 }, 'rms_norm_eps', /positive number/],
    ['wina_transform with tied embeddings', { ...llama, wina_transform: {}, tie_word_embeddings: true }, 'tie_word_embeddings', /own lm_head/],
  ];
  for (const [title, json, what, message] of refusals) {
    it(`refuses ${title}, naming ${what}`, () => {
      const err = refusal(json);
      expect(err.file).toBe('config.json');
      expect(err.what).toBe(what);
      expect(err.message).toMatch(message);
      expect(err.message.startsWith(`config.json: ${what}: expected `)).toBe(true);
    });
  }

  it('lists the supported variants as fixes for unsupported architectures', () => {
    expect(refusal({ ...llama, architectures: ['PhiForCausalLM'] }).fixes?.join(' ')).toMatch(/Qwen2ForCausalLM/);
  });
});

describe('tensors against the configuration', () => {
  const info = (name: string, shape: number[]): TensorInfo => ({ name, fileName: name, dtype: 'F32', shape, file: 'm.safetensors', offset: 0, byteLength: 0 });
  const tensorsOf = (config: ModelConfig): Map<string, TensorInfo> =>
    new Map([...expectedTensorShapes(config)].map(([name, shape]) => [name, info(name, shape)]));
  const base = parseModelConfig(llama, 'config.json');

  it('expects exactly the llama tensors (9 per layer + 3), plus biases for qwen2 and shortcuts for wina_transform', () => {
    expect(expectedTensorShapes(base).size).toBe(3 + 2 * 9);
    expect(expectedTensorShapes(base).get('model.layers.1.self_attn.k_proj.weight')).toEqual([32, 64]);
    const qwen = parseModelConfig({ ...llama, architectures: ['Qwen2ForCausalLM'], tie_word_embeddings: true }, 'c');
    expect(expectedTensorShapes(qwen).size).toBe(2 + 2 * 12);
    expect(expectedTensorShapes(qwen).get('model.layers.0.self_attn.v_proj.bias')).toEqual([32]);
    const rotated = parseModelConfig({ ...llama, wina_transform: {} }, 'c');
    expect(expectedTensorShapes(rotated).get('model.layers.1.mlp_shortcut.weight')).toEqual([64, 64]);
    expect(expectedTensorShapes(rotated).size).toBe(3 + 2 * 11);
  });

  it('accepts the expected set, rotary_emb.inv_freq extras, and a stored lm_head when tied', () => {
    const tensors = tensorsOf(base);
    tensors.set('model.layers.0.self_attn.rotary_emb.inv_freq', info('model.layers.0.self_attn.rotary_emb.inv_freq', [8]));
    expect(() => checkTensorsAgainstConfig(base, tensors, 'dir')).not.toThrow();
    const tied = { ...base, tieWordEmbeddings: true };
    expect(() => checkTensorsAgainstConfig(tied, tensorsOf(tied), 'dir')).not.toThrow();
    expect(() => checkTensorsAgainstConfig(tied, tensorsOf(base), 'dir')).not.toThrow();
  });

  it('names a missing tensor, a wrong shape and an unexpected tensor', () => {
    const check = (mutate: (t: Map<string, TensorInfo>) => void, config = base): WinaLoadError => {
      const tensors = tensorsOf(base);
      mutate(tensors);
      try {
        checkTensorsAgainstConfig(config, tensors, 'dir');
      } catch (err) {
        expect(err).toBeInstanceOf(WinaLoadError);
        return err as WinaLoadError;
      }
      throw new Error('expected a WinaLoadError');
    };
    const missing = check((t) => t.delete('lm_head.weight'));
    expect([missing.what, missing.file, missing.found]).toEqual(['lm_head.weight', 'dir', 'no such tensor']);
    const wrong = check((t) => t.set('model.layers.1.mlp.down_proj.weight', info('model.layers.1.mlp.down_proj.weight', [160, 64])));
    expect(wrong.what).toBe('model.layers.1.mlp.down_proj.weight');
    expect(wrong.message).toMatch(/expected shape \[64, 160\].*found \[160, 64\]/);
    const extra = check((t) => t.set('model.layers.0.self_attn.q_norm.weight', info('model.layers.0.self_attn.q_norm.weight', [16])));
    expect(extra.what).toBe('model.layers.0.self_attn.q_norm.weight');
    const layer = check((t) => t.set('model.layers.2.input_layernorm.weight', info('model.layers.2.input_layernorm.weight', [64])));
    expect(layer.found).toBe('an unexpected tensor');
  });

  it('shortcut rotations are errors without wina_transform and required with it', () => {
    const rotated = parseModelConfig({ ...llama, wina_transform: {} }, 'c');
    const withShortcuts = tensorsOf(rotated);
    expect(() => checkTensorsAgainstConfig(rotated, withShortcuts, 'dir')).not.toThrow();
    let err: unknown;
    try { checkTensorsAgainstConfig(base, withShortcuts, 'dir'); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(WinaLoadError);
    expect((err as WinaLoadError).what).toMatch(/_shortcut\.weight$/);
    expect((err as WinaLoadError).message).toMatch(/wina_transform/);
    try { checkTensorsAgainstConfig(rotated, tensorsOf(base), 'dir'); } catch (e) { err = e; }
    expect((err as WinaLoadError).what).toBe('model.layers.0.attn_shortcut.weight');
  });
});
