// llama.cpp on the same weights, through node-llama-cpp (a devDependency with prebuilt binaries): the
// checkpoint is written once as GGUF (same dtype), then prefill and decode are timed like ours.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { openCheckpoint, readTensorBytes } from '../loaders/index.js';
import { syntheticGgufVocab, ggufVocabFromTokenizerJson, writeGguf, type TensorSource } from '../loaders/writers.js';
import type { Model } from '../model.js';
import type { DtypeName } from '../tensor.js';
import { median } from './stats.js';

export interface LlamaCppResult {
  version: string;
  prefillTokS: number;
  decodeTokS: number;
}


async function ensureGguf(modelPath: string, dtype: DtypeName, log: (s: string) => void): Promise<string> {
  if (modelPath.endsWith('.gguf')) return modelPath;
  const out = path.join(modelPath, `wina-bench-${dtype}.gguf`);
  if (fs.existsSync(out)) return out;
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

export async function runLlamaCpp(model: Model, modelPath: string, o: {
  prompt: number[]; tokens: number; repeats: number; threads: number; dtype: DtypeName; log: (s: string) => void;
}): Promise<LlamaCppResult> {
  let lib: typeof import('node-llama-cpp');
  try {
    lib = await import('node-llama-cpp');
  } catch {
    throw new Error('--compare llama.cpp needs node-llama-cpp (a devDependency): run `npm install` in the wina repository');
  }
  const file = await ensureGguf(modelPath, o.dtype, o.log);
  const llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: lib.LlamaLogLevel.error });
  const lm = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
  const prefill: number[] = [];
  const decode: number[] = [];
  try {
    for (let r = 0; r < o.repeats; r++) {
      const ctx = await lm.createContext({ contextSize: o.prompt.length + o.tokens + 8, threads: o.threads, batchSize: o.prompt.length });
      try {
        const seq = ctx.getSequence();
        const t0 = performance.now();
        await seq.evaluateWithoutGeneratingNewTokens(o.prompt as never);
        const t1 = performance.now();
        let n = 0;
        // Greedy decode of `tokens` new tokens (the first comes from the prompt's logits).
        const gen = seq.evaluate([o.prompt[o.prompt.length - 1]] as never, { temperature: 0 });
        const t2 = performance.now();
        for await (const _ of gen) {
          if (++n >= o.tokens) break;
        }
        const t3 = performance.now();
        prefill.push(o.prompt.length / ((t1 - t0) / 1000));
        decode.push(n / ((t3 - t2) / 1000));
      } finally {
        await ctx.dispose();
      }
    }
  } finally {
    await lm.dispose();
  }
  void model;
  let version = 'unknown';
  try {
    const require = createRequire(import.meta.url);
    const pkg = JSON.parse(fs.readFileSync(require.resolve('node-llama-cpp/package.json'), 'utf8'));
    version = pkg.version;
  } catch {
    // version is informative only
  }
  return { version, prefillTokS: median(prefill), decodeTokS: median(decode) };
}
