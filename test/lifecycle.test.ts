// The dangerous lifecycles: native memory released by dispose() and by the GC, the addon inside
// worker_threads, the shipped prebuild loading with no build folder, each ISA forced by WINA_ISA, and a
// model disposed while sessions exist.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

import { loadModel } from '../lib/model.js';
import { supportedIsas } from '../lib/kernels.js';
import { native } from '../lib/native.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const prebuildDir = path.join(repoRoot, 'prebuilds', `${process.platform}-${process.arch}`);

/** Runs an ESM snippet in a fresh node process (CommonJS require of the addon via node-gyp-build). */
function runNode(code: string, opts: { env?: Record<string, string>; args?: string[]; cwd?: string } = {}): string {
  return execFileSync(process.execPath, [...(opts.args ?? []), '--input-type=module', '-e', code], {
    cwd: opts.cwd ?? repoRoot, env: { ...process.env, ...opts.env }, encoding: 'utf8', timeout: 60_000,
  });
}

const LOAD = (dir: string) => `
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(path.join(repoRoot, 'package.json'))});
const native = require('node-gyp-build')(${JSON.stringify(dir)});
`;

describe('native memory', () => {
  it('dispose() returns memory at once; the GC returns what was never disposed', () => {
    const out = runNode(`${LOAD(repoRoot)}
      const rss = () => process.memoryUsage().rss / 2 ** 20;
      const base = rss();
      // 40 x 64 MiB touched and dropped without dispose: the GC must release them.
      for (let i = 0; i < 40; i++) { const b = native.alloc(64 * 2 ** 20); new Uint8Array(b).fill(1); if (i % 4 === 0) globalThis.gc(); }
      globalThis.gc(); await new Promise((r) => setTimeout(r, 50)); globalThis.gc();
      const afterGc = rss() - base;
      // 1 GiB touched, then detached: released without waiting for the GC.
      const big = native.alloc(2 ** 30); new Uint8Array(big).fill(1);
      const held = rss() - base;
      native.detach(big);
      await new Promise((r) => setTimeout(r, 50));
      const released = rss() - base;
      console.log(JSON.stringify({ afterGc, held, released }));
    `, { args: ['--expose-gc'] });
    const r = JSON.parse(out.trim().split('\n').pop()!) as { afterGc: number; held: number; released: number };
    expect(r.afterGc).toBeLessThan(1024); // 40 x 64 MiB = 2.5 GiB allocated in total
    expect(r.held).toBeGreaterThan(900);
    expect(r.released).toBeLessThan(r.held - 800);
  });

  it('a model disposed with live sessions disposes them; later calls throw instead of crashing', async () => {
    const model = await loadModel(undefined, { progress: false });
    const s = model.createSession({ contextLength: 8 });
    await s.forward([1, 349]);
    model.dispose();
    expect(s.disposed).toBe(true);
    await expect(s.forward([5])).rejects.toThrow(/disposed/);
    expect(() => model.createSession()).toThrow(/disposed/);
    model.dispose(); // idempotent
  });
});

describe('worker_threads', () => {
  it('the addon loads and computes inside workers, the same as on the main thread', () => {
    const out = runNode(`
      import { Worker } from 'node:worker_threads';
      const code = \`
        const { parentPort } = require('node:worker_threads');
        const native = require(${JSON.stringify(path.join(repoRoot, 'node_modules', 'node-gyp-build'))})(${JSON.stringify(repoRoot)});
        const nIn = 300, out = 77, w = new Float32Array(nIn * out), x = new Float32Array(nIn), y = new Float32Array(out);
        for (let i = 0; i < w.length; i++) w[i] = Math.sin(i);
        for (let i = 0; i < nIn; i++) x[i] = Math.cos(i);
        native.linearDense(0, w, out, nIn, out, x, y);
        parentPort.postMessage({ isa: native.isa(), y: Array.from(y) });
      \`;
      const run = () => new Promise((res, rej) => { const wk = new Worker(code, { eval: true, execArgv: [] }); wk.on('message', res); wk.on('error', rej); });
      const results = await Promise.all([run(), run(), run()]);
      console.log(JSON.stringify(results));
    `);
    const results = JSON.parse(out.trim().split('\n').pop()!) as { isa: string; y: number[] }[];
    expect(results).toHaveLength(3);
    // Same numbers in every worker, and against a float64 computation here.
    const nIn = 300, outN = 77;
    for (let o = 0; o < outN; o++) {
      let want = 0;
      for (let i = 0; i < nIn; i++) want += Math.fround(Math.sin(i * outN + o)) * Math.fround(Math.cos(i));
      for (const r of results) expect(Math.abs(r.y[o] - want)).toBeLessThan(1e-3);
    }
    expect(results[1].y).toEqual(results[0].y);
  });
});

