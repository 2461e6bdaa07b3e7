// Hugging Face config.json -> ModelConfig, and the check that a checkpoint's tensors are exactly the
// ones that configuration needs. Anything the engine cannot run faithfully is refused with the field
// named, rather than loaded and computed wrongly.

import * as fs from 'node:fs';
import { WinaLoadError, describeFound } from '../errors.js';
import type { ModelConfig, RopeScaling, TensorInfo } from './types.js';

const ARCHITECTURES: Record<string, ModelConfig['arch']> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

const UNSUPPORTED_FIXES = [
  'Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM with SiLU MLPs, no MLP bias, and rope_scaling null or llama3.',
];

type Json = Record<string, unknown>;

/** Reads and parses `config.json`. */
export function readModelConfig(file: string): ModelConfig {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new WinaLoadError({
      file,
      expected: 'a readable JSON file',
      found: describeFound((err as Error).message, 120),
      fixes: ['Every checkpoint folder needs the config.json written by save_pretrained.'],
      cause: err,
    });
  }
  return parseModelConfig(json, file);
}

/** Validates a parsed config.json; `file` is only used in error messages. */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  const fail = (what: string, expected: string, found: unknown, fixes = UNSUPPORTED_FIXES): never => {
    throw new WinaLoadError({ file, what, expected, found: describeFound(found), fixes });
  };
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('config', 'a JSON object', json);
  const c = json as Json;

  const architectures = c.architectures;
  if (!Array.isArray(architectures) || architectures.length !== 1 || ARCHITECTURES[architectures[0] as string] === undefined) {
    fail('architectures', `one of ${Object.keys(ARCHITECTURES).join(', ')}`, architectures);
  }
  const arch = ARCHITECTURES[(architectures as string[])[0]];

  const int = (key: string, fallback?: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(key, 'a positive integer', v, []);
    return v as number;
  };
  const positive = (key: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(key, 'a positive number', v, []);
    return v as number;
  };

  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) fail('num_key_value_heads', `a divisor of num_attention_heads (${numHeads})`, numKvHeads, []);
  if (c.head_dim == null && hiddenSize % numHeads !== 0) fail('hidden_size', `a multiple of num_attention_heads (${numHeads})`, hiddenSize, []);
  const headDim = int('head_dim', hiddenSize / numHeads);
  // RoPE rotates pairs (i, i + headDim/2), so the head size must be even.
  if (headDim % 2 !== 0) fail('head_dim', 'an even number', headDim, []);

  const hiddenAct = c.hidden_act ?? 'silu';
  if (hiddenAct !== 'silu') fail('hidden_act', '"silu"', hiddenAct);
  if (c.mlp_bias === true) fail('mlp_bias', 'false', true);
  if (c.attention_bias === true && arch !== 'qwen2') {
    // Llama's attention_bias also adds an o_proj bias, which the engine does not implement.
    fail('attention_bias', 'false (q/k/v biases are supported for Qwen2 only)', true);
  }

  // transformers >= 5 moves rope_theta and the scaling into rope_parameters.
  const ropeParameters = isObject(c.rope_parameters) ? c.rope_parameters : null;
  const ropeTheta = positive('rope_theta', c.rope_theta ?? ropeParameters?.rope_theta ?? 10000);
  const ropeScaling = parseRopeScaling(c.rope_scaling ?? ropeParameters, fail);

  let slidingWindow: number | null = null;
  if (arch === 'mistral' && c.sliding_window != null) slidingWindow = int('sliding_window');
  if (arch === 'qwen2' && c.use_sliding_window === true) fail('use_sliding_window', 'false', true);

  const residualRotations = c.wina_transform != null;
  if (residualRotations && !isObject(c.wina_transform)) fail('wina_transform', 'an object', c.wina_transform, []);
  const tieWordEmbeddings = c.tie_word_embeddings ?? false;
  if (typeof tieWordEmbeddings !== 'boolean') fail('tie_word_embeddings', 'true or false', tieWordEmbeddings, []);
  if (residualRotations && tieWordEmbeddings) {
    fail('tie_word_embeddings', 'false (wina_transform checkpoints have their own lm_head)', true, [
      'Re-run `wina transform`; it writes an explicit lm_head.weight.',
    ]);
  }

  const bos = c.bos_token_id ?? null;
  if (bos !== null && !isTokenId(bos)) fail('bos_token_id', 'a token id or null', bos, []);
  return {
    arch,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositions: int('max_position_embeddings'),
    rmsNormEps: positive('rms_norm_eps', c.rms_norm_eps ?? 1e-6),
    ropeTheta,
    ropeScaling,
    tieWordEmbeddings: tieWordEmbeddings as boolean,
    attentionBias: arch === 'qwen2',
    slidingWindow,
    residualRotations,
    bosTokenId: bos as number | null,
    eosTokenIds: parseEosTokenIds(c.eos_token_id, (found) => fail('eos_token_id', 'a token id, a list of token ids or null', found, [])),
  };
}

