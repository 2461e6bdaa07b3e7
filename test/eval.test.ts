// Evaluation metrics, the method x sparsity sweep and its reports, on the embedded tiny-en-llama.
// Reference values are computed here from model.logits() with a separate float64 log-softmax, not by the
// functions under test.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

import { loadModel, type Model } from '../lib/model.js';
import { encodePair, logLikelihood, meanKl, perplexity, rollingWindows } from '../lib/eval/metrics.js';
import { runSweep, type SweepResult } from '../lib/eval/run.js';
import { markdownTable, svgPlot, writeReports } from '../lib/eval/report.js';
import { loadTaskData, parseMethods, parseSparsities, runEval } from '../lib/eval/cli.js';
import { scoreMultipleChoice, type MultipleChoiceRequest } from '../lib/eval/requests.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const hasShared = fs.existsSync(shared);

const TEXT =
  'The President said that the nation would stand by its friends in the hard years ahead. ' +
  'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, ' +
  'I thought I would sail about a little and see the watery part of the world.';

/** log-softmax of a row by a float64 log-sum-exp written independently of lib/eval/metrics.ts. */
function logProbsByHand(logits: Float32Array, vocab: number, row: number): number[] {
  const xs = Array.from(logits.subarray(row * vocab, (row + 1) * vocab), Number);
  const m = xs.reduce((a, b) => Math.max(a, b), -Infinity);
  const lse = m + Math.log(xs.reduce((s, x) => s + Math.exp(x - m), 0));
  return xs.map((x) => x - lse);
}

function nllByHand(logits: Float32Array, vocab: number, row: number, target: number): number {
  return -logProbsByHand(logits, vocab, row)[target];
}

let model: Model;
let vocab: number;
let ids: number[];
let bos: number;

beforeAll(async () => {
  model = await loadModel();
  vocab = model.config.vocabSize;
  ids = model.tokenizer!.encode(TEXT, { addSpecialTokens: false });
  bos = model.tokenizer!.bosId!;
});
afterAll(() => model?.dispose());

describe('rolling windows', () => {
  it('score every token exactly once, from the row just before it, within seqLen', () => {
    const tokens = Array.from({ length: 50 }, (_, i) => 100 + i);
    for (const [seqLen, stride, b] of [[8, 8, 1], [8, 3, 1], [8, 8, null], [8, 5, null], [64, 64, 1]] as const) {
      const ws = rollingWindows(tokens, { seqLen, stride, bos: b });
      const scored = ws.flatMap((w) => w.targets);
      expect(scored).toEqual(tokens.slice(b === null ? 1 : 0));
      for (const w of ws) {
        expect(w.input.length).toBeLessThanOrEqual(seqLen);
        if (b !== null) expect(w.input[0]).toBe(b);
        // Row r predicts the token after input[r]: input[r + 1], or the first token past the input.
        w.rows.forEach((r, i) => {
          const next = r + 1 < w.input.length ? w.input[r + 1] : tokens[tokens.indexOf(w.input[w.input.length - 1]) + 1];
          expect(next).toBe(w.targets[i]);
        });
      }
    }
  });
});

describe('perplexity', () => {
  it('equals exp(mean NLL) computed by hand from model.logits (one window)', async () => {
    const logits = await model.logits([bos, ...ids.slice(0, -1)], { sparsity: null });
    const nll = ids.reduce((s, t, i) => s + nllByHand(logits, vocab, i, t), 0) / ids.length;
    const r = await perplexity(model, TEXT);
    expect(r.windows).toBe(1);
    expect(r.tokens).toBe(ids.length);
    expect(r.nll).toBeCloseTo(nll, 6);
    expect(r.ppl).toBeCloseTo(Math.exp(nll), 4);
  });

  it('with disjoint windows of 16 scores each chunk after BOS (the last window full, as lm-eval)', async () => {
    let sum = 0;
    for (let s = 0; s < ids.length; s += 16) {
      const end = Math.min(ids.length, s + 16);
      const start = Math.max(0, end - 16);
      const logits = await model.logits([bos, ...ids.slice(start, end - 1)], { sparsity: null });
      for (let t = s; t < end; t++) sum += nllByHand(logits, vocab, t - start, ids[t]);
    }
    const r = await perplexity(model, ids, { seqLen: 16 });
    expect(r.windows).toBe(Math.ceil(ids.length / 16));
    expect(r.tokens).toBe(ids.length);
    expect(r.nll).toBeCloseTo(sum / ids.length, 6);
  });

  it('more left context (stride < seqLen) lowers the NLL of the same tokens', async () => {
    const disjoint = await perplexity(model, ids, { seqLen: 16 });
    const overlapped = await perplexity(model, ids, { seqLen: 16, stride: 4 });
    expect(overlapped.tokens).toBe(disjoint.tokens);
    expect(overlapped.nll).toBeLessThan(disjoint.nll);
  });
});