describe('prebuild and ISA selection', () => {
  it.skipIf(!fs.existsSync(prebuildDir))('the shipped prebuild loads with no build folder', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-prebuild-'));
    try {
      fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(tmp, 'package.json'));
      fs.cpSync(path.join(repoRoot, 'prebuilds'), path.join(tmp, 'prebuilds'), { recursive: true });
      expect(fs.existsSync(path.join(tmp, 'build'))).toBe(false);
      const out = runNode(`${LOAD(tmp)}
        const s = new Float32Array([3, 1, 2, 5]), idx = new Int32Array(2);
        console.log(JSON.stringify({ isa: native.isa(), n: native.selectTopk(null, s, 2, idx), idx: Array.from(idx), api: Object.keys(native).sort() }));
      `);
      const r = JSON.parse(out.trim().split('\n').pop()!);
      expect({ ...r, api: undefined }).toEqual({ isa: supportedIsas().at(-1), n: 2, idx: [0, 3], api: undefined });
      // A stale prebuild (older than the sources) would miss functions: rebuild with `npm run build:prebuilds`.
      expect(r.api).toEqual(Object.keys(native).sort());
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it.each(supportedIsas())('WINA_ISA=%s forces that kernel table, and the model still matches its golden logits', (isa) => {
    const ref = path.join(repoRoot, 'test', 'fixtures', 'tiny-en-llama-reference.json');
    const out = runNode(`
      import fs from 'node:fs';
      const { native } = await import(${JSON.stringify(path.join(repoRoot, 'dist', 'native.js'))});
      const { loadModel } = await import(${JSON.stringify(path.join(repoRoot, 'dist', 'model.js'))});
      const r = JSON.parse(fs.readFileSync(${JSON.stringify(ref)}, 'utf8')).references[1];
      const m = await loadModel(undefined, { progress: false });
      const s = m.createSession({ contextLength: 16 });
      const { logits } = await s.forward(r.prompt_ids);
      let worst = 0, lo = Infinity, hi = -Infinity;
      for (let i = 0; i < logits.length; i++) { worst = Math.max(worst, Math.abs(logits[i] - r.last_logits[i])); lo = Math.min(lo, r.last_logits[i]); hi = Math.max(hi, r.last_logits[i]); }
      console.log(JSON.stringify({ isa: native.isa(), rel: worst / (hi - lo) }));
    `, { env: { WINA_ISA: isa } });
    const r = JSON.parse(out.trim().split('\n').pop()!);
    expect(r.isa).toBe(isa);
    expect(r.rel).toBeLessThan(1e-3);
  });

  it('the package entry point (`import ... from "wina"`) exposes the API and generates', () => {
    const out = runNode(`
      const wina = await import('wina');
      const m = await wina.loadModel(undefined, { progress: false });
      const r = await m.complete('In the beginning', { maxTokens: 6, temperature: 0 });
      m.dispose();
      console.log(JSON.stringify({ n: r.tokenIds.length, api: ['loadModel', 'WinaLoadError', 'gemvSparse', 'calibrateModel', 'transformCheckpoint', 'perplexity'].filter((k) => typeof wina[k] === 'function') }));
    `);
    const r = JSON.parse(out.trim().split('\n').pop()!);
    expect(r.n).toBe(6);
    expect(r.api).toHaveLength(6);
  });

  it('a missing binary gives an actionable error', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-nobinary-'));
    try {
      fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(tmp, 'package.json'));
      fs.mkdirSync(path.join(tmp, 'lib'));
      fs.copyFileSync(path.join(repoRoot, 'dist', 'native.js'), path.join(tmp, 'lib', 'native.js'));
      const err = (() => {
        try {
          runNode(`await import(${JSON.stringify(path.join(tmp, 'lib', 'native.js'))});`, { cwd: tmp, env: { NODE_PATH: path.join(repoRoot, 'node_modules') } });
          return '';
        } catch (e) {
          return String((e as { stderr?: string }).stderr);
        }
      })();
      expect(err).toMatch(/could not load its native addon/);
      expect(err).toMatch(/npm rebuild wina/);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