function parseRopeScaling(
  scaling: unknown,
  fail: (what: string, expected: string, found: unknown, fixes?: string[]) => never,
): RopeScaling | null {
  if (scaling == null) return null;
  if (!isObject(scaling)) return fail('rope_scaling', 'null or an object', scaling);
  const type = scaling.rope_type ?? scaling.type;
  if (type === 'default' || type === undefined) return null;
  if (type !== 'llama3') return fail('rope_scaling.rope_type', '"llama3" (or no scaling)', type);
  const num = (key: string): number => {
    const v = scaling[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`rope_scaling.${key}`, 'a positive number', v, []);
    return v as number;
  };
  const lowFreqFactor = num('low_freq_factor');
  const highFreqFactor = num('high_freq_factor');
  // The smooth interpolation divides by (high - low).
  if (highFreqFactor <= lowFreqFactor) fail('rope_scaling.high_freq_factor', `more than low_freq_factor (${lowFreqFactor})`, highFreqFactor, []);
  return {
    type: 'llama3',
    factor: num('factor'),
    lowFreqFactor,
    highFreqFactor,
    originalMaxPositions: num('original_max_position_embeddings'),
  };
}

/** eos_token_id may be a number, a list of numbers or null. */
export function parseEosTokenIds(value: unknown, onError: (found: unknown) => never): number[] {
  if (value == null) return [];
  if (isTokenId(value)) return [value];
  if (Array.isArray(value) && value.every(isTokenId)) return [...new Set(value)];
  return onError(value);
}

function isTokenId(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function isObject(v: unknown): v is Json {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// ---- tensors expected by a configuration --------------------------------------------------------

/** Hugging Face name -> shape of every tensor the configuration needs (lm_head only when untied). */
export function expectedTensorShapes(config: ModelConfig): Map<string, number[]> {
  return new Map(expectedTensors(config));
}

/**
 * The same, lazily: a corrupted file can claim a billion layers, and checking it must stop at the
 * first missing tensor instead of listing them all.
 */
export function* expectedTensors(config: ModelConfig): Generator<[string, number[]]> {
  const { hiddenSize: h, intermediateSize: ff, headDim, numHeads, numKvHeads, vocabSize } = config;
  yield ['model.embed_tokens.weight', [vocabSize, h]];
  yield ['model.norm.weight', [h]];
  if (!config.tieWordEmbeddings) yield ['lm_head.weight', [vocabSize, h]];
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}.`;
    yield [`${p}input_layernorm.weight`, [h]];
    yield [`${p}post_attention_layernorm.weight`, [h]];
    yield [`${p}self_attn.q_proj.weight`, [numHeads * headDim, h]];
    yield [`${p}self_attn.k_proj.weight`, [numKvHeads * headDim, h]];
    yield [`${p}self_attn.v_proj.weight`, [numKvHeads * headDim, h]];
    yield [`${p}self_attn.o_proj.weight`, [h, numHeads * headDim]];
    if (config.attentionBias) {
      yield [`${p}self_attn.q_proj.bias`, [numHeads * headDim]];
      yield [`${p}self_attn.k_proj.bias`, [numKvHeads * headDim]];
      yield [`${p}self_attn.v_proj.bias`, [numKvHeads * headDim]];
    }
    yield [`${p}mlp.gate_proj.weight`, [ff, h]];
    yield [`${p}mlp.up_proj.weight`, [ff, h]];
    yield [`${p}mlp.down_proj.weight`, [h, ff]];
    if (config.residualRotations) {
      yield [`${p}attn_shortcut.weight`, [h, h]];
      yield [`${p}mlp_shortcut.weight`, [h, h]];
    }
  }
}

/**
 * Every expected tensor is present with its shape, and nothing else is there: an unknown tensor
 * means the checkpoint is a variant we would silently compute wrongly. Tolerated extras: the
 * precomputed `rotary_emb.inv_freq` buffers, and a stored lm_head when embeddings are tied.
 */
export function checkTensorsAgainstConfig(config: ModelConfig, tensors: Map<string, TensorInfo>, file: string): void {
  const expected = new Set<string>();
  const entries: Iterable<[string, number[]]> = config.tieWordEmbeddings
    ? [...(tensors.has('lm_head.weight') ? [['lm_head.weight', [config.vocabSize, config.hiddenSize]] as [string, number[]]] : []), ...expectedTensorsUpTo(config, tensors.size)]
    : expectedTensorsUpTo(config, tensors.size);
  for (const [name, shape] of entries) {
    expected.add(name);
    const t = tensors.get(name);
    if (t === undefined) {
      throw new WinaLoadError({
        file,
        what: name,
        expected: `a tensor of shape [${shape.join(', ')}]`,
        found: 'no such tensor',
        fixes: ['Check that config.json belongs to these weights (same model and size).'],
      });
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new WinaLoadError({
        file: t.file,
        what: name,
        expected: `shape [${shape.join(', ')}] (from the configuration)`,
        found: `[${t.shape.join(', ')}]`,
        fixes: ['Check that config.json belongs to these weights (same model and size).'],
      });
    }
  }
  for (const t of tensors.values()) {
    if (expected.has(t.name) || t.name.endsWith('rotary_emb.inv_freq')) continue;
    throw new WinaLoadError({
      file: t.file,
      what: t.name,
      expected: `only the tensors of a ${config.arch} model with this configuration`,
      found: 'an unexpected tensor',
      fixes: isShortcut(t.name)
        ? ['Shortcut rotations need "wina_transform" in config.json; keep the config written by `wina transform`.']
        : UNSUPPORTED_FIXES,
    });
  }
}

/** expectedTensors(), stopping after `available` + 1 entries (one more than can be present). */
function* expectedTensorsUpTo(config: ModelConfig, available: number): Generator<[string, number[]]> {
  let n = 0;
  for (const entry of expectedTensors(config)) {
    yield entry;
    if (++n > available) return;
  }
}

function isShortcut(name: string): boolean {
  return /\.(attn|mlp)_shortcut\.weight$/.test(name);
}