// The tiny-en-llama training run reports its validation loss over the whole held-out file, as a stream of
// `<s> paragraph </s>` lines cut into 442 non-overlapping 257-token windows: 4.2866 nats (perplexity 72.72,
// ../shared/models/tiny-en-llama/SOURCE.md), measured with PyTorch on the same BF16 weights. The whole file
// takes about 30 s on two cores, so it only runs when WINA_EVAL_FULL is set.
describe.skipIf(!hasShared || !process.env.WINA_EVAL_FULL)('known answer: training-format validation loss (needs ../shared and WINA_EVAL_FULL=1)', () => {
  it('reproduces 4.2866 nats over 113,152 tokens', async () => {
    const tok = model.tokenizer!;
    const lines = fs.readFileSync(path.join(shared, 'data/tiny-en-valid/valid.txt'), 'utf8').split('\n').filter((l) => l !== '');
    const stream = lines.flatMap((l) => [...tok.encode(l), tok.eosIds[0]]);
    expect(stream).toHaveLength(113_250);
    const r = await perplexity(model, stream, { seqLen: 256, bos: null, limit: 442 });
    expect(r.tokens).toBe(113_152);
    expect(r.nll).toBeCloseTo(4.2866, 3);
  });
});

describe('KL from dense', () => {
  it('is 0 for dense and positive and growing with sparsity', async () => {
    const input = [bos, ...ids];
    const positions = input.map((_, i) => i);
    const dense = await model.logits(input, { sparsity: null });
    expect(meanKl(dense, await model.logits(input, { sparsity: null }), positions, vocab)).toBeLessThan(1e-9);
    const at = async (s: number) => meanKl(dense, await model.logits(input, { sparsity: { method: 'teal', sparsity: s, select: 'topk' } }), positions, vocab);
    const kl25 = await at(0.25);
    const kl65 = await at(0.65);
    expect(kl25).toBeGreaterThan(0);
    expect(kl65).toBeGreaterThan(kl25);

    // Against KL = sum_j p_j (log p_j - log q_j) written out on three rows.
    const sparse = await model.logits(input, { sparsity: { method: 'wina', sparsity: 0.5, select: 'topk' } });
    const rows = [0, 7, input.length - 1];
    let byHand = 0;
    for (const r of rows) {
      const lp = logProbsByHand(dense, vocab, r);
      const lq = logProbsByHand(sparse, vocab, r);
      lp.forEach((l, j) => (byHand += Math.exp(l) * (l - lq[j])));
    }
    expect(meanKl(dense, sparse, rows, vocab)).toBeCloseTo(byHand / rows.length, 8);
  });
});

describe('logLikelihood', () => {
  it('moves the context\'s trailing space to the continuation (lm-eval _encode_pair)', () => {
    const tok = model.tokenizer!;
    const a = encodePair(tok, 'Question: is it cold?\nAnswer: ', 'yes', 256);
    const b = encodePair(tok, 'Question: is it cold?\nAnswer:', ' yes', 256);
    expect(a).toEqual(b);
    // " yes" is scored as it appears in running text, not as a text-initial "yes".
    expect(a.continuation).toEqual(tok.encode('Answer: yes', { addSpecialTokens: false }).slice(tok.encode('Answer:', { addSpecialTokens: false }).length));
  });

  it('decomposes: ll(ctx, a + b) = ll(ctx, a) + ll(ctx + a, b)', async () => {
    const tok = model.tokenizer!;
    const ctx = 'The President said';
    const a = ' that the nation';
    const b = ' would stand by its friends';
    // Only meaningful where the tokenisation of ctx + a + b splits at both boundaries.
    const whole = encodePair(tok, ctx, a + b, 256).continuation;
    expect(whole).toEqual([...encodePair(tok, ctx, a, 256).continuation, ...encodePair(tok, ctx + a, b, 256).continuation]);
    const lab = await logLikelihood(model, ctx, a + b);
    const la = await logLikelihood(model, ctx, a);
    const lb = await logLikelihood(model, ctx + a, b);
    expect(lab.tokens).toBe(whole.length);
    expect(lab.logProb).toBeCloseTo(la.logProb + lb.logProb, 4);
    expect(lab.logProb).toBeLessThan(0);
  });

  it('keeps BOS and drops the oldest context tokens when the pair is longer than the model', () => {
    const tok = model.tokenizer!;
    const p = encodePair(tok, TEXT.repeat(8), ' and the end', 256);
    expect(p.windows).toHaveLength(1);
    const w = p.windows[0];
    expect(w.input.length).toBe(256);
    expect(w.input[0]).toBe(bos);
    expect(w.rows[w.rows.length - 1]).toBe(w.input.length - 1);
    // The input ends with the text just before the last continuation token.
    const whole = tok.encode(TEXT.repeat(8) + ' and the end');
    expect(w.input.slice(1)).toEqual(whole.slice(whole.length - 256, -1));
  });

  it('scores a continuation longer than the model over several windows, each token once', async () => {
    const tok = model.tokenizer!;
    const long = ' ' + TEXT.repeat(6);
    const p = encodePair(tok, 'Question: what next?\nAnswer:', long, 64);
    expect(p.windows.length).toBeGreaterThan(1);
    expect(p.windows.flatMap((w) => w.targets)).toEqual(p.continuation);
    const whole = tok.encode('Question: what next?\nAnswer:' + long);
    let t = whole.length - p.continuation.length; // absolute position of the next target
    for (const w of p.windows) {
      expect(w.input.length).toBeLessThanOrEqual(64);
      expect(w.input[0]).toBe(bos);
      // After BOS the input is the text right before the window's last target...
      const last = t + w.targets.length - 1;
      expect(w.input.slice(1)).toEqual(whole.slice(last - (w.input.length - 1), last));
      // ...and the row of each target is the position of the token before it.
      w.rows.forEach((r, i) => expect(r).toBe(w.input.length - 1 - (last - (t + i))));
      t += w.targets.length;
    }
    const ll = await logLikelihood(model, 'Question: what next?\nAnswer:', long);
    expect(ll.tokens).toBe(p.continuation.length);
    expect(Number.isFinite(ll.logProb)).toBe(true);
  });
});

