// llama.cpp on the same weights, through node-llama-cpp (a devDependency with prebuilt binaries): the
// checkpoint is written once as GGUF (same dtype), then prefill and decode are timed like ours.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { openCheckpoint, readTensorBytes } from '../loaders/index.js';
import { syntheticGgufVocab, ggufVocabFromTokenizerJson, writeGguf, type TensorSource } from '../loaders/writers.js';
import type { DtypeName } from '../tensor.js';


async function ensureGguf(modelPath: string, dtype: DtypeName, cacheDir: string, log: (s: string) => void): Promise<string> {
  if (modelPath.endsWith('.gguf')) return modelPath;
  // Written beside the benchmark's other files, never into the user's checkpoint folder; reused while the
  // checkpoint is unchanged (its mtime is part of the name).
  const stamp = Math.floor(fs.statSync(modelPath).mtimeMs);
  const out = path.join(cacheDir, `${path.basename(path.resolve(modelPath))}-${stamp}-${dtype}.gguf`);
  if (fs.existsSync(out)) return out;
  fs.mkdirSync(cacheDir, { recursive: true });
  const ck = await openCheckpoint(modelPath);
  const fileDtype = [...ck.tensors.values()][0].dtype;
  if (fileDtype.toLowerCase() !== dtype) throw new Error(`--compare writes the checkpoint's own dtype (${fileDtype}); load it with --dtype ${fileDtype.toLowerCase()}`);
  log(`writing ${out} for llama.cpp ...`);
  const tensors: TensorSource[] = [...ck.tensors.values()].map((info) => ({
    name: info.name, dtype: info.dtype as 'F32' | 'F16' | 'BF16', shape: info.shape,
    read: () => readTensorBytes(info),
  }));
  const vocab = ck.tokenizer ? ggufVocabFromTokenizerJson(ck.tokenizer.json, ck.tokenizer.config) : syntheticGgufVocab(ck.config.vocabSize);
  await writeGguf(out + '.tmp', { config: ck.config, vocab, tensors });
  fs.renameSync(out + '.tmp', out);
  return out;
}

/** llama.cpp with the model loaded once, so that its runs can alternate with ours in one process. */
export class LlamaCppRunner {
  readonly version: string;
  #lm: import('node-llama-cpp').LlamaModel;
  #threads: number;

  private constructor(lm: import('node-llama-cpp').LlamaModel, threads: number, version: string) {
    this.#lm = lm;
    this.#threads = threads;
    this.version = version;
  }

  static async open(modelPath: string, o: { threads: number; dtype: DtypeName; cacheDir: string; log: (s: string) => void }): Promise<LlamaCppRunner> {
    let lib: typeof import('node-llama-cpp');
    try {
      lib = await import('node-llama-cpp');
    } catch {
      throw new Error('--compare llama.cpp needs node-llama-cpp (a devDependency): run `npm install` in the wina repository');
    }
    const file = await ensureGguf(modelPath, o.dtype, o.cacheDir, o.log);
    const llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: lib.LlamaLogLevel.error });
    const lm = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
    let version = 'unknown';
    try {
      const require = createRequire(import.meta.url);
      let dir = path.dirname(require.resolve('node-llama-cpp'));
      while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
      version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
    } catch {
      // informative only
    }
    return new LlamaCppRunner(lm, o.threads, version);
  }

  /** One prefill of `prompt` and a greedy decode of `tokens` tokens: tokens/s of each. */
  async run(prompt: number[], tokens: number): Promise<{ prefill: number; decode: number }> {
    const ctx = await this.#lm.createContext({ contextSize: prompt.length + tokens + 8, threads: this.#threads, batchSize: prompt.length });
    try {
      const seq = ctx.getSequence();
      const t0 = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(prompt as never);
      const t1 = performance.now();
      let n = 0;
      // The generator re-evaluates the last prompt token, then yields one new token per step.
      const t2 = performance.now();
      for await (const _ of seq.evaluate([prompt[prompt.length - 1]] as never, { temperature: 0 })) {
        if (++n >= tokens) break;
      }
      const t3 = performance.now();
      return { prefill: prompt.length / ((t1 - t0) / 1000), decode: n / ((t3 - t2) / 1000) };
    } finally {
      await ctx.dispose();
    }
  }

  async close(): Promise<void> {
    await this.#lm.dispose();
  }
}
