// `wina transform`: the column-orthogonalising transform of the paper, written as a checkpoint.
import cliProgress from 'cli-progress';

import { DEFAULT_MODEL_PATH } from '../model.js';
import { transformCheckpoint } from './transform.js';

export async function runTransform(o: Record<string, unknown>): Promise<void> {
  const source = (o.model as string | undefined) ?? DEFAULT_MODEL_PATH;
  const dtype = o.dtype ? ((o.dtype as string).toUpperCase() as 'F32' | 'BF16' | 'F16') : undefined;
  const bar = process.stderr.isTTY ? new cliProgress.SingleBar({ stream: process.stderr, format: 'transform {bar} {value}/{total} {what}' }, cliProgress.Presets.shades_classic) : null;
  let started = false;
  const t0 = performance.now();
  const r = await transformCheckpoint(source, o.out as string, {
    dtype,
    onProgress: (p) => {
      if (!bar) return;
      if (!started) {
        bar.start(p.total, 0, { what: '' });
        started = true;
      }
      bar.update(p.done, { what: p.what });
    },
  });
  bar?.stop();
  process.stderr.write(`transformed ${source} -> ${r.outDir} (${r.dtype}, ${r.tensors} tensors) in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
}