describe('runSweep (ppl)', () => {
  let result: SweepResult;
  beforeAll(async () => {
    let calls = 0;
    result = await runSweep({
      model, task: 'ppl', data: TEXT, methods: ['dense', 'teal', 'wina'], sparsities: [0, 0.25, 0.65],
      seqLen: 32, limit: 2, onProgress: () => calls++,
    });
    expect(calls).toBe(2 * (1 + 2 * 2)); // windows x (dense + 2 methods x 2 non-zero levels)
  });

  it('has a cell per method and level; level 0 is dense; KL grows with sparsity', () => {
    expect(result.items).toBe(2);
    expect(result.tokens).toBe(64);
    const cell = (m: string, s: number) => result.cells.find((c) => c.method === m && c.sparsity === s)!;
    expect(cell('dense', 0).kl).toBe(0);
    expect(cell('teal', 0).metrics.ppl).toBe(cell('dense', 0).metrics.ppl);
    for (const m of ['teal', 'wina']) {
      expect(cell(m, 0.25).kl).toBeGreaterThan(0);
      expect(cell(m, 0.65).kl).toBeGreaterThan(cell(m, 0.25).kl);
      expect(cell(m, 0.65).metrics.ppl).toBeGreaterThan(cell('dense', 0).metrics.ppl);
    }
  });

  it('matches perplexity() for a sparse configuration', async () => {
    const r = await perplexity(model, TEXT, { seqLen: 32, limit: 2, sparsity: { method: 'wina', sparsity: 0.65, select: 'topk' } });
    const c = result.cells.find((x) => x.method === 'wina' && x.sparsity === 0.65)!;
    expect(c.metrics.nll).toBeCloseTo(r.nll, 6);
  });

  it('refuses threshold selection without a calibration, naming the fix', async () => {
    await expect(runSweep({ model, task: 'ppl', data: TEXT, methods: ['teal'], sparsities: [0.5], select: 'threshold', limit: 1 }))
      .rejects.toThrow(/--calibration/);
  });

  it('writes a Markdown table with every cell and a well-formed SVG', () => {
    const md = markdownTable(result);
    const rows = md.split('\n').filter((l) => l.startsWith('| '));
    expect(rows[0]).toBe('| method | 0% | 25% | 65% |');
    for (const m of ['teal', 'wina']) {
      const row = rows.find((l) => l.startsWith(`| ${m} |`))!;
      const cells = row.split('|').slice(2, -1);
      expect(cells).toHaveLength(3);
      for (const c of cells) expect(c).toMatch(/^ \d+\.\d+ \(KL [\d.e+-]+\) $/);
    }

    const svg = svgPlot(result);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    // Minimal well-formedness: every opened element is closed in order.
    const stack: string[] = [];
    for (const m of svg.matchAll(/<(\/?)([a-z]+)[^>]*?(\/?)>/g)) {
      if (m[1]) expect(stack.pop()).toBe(m[2]);
      else if (!m[3]) stack.push(m[2]);
    }
    expect(stack).toEqual([]);
    expect(svg.match(/<polyline /g)).toHaveLength(4); // teal and wina in each panel; dense is a dashed line
    for (const m of ['dense', 'teal', 'wina']) expect(svg).toContain(`>${m}</text>`);
    for (const [, pts] of svg.matchAll(/points="([^"]+)"/g))
      for (const p of pts.split(' ')) for (const v of p.split(',')) expect(Number.isFinite(Number(v))).toBe(true);

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-eval-'));
    const files = writeReports(path.join(dir, 'run'), result, { model: 'tiny-en-llama', data: 'text', versions: {} });
    expect(files.map((f) => path.basename(f))).toEqual(['run.md', 'run.json', 'run.svg']);
    const json = JSON.parse(fs.readFileSync(files[1], 'utf8'));
    expect(json.cells).toHaveLength(result.cells.length);
    expect(json.task).toBe('ppl');
    fs.rmSync(dir, { recursive: true });
  });
});

