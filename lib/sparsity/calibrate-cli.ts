// `wina calibrate`: score distributions (thresholds for any sparsity) and, with --greedy, the block-wise
// greedy per-matrix allocation, measured on a calibration text file.
import cliProgress from 'cli-progress';
import fs from 'node:fs';

import { loadModel, DEFAULT_MODEL_PATH } from '../model.js';
import { loadOptionsFrom } from '../cli.js';
import { calibrateModel } from './calibrate.js';
import type { Method } from './plan.js';

/** Token windows of seqLen (BOS first when the tokenizer has one) covering up to maxTokens of the text. */
export function calibrationSequences(ids: number[], bos: number | null, seqLen: number, maxTokens: number): number[][] {
  const body = bos === null ? seqLen : seqLen - 1;
  const out: number[][] = [];
  let used = 0;
  for (let i = 0; i + body <= ids.length && used < maxTokens; i += body) {
    const w = ids.slice(i, i + body);
    out.push(bos === null ? w : [bos, ...w]);
    used += seqLen;
  }
  if (out.length === 0 && ids.length > 0) out.push(bos === null ? ids.slice(0, seqLen) : [bos, ...ids.slice(0, seqLen - 1)]);
  return out;
}

export async function runCalibrate(o: Record<string, unknown>): Promise<void> {
  const model = await loadModel((o.model as string | undefined) ?? DEFAULT_MODEL_PATH, { ...loadOptionsFrom(o), calibration: undefined });
  try {
    const tok = model.tokenizer;
    if (!tok) throw new TypeError('calibration needs a model with a tokenizer');
    const text = fs.readFileSync(o.text as string, 'utf8');
    const seqLen = Math.min(o.seqLen as number, model.config.maxPositions);
    const seqs = calibrationSequences(tok.encode(text, { addSpecialTokens: false }), tok.bosId, seqLen, o.tokens as number);
    if (seqs.length === 0) throw new RangeError(`${o.text as string}: no text to calibrate on`);
    const bar = process.stderr.isTTY ? new cliProgress.SingleBar({ stream: process.stderr, format: 'calibrating {bar} layer {value}/{total} | {eta}s' }, cliProgress.Presets.shades_classic) : null;
    bar?.start(model.config.numLayers, 0);
    const t0 = performance.now();
    const method = o.method as Exclude<Method, 'dense'>;
    const cal = await calibrateModel(model, seqs, {
      greedy: o.greedy ? { method, target: o.target as number, step: o.step as number } : undefined,
      onProgress: (_s, done) => bar?.update(done),
    });
    bar?.stop();
    fs.writeFileSync(o.out as string, JSON.stringify(cal));
    process.stderr.write(`calibrated on ${cal.tokens} tokens (${seqs.length} sequences of ${seqLen}) in ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s${o.greedy ? `, greedy table for ${method}` : ''} -> ${o.out as string}\n`);
  } finally {
    model.dispose();
  }
}
