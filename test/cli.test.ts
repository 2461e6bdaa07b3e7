// The `wina` command end to end (bin/wina.js over the compiled dist/): generate on the embedded model,
// calibrate -> generate with thresholds, transform -> same greedy text, and clear errors with exit code 1.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(repoRoot, 'bin', 'wina.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function wina(...args: string[]): string {
  return execFileSync(process.execPath, [bin, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

function generateJson(...args: string[]) {
  return JSON.parse(wina('generate', ...args, '--json').trim()) as {
    text: string; tokenIds: number[]; finishReason: string; stats: { promptTokens: number; generatedTokens: number; keptFraction: number };
  };
}

describe('wina CLI', () => {
  it('generate --json: greedy continuation of the embedded model', () => {
    const r = generateJson('In the beginning', '--max-tokens', '6', '--temperature', '0');
    // tiny-en-llama's greedy continuation: " of the last year, the"
    expect(r.tokenIds).toEqual([272, 262, 753, 509, 4030, 262]);
    expect(r.text).toBe(' of the last year, the');
    expect(r.finishReason).toBe('length');
    expect(r.stats.promptTokens).toBe(4);
  });

  it('generate with sparsity reports the kept fraction', () => {
    const r = generateJson('In the beginning', '--max-tokens', '6', '--temperature', '0', '--method', 'wina', '--sparsity', '0.5', '--select', 'topk');
    expect(r.stats.keptFraction).toBeCloseTo(0.5, 6);
    expect(r.tokenIds).toHaveLength(6);
  });

  it('calibrate writes a file that generate --calibration uses for thresholds', () => {
    const text = path.join(tmp, 'calib.txt');
    fs.writeFileSync(text, 'The people of the United States are in the United States. '.repeat(40));
    const out = path.join(tmp, 'cal.json');
    wina('calibrate', '--text', text, '--out', out, '--tokens', '256', '--seq-len', '128');
    const cal = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(cal.format).toBe('wina-calibration');
    expect(cal.quantiles.abs).toHaveLength(4);
    const r = generateJson('In the beginning', '--max-tokens', '6', '--temperature', '0', '--method', 'teal', '--sparsity', '0.5',
      '--select', 'threshold', '--calibration', out);
    expect(r.stats.keptFraction).toBeGreaterThan(0.2);
    expect(r.stats.keptFraction).toBeLessThan(0.8);
  });

  it('transform writes a checkpoint with the same dense greedy text', () => {
    const out = path.join(tmp, 'transformed');
    wina('transform', '--out', out, '--dtype', 'f32');
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).wina_transform).toBeTruthy();
    const a = generateJson('In the beginning', '--max-tokens', '12', '--temperature', '0', '--dtype', 'f32');
    const b = generateJson('In the beginning', '--max-tokens', '12', '--temperature', '0', '--model', out);
    expect(b.tokenIds).toEqual(a.tokenIds);
  });

  it('bad input: one clear line on stderr and exit code 1, nothing on stdout', () => {
    for (const args of [
      ['generate', 'x', '--model', path.join(tmp, 'missing')],
      ['generate', 'x', '--method', 'wina', '--select', 'threshold'],
    ]) {
      const r = spawnSync(process.execPath, [bin, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^wina: /);
    }
    const r = spawnSync(process.execPath, [bin, 'generate', 'x', '--sparsity', '2'], { cwd: repoRoot, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/sparsity must be a number/);
  });
});
