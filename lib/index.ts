// wina: the public API.
export { loadModel, Model, DEFAULT_MODEL_PATH, type LoadOptions } from './model.js';
export { Session, type ForwardResult, type LogitsMode } from './session.js';
export type { GenerateOptions, GenerateChunk, CompletionResult, GenerationStats, FinishReason } from './generate.js';
export { WinaLoadError } from './errors.js';
export { WinaTokenizer } from './tokenizer.js';
export { Sampler } from './sampling.js';
export {
  InputMajorMatrix, activeIsa, columnNorms, gatingScores, gemvDense, gemvDenseAsync, gemvSparse, gemvSparseAsync,
  getThreads, selectThreshold, selectTopk, setThreads, supportedIsas, type KernelOptions,
} from './kernels.js';
export { Tensor, type DtypeName } from './tensor.js';
export {
  buildPlan, MATRICES, METHODS, type Calibration, type Method, type Selection, type SparsityOptions,
} from './sparsity/plan.js';
export { calibrateModel, type CalibrateOptions } from './sparsity/calibrate.js';
export { transformCheckpoint } from './sparsity/transform.js';
export { openCheckpoint } from './loaders/index.js';
export type { Checkpoint, ModelConfig, TensorInfo } from './loaders/types.js';
export { perplexity } from './eval/metrics.js';
export { runSweep } from './eval/run.js';
