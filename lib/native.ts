// Loads the native addon and types its surface (the one file that knows the binding's shape).
// Load order: a local build (build/Release) when present, else the prebuild shipped in the package
// (prebuilds/<platform>-<arch>/), chosen by node-gyp-build. No install script is needed when a
// prebuild matches.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { ModelConfig } from './loaders/types.js';

export type Dtype = 0 | 1 | 2; // f32 | bf16 | f16, as in native/kernels.h
export const DTYPE_F32 = 0;
export const DTYPE_BF16 = 1;
export const DTYPE_F16 = 2;

export type Isa = 'scalar' | 'avx2' | 'avx512';
export type Weights = Float32Array | Uint16Array;

/** Opaque native handles. */
export interface ModelHandle { readonly __model: unique symbol }
export interface SessionHandle { readonly __session: unique symbol }

export interface NativePlan {
  modes: Int32Array;
  scores: Int32Array;
  ks: Float64Array;
  thresholds: Float32Array;
  prefill: number;
}

/** What the engine needs of a ModelConfig, plus the dtype in memory and the RoPE frequencies. */
export type NativeModelConfig = Pick<ModelConfig, 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' |
  'numKvHeads' | 'headDim' | 'vocabSize' | 'rmsNormEps' | 'attentionBias' | 'tieWordEmbeddings' | 'residualRotations'> & {
  /** 0: full causal attention. */
  slidingWindow: number;
  dtype: Dtype;
  invFreq: Float32Array;
};

export interface ForwardStats {
  /** Mean fraction of matrix inputs kept (1 = dense). */
  selectedFraction: number;
  /** Weight bytes the call streamed (a prefill GEMM counts each matrix once). */
  weightBytes: number;
}

export interface NativeBinding {
  isa(): Isa;
  cpuFeatures(): number;
  setThreads(n: number): number;
  threads(): number;
  alloc(bytes: number): ArrayBuffer;
  detach(buffer: ArrayBuffer): void;
  colNorms(isa: Isa | null, dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, norms: Float32Array): void;
  gatingScores(isa: Isa | null, x: Float32Array, norms: Float32Array | null, scores: Float32Array): void;
  selectThreshold(isa: Isa | null, scores: Float32Array, threshold: number, indices: Int32Array): number;
  selectTopk(isa: Isa | null, scores: Float32Array, k: number, indices: Int32Array): number;
  gemvSparse(isa: Isa | null, dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, x: Float32Array,
    indices: Int32Array, count: number, y: Float32Array): void;
  gemvDense(isa: Isa | null, dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, x: Float32Array,
    y: Float32Array): void;
  linearDense(dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, x: Float32Array, y: Float32Array): void;
  linearSparse(dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, x: Float32Array, indices: Int32Array,
    count: number, y: Float32Array): void;
  linearDenseAsync(dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, x: Float32Array,
    y: Float32Array): Promise<void>;
  linearSparseAsync(dtype: Dtype, w: Weights, ld: number, nIn: number, out: number, x: Float32Array,
    indices: Int32Array, count: number, y: Float32Array): Promise<void>;
  modelCreate(config: NativeModelConfig): ModelHandle;
  /** Rows [row0, row0 + rows) of a tensor; chunks arrive in order. */
  modelSetTensor(model: ModelHandle, kind: number, layer: number, data: ArrayBufferView, srcDtype: Dtype,
    rows: number, cols: number, perm: Int32Array | null, row0?: number): void;
  modelFinalize(model: ModelHandle): void;
  modelInfo(model: ModelHandle): { weightBytes: number; finalized: boolean };
  modelColumnNorms(model: ModelHandle, layer: number, matrix: number): Float32Array;
  modelDispose(model: ModelHandle): void;
  sessionCreate(model: ModelHandle, contextLength: number): SessionHandle;
  sessionDispose(session: SessionHandle): void;
  sessionPos(session: SessionHandle): number;
  sessionSetPos(session: SessionHandle, pos: number): void;
  sessionSetPlan(session: SessionHandle, plan: NativePlan | null): void;
  forward(session: SessionHandle, tokens: Int32Array, logitsMode: number, logits: Float32Array | null): ForwardStats;
  forwardAsync(session: SessionHandle, tokens: Int32Array, logitsMode: number,
    logits: Float32Array | null): Promise<ForwardStats>;
  embed(model: ModelHandle, tokens: Int32Array, x: Float32Array): void;
  layerForward(model: ModelHandle, layer: number, x: Float32Array, T: number, plan: NativePlan | null,
    y: Float32Array, captures: Float32Array[] | null): void;
  headForward(model: ModelHandle, x: Float32Array, T: number, logits: Float32Array): void;
  convertF32(src: Float32Array, dtype: Dtype, dst: Uint16Array): void;
  /** Median GB/s of reading a buffer of `bytes` with the pool's threads. */
  readBandwidth(bytes: number, reps: number): number;
}

/** The package root (lib/ and dist/ both sit one level below it). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeBinding;
  try {
    return nodeGypBuild(packageRoot);
  } catch (err) {
    const platform = `${process.platform}-${process.arch}`;
    const message = [
      `wina: could not load its native addon for ${platform} (Node ${process.version}, N-API 8).`,
      `Tried: ${path.join(packageRoot, 'build', 'Release', 'wina.node')} and`,
      `${path.join(packageRoot, 'prebuilds', platform)}/*.node.`,
      `Cause: ${(err as Error).message.split('\n')[0]}`,
      'Fixes:',
      '  - build it from source: `npm rebuild wina` (needs python3, make and a C++17 compiler), or',
      '  - from a clone of the repository: `npm ci && npm run build:native`, or',
      '  - use a platform with a shipped prebuild (linux-x64).',
    ].join('\n');
    throw new Error(message, { cause: err });
  }
}

export const native: NativeBinding = load();
