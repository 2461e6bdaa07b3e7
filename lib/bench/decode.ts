// `wina bench decode`: prefill and decode tokens/s of dense and sparse variants, measured side by side
// (alternating, same process, same weights), with the bytes of weights each token reads and the ideal
// speedup those bytes predict. Optionally llama.cpp (node-llama-cpp) on the same weights.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadModel, DEFAULT_MODEL_PATH, type Model } from '../model.js';
import { shapeConfig, writeRandomCheckpoint, type ShapeName } from '../synthetic.js';
import { matrixInputs, MATRICES, planLevels, type SparsityOptions } from '../sparsity/plan.js';
import { dtypeBytes, type DtypeName } from '../tensor.js';
import { loadOptionsFrom, sparsityFrom } from '../cli.js';
import { calibrateModel } from '../sparsity/calibrate.js';
import { median } from './stats.js';

/** Bytes of weights one decode token reads under the given per-layer per-matrix levels. */
export function bytesPerToken(model: Model, levels: number[][] | null): number {
  const c = model.config;
  const eb = dtypeBytes(model.dtype);
  const outs = [c.numHeads * c.headDim, c.numKvHeads * c.headDim, c.numKvHeads * c.headDim, c.hiddenSize,
    c.intermediateSize, c.intermediateSize, c.hiddenSize];
  let bytes = c.vocabSize * c.hiddenSize * eb; // lm_head stays dense
  for (let l = 0; l < c.numLayers; l++) {
    MATRICES.forEach((name, j) => {
      const nIn = matrixInputs(c, name);
      const keep = levels ? Math.floor(nIn * (1 - levels[l][j]) + 1e-9) : nIn;
      bytes += keep * outs[j] * eb;
    });
    if (c.residualRotations) bytes += 2 * c.hiddenSize * c.hiddenSize * eb;
  }
  return bytes;
}