describe.skipIf(!hasShared)('multiple choice on real PIQA items (needs ../shared)', () => {
  let requests: MultipleChoiceRequest[];
  let result: SweepResult;
  beforeAll(async () => {
    requests = (await loadTaskData('piqa', path.join(shared, 'data/piqa/valid.jsonl'))) as MultipleChoiceRequest[];
    result = await runSweep({ model, task: 'piqa', data: requests, methods: ['dense', 'wina'], sparsities: [0.5], limit: 6 });
  });

  it('scores acc and acc_norm in [0, 1], dense agreeing with logLikelihood() per choice', async () => {
    expect(requests).toHaveLength(1838);
    expect(result.items).toBe(6);
    let acc = 0;
    let accNorm = 0;
    for (const r of requests.slice(0, 6)) {
      const lls: number[] = [];
      for (const c of r.choices) lls.push((await logLikelihood(model, r.context, c)).logProb);
      const s = scoreMultipleChoice(r, lls);
      acc += s.acc;
      accNorm += s.acc_norm;
    }
    const dense = result.cells.find((c) => c.method === 'dense')!;
    expect(dense.metrics.acc).toBeCloseTo(acc / 6, 10);
    expect(dense.metrics.acc_norm).toBeCloseTo(accNorm / 6, 10);
    for (const c of result.cells) {
      expect(c.metrics.acc).toBeGreaterThanOrEqual(0);
      expect(c.metrics.acc).toBeLessThanOrEqual(1);
      expect(c.metrics.acc_norm).toBeGreaterThanOrEqual(0);
      expect(c.metrics.acc_norm).toBeLessThanOrEqual(1);
    }
    expect(result.cells.find((c) => c.method === 'wina')!.kl).toBeGreaterThan(0);
    expect(markdownTable(result)).toMatch(/\| wina \| — \| \d+\.\d \/ \d+\.\d \(KL /);
  });
});

describe('wina eval command', () => {
  it('parses method and sparsity lists, refusing unknown names', () => {
    expect(parseMethods('dense, teal,wina,teal')).toEqual(['dense', 'teal', 'wina']);
    expect(() => parseMethods('dense,cats')).toThrow(/unknown method 'cats'/);
    expect(parseSparsities('0.5,0,0.25')).toEqual([0, 0.25, 0.5]);
    expect(() => parseSparsities('0.5,1')).toThrow(/\[0, 1\)/);
  });

  it('runs a ppl sweep from a text file and writes the three reports', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-eval-cli-'));
    const text = path.join(dir, 'text.txt');
    fs.writeFileSync(text, TEXT + '\r\n' + TEXT + '\r\n');
    const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      await runEval({ task: 'ppl', data: text, method: 'dense,teal', sparsity: '0.5', limit: 1, seqLen: 24, out: path.join(dir, 'r'), json: true });
      const printed = JSON.parse(write.mock.calls.map((c) => String(c[0])).join(''));
      expect(printed.data).toBe('text.txt');
      expect(printed.model).toBe('embedded tiny-en-llama');
      expect(printed.cells.map((c: { method: string; sparsity: number }) => [c.method, c.sparsity])).toEqual([['dense', 0], ['teal', 0.5]]);
      expect(printed.tokens).toBe(24);
      for (const ext of ['md', 'json', 'svg']) expect(fs.existsSync(path.join(dir, `r.${ext}`))).toBe(true);
    } finally {
      write.mockRestore();
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('names the file and line of a malformed data file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-eval-cli-'));
    const bad = path.join(dir, 'arc.jsonl');
    fs.writeFileSync(bad, '{"id": "x", "question": {"stem": "q", "choices": []}, "answerKey": "A"}\n');
    await expect(runEval({ task: 'arc-easy', data: bad })).rejects.toThrow(/arc\.jsonl:1: /);
    fs.rmSync(dir, { recursive: true });
  });
});