async function ensureShapeModel(shape: ShapeName, dtype: DtypeName, cacheDir: string, rotations: boolean, log: (s: string) => void): Promise<string> {
  const dir = path.join(cacheDir, `${shape}-${dtype}${rotations ? '-transformed' : ''}`);
  const marker = path.join(dir, '.complete');
  if (!fs.existsSync(marker)) {
    log(`writing a random-weight ${shape} checkpoint (${dtype}) to ${dir} ...`);
    const t0 = performance.now();
    const cfg = rotations
      ? { ...shapeConfig(shape), tie_word_embeddings: false, wina_transform: { version: 1, source: 'random', note: 'speed benchmark' } }
      : shapeConfig(shape);
    const r = await writeRandomCheckpoint(dir, cfg, { dtype: dtype.toUpperCase() as 'F32' | 'BF16' | 'F16', seed: 1 });
    fs.writeFileSync(marker, '');
    log(`  ${(r.bytes / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return dir;
}

function randomTokens(n: number, vocab: number, seed: number): number[] {
  let x = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out.push(3 + (x % (vocab - 3)));
  }
  return out;
}

async function runOurs(model: Model, sparsity: SparsityOptions | null, prompt: number[], tokens: number): Promise<{ prefill: number; decode: number; bytes: number; kept: number }> {
  const s = model.createSession({ contextLength: prompt.length + tokens + 1, sparsity });
  try {
    const t0 = performance.now();
    let { logits } = await s.forward(prompt, { logits: 'last' });
    const t1 = performance.now();
    let bytes = 0, kept = 0;
    for (let i = 0; i < tokens; i++) {
      let best = 0;
      for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
      const r = await s.forward([best], { logits: 'last', into: logits });
      logits = r.logits;
      bytes += r.stats.weightBytes;
      kept += r.stats.selectedFraction;
    }
    const t2 = performance.now();
    return { prefill: prompt.length / ((t1 - t0) / 1000), decode: tokens / ((t2 - t1) / 1000), bytes: bytes / tokens, kept: kept / tokens };
  } finally {
    s.dispose();
  }
}

export async function runBenchDecode(o: Record<string, unknown>): Promise<void> {
  const json = Boolean(o.json);
  const log = (s: string) => process.stderr.write(s + '\n');
  const dtype = (o.dtype as DtypeName | undefined) ?? 'bf16';
  let modelPath = (o.model as string | undefined) ?? DEFAULT_MODEL_PATH;
  const cacheDir = (o.cacheDir as string | undefined) ?? path.join(os.tmpdir(), 'wina-bench-models');
  if (o.shape) {
    modelPath = await ensureShapeModel(o.shape as ShapeName, dtype, cacheDir, Boolean(o.transformed), log);
  }
  const rssBefore = process.memoryUsage().rss;
  const model = await loadModel(modelPath, { ...loadOptionsFrom(o), dtype: o.model ? (o.dtype as DtypeName | undefined) : dtype, progress: !json });
  // Peak resident memory of the load (maxRSS is the process's high-water mark, in KiB) against the
  // bytes of weights kept: the loader reads one tensor at a time, so this stays near 1x.
  const peakLoad = process.resourceUsage().maxRSS * 1024 - rssBefore;
  const loadRow = { engine: 'wina', variant: 'load', model: o.shape ?? modelPath, dtype: model.dtype, loadSeconds: +model.loadSeconds.toFixed(2),
    weightBytes: model.weightBytes, peakRssBytes: peakLoad, peakOverWeights: +(peakLoad / model.weightBytes).toFixed(3) };
  try {
    const promptTokens = o.promptTokens as number;
    const tokens = o.tokens as number;
    const repeats = o.repeats as number;
    const prompt = randomTokens(promptTokens, model.config.vocabSize, 7);
    const threads = (await import('../kernels.js')).getThreads();
    const variants: { name: string; sparsity: SparsityOptions | null }[] = [{ name: 'dense', sparsity: null }];
    const sp = sparsityFrom(o);
    if (sp) {
      let calibration = model.calibration ?? undefined;
      if (!calibration && (sp.select === 'threshold' || o.select === undefined)) {
        // Thresholds need score distributions: measure them on random tokens of this model (a speed
        // benchmark; quality needs real calibration text, see `wina calibrate`).
        log('calibrating thresholds on random tokens ...');
        calibration = await calibrateModel(model, [randomTokens(Math.min(256, model.config.maxPositions), model.config.vocabSize, 11)], {});
      }
      const selects = o.select ? [o.select as 'topk' | 'threshold'] : (['threshold', 'topk'] as const);
      for (const select of selects)
        variants.push({ name: `${sp.method}-${select}@${sp.sparsity}`, sparsity: { ...sp, select, calibration } });
    }
    const results = new Map<string, { prefill: number[]; decode: number[]; bytes: number; kept: number }>();
    for (const v of variants) results.set(v.name, { prefill: [], decode: [], bytes: 0, kept: 0 });
    // llama.cpp stays loaded and runs once per repeat right after ours: the host's bandwidth drifts
    // within minutes, so only alternating runs compare.
    const lc = o.compare ? await (await import('./llamacpp.js')).LlamaCppRunner.open(modelPath, { threads, log, dtype: model.dtype, cacheDir }) : null;
    const lcRuns = { prefill: [] as number[], decode: [] as number[] };
    await runOurs(model, null, prompt.slice(0, 8), 2); // warm-up
    if (lc) await lc.run(prompt.slice(0, 8), 2);
    for (let r = 0; r < repeats; r++) {
      if (lc) {
        const m = await lc.run(prompt, tokens);
        lcRuns.prefill.push(m.prefill);
        lcRuns.decode.push(m.decode);
      }
      for (const v of variants) {
        const m = await runOurs(model, v.sparsity, prompt, tokens);
        const res = results.get(v.name)!;
        res.prefill.push(m.prefill);
        res.decode.push(m.decode);
        res.bytes = m.bytes; // the same tokens every repeat: bytes per token are deterministic
        res.kept = m.kept;
      }
    }
    // Bytes per decode token as the engine counted them (selected columns x their length, lm_head,
    // shortcut rotations); for top-k they equal bytesPerToken(levels), for thresholds they depend on the
    // calibration and the text.
    const denseBytes = results.get('dense')!.bytes;
    const denseDecode = median(results.get('dense')!.decode);
    const rows: Record<string, unknown>[] = [loadRow];
    for (const v of variants) {
      const res = results.get(v.name)!;
      const bytes = res.bytes;
      const decode = median(res.decode);
      const row = {
        engine: 'wina', variant: v.name, model: o.shape ?? modelPath, dtype: model.dtype, threads,
        promptTokens, tokens, repeats,
        prefillTokS: +median(res.prefill).toFixed(2), decodeTokS: +decode.toFixed(2),
        gbps: +((bytes * decode) / 1e9).toFixed(2), bytesPerToken: bytes, keptFraction: +res.kept.toFixed(3),
        planBytesPerToken: bytesPerToken(model, v.sparsity ? planLevels(model.config, v.sparsity) : null),
        speedup: +(decode / denseDecode).toFixed(3), idealSpeedup: +(denseBytes / bytes).toFixed(3),
        ofIdeal: +((decode / denseDecode) / (denseBytes / bytes)).toFixed(3),
      };
      rows.push(row);
    }
    if (lc) {
      const lcDecode = median(lcRuns.decode), lcPrefill = median(lcRuns.prefill);
      rows.push({ engine: 'llama.cpp', variant: `node-llama-cpp ${lc.version}`, model: o.shape ?? modelPath, dtype: model.dtype,
        threads, promptTokens, tokens, repeats, prefillTokS: +lcPrefill.toFixed(2), decodeTokS: +lcDecode.toFixed(2),
        gbps: +((denseBytes * lcDecode) / 1e9).toFixed(2), winaDenseOverLlamaCpp: +(denseDecode / lcDecode).toFixed(3),
        winaPrefillOverLlamaCpp: +(median(results.get('dense')!.prefill) / lcPrefill).toFixed(3),
        bestSparseOverLlamaCpp: +(Math.max(...rows.map((r) => Number(r.decodeTokS) || 0)) / lcDecode).toFixed(3) });
      await lc.close();
    }
    if (json) {
      for (const r of rows) process.stdout.write(JSON.stringify(r) + '\n');
      return;
    }
    console.log(`model ${o.shape ?? modelPath} (${model.dtype}), ${threads} threads, prompt ${promptTokens}, ` +
      `decode ${tokens} tokens, median of ${repeats} alternating runs`);
    console.log('engine     variant                         prefill tok/s  decode tok/s   GB/s   speedup  ideal  of-ideal  kept');
    console.log(`load: ${loadRow.loadSeconds} s, ${(loadRow.weightBytes / 1e9).toFixed(2)} GB of weights, peak RSS growth ` +
      `${(loadRow.peakRssBytes / 1e9).toFixed(2)} GB = ${loadRow.peakOverWeights}x the weights`);
    for (const r of rows) {
      if (r.variant === 'load') continue;
      console.log(`${String(r.engine).padEnd(10)} ${String(r.variant).padEnd(31)} ${String(r.prefillTokS).padStart(13)} ` +
        `${String(r.decodeTokS).padStart(13)} ${String(r.gbps).padStart(6)} ${String(r.speedup ?? '').padStart(9)} ` +
        `${String(r.idealSpeedup ?? '').padStart(6)} ${String(r.ofIdeal ?? '').padStart(9)} ${String(r.keptFraction ?? '').padStart(5)}`);
    }
    const lcRow = rows.find((r) => r.engine === 'llama.cpp');
    if (lcRow) console.log(`wina dense / llama.cpp decode: ${lcRow.winaDenseOverLlamaCpp}x; best wina variant / llama.cpp decode: ` +
      `${lcRow.bestSparseOverLlamaCpp}x; prefill: ${lcRow.winaPrefillOverLlamaCpp}x`);
  } finally {
    model.dispose();
  }
}
