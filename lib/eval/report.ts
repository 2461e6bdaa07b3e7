// Sweep results out: a Markdown table (rows method, columns sparsity), a JSON record of everything, and a
// hand-written SVG line plot of the task metric against sparsity (one line per method).
import fs from 'node:fs';
import path from 'node:path';

import type { SweepCell, SweepResult } from './run.js';

// ---------------------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------------------

/** Where the run came from, stored beside the numbers so a table can be traced back to its command. */
export interface ReportMeta {
  model: string;
  /** Basename only: absolute paths say where a machine keeps its data, not what was evaluated. */
  data: string;
  versions: Record<string, string>;
  command?: string;
  date?: string;
}

/** Sparsity columns of the table: every level that has a cell, ascending. */
export function sparsityColumns(result: SweepResult): number[] {
  return [...new Set(result.cells.map((c) => c.sparsity))].sort((a, b) => a - b);
}

/** Methods in the order they were asked for. */
export function methodRows(result: SweepResult): string[] {
  return [...new Set(result.cells.map((c) => c.method))];
}

function cellAt(result: SweepResult, method: string, sparsity: number): SweepCell | undefined {
  return result.cells.find((c) => c.method === method && c.sparsity === sparsity);
}

function pct(s: number): string {
  return `${+(s * 100).toFixed(1)}%`;
}

function fmtKl(kl: number): string {
  if (kl === 0) return '0';
  return kl >= 0.01 ? kl.toFixed(4) : kl.toExponential(2);
}

// ---------------------------------------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------------------------------------

function fmtCell(result: SweepResult, c: SweepCell): string {
  const main = result.task === 'ppl'
    ? c.metrics.ppl.toFixed(3)
    : `${(c.metrics.acc * 100).toFixed(1)} / ${(c.metrics.acc_norm * 100).toFixed(1)}`;
  return `${main} (KL ${fmtKl(c.kl)})`;
}

/** Rows method, columns sparsity; each cell the task metric and the mean KL from dense. */
export function markdownTable(result: SweepResult): string {
  const cols = sparsityColumns(result);
  const what = result.task === 'ppl' ? 'perplexity' : 'acc / acc_norm (%)';
  const lines = [
    `| method | ${cols.map(pct).join(' | ')} |`,
    `|---|${cols.map(() => '---:').join('|')}|`,
  ];
  for (const m of methodRows(result)) {
    const cells = cols.map((s) => {
      const c = cellAt(result, m, s);
      return c ? fmtCell(result, c) : '—';
    });
    lines.push(`| ${m} | ${cells.join(' | ')} |`);
  }
  const scope = result.task === 'ppl'
    ? `${result.tokens} tokens in ${result.items} windows of ${result.seqLen} (stride ${result.stride})`
    : `${result.items} items, ${result.tokens} continuation tokens`;
  return [
    `Task \`${result.task}\`, ${what}, ${result.select} selection${result.greedy ? ' with greedy per-matrix levels' : ''}; ${scope}.`,
    'KL = mean KL(dense || sparse) of the next-token distribution over the scored positions (nats).',
    '',
    ...lines,
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------------------

export function reportJson(result: SweepResult, meta: ReportMeta): string {
  return JSON.stringify({ ...meta, ...result }, null, 2) + '\n';
}

// ---------------------------------------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------------------------------------

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];

/** Tick values covering [lo, hi] with a 1/2/5 x 10^k step, about `count` of them. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) * 0.05 || 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  if (ticks[ticks.length - 1] < hi) ticks.push(+(ticks[ticks.length - 1] + step).toPrecision(12));
  return ticks;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function tickLabel(v: number): string {
  return String(+v.toPrecision(6));
}

/** Task metric (ppl, or acc in %) against sparsity; dense is a dashed horizontal reference line. */
export function svgPlot(result: SweepResult): string {
  const W = 640, H = 400;
  const L = 64, R = 150, T = 36, B = 52;
  const pw = W - L - R, ph = H - T - B;
  const value = (c: SweepCell) => (result.task === 'ppl' ? c.metrics.ppl : c.metrics.acc * 100);
  const yName = result.task === 'ppl' ? 'perplexity' : 'accuracy (%)';

  const cols = sparsityColumns(result);
  const xs = niceTicks(0, Math.max(...cols, 0.1), 5).filter((v) => v >= 0);
  const values = result.cells.map(value);
  const ys = niceTicks(Math.min(...values), Math.max(...values), 5);
  const x0 = xs[0], x1 = xs[xs.length - 1], y0 = ys[0], y1 = ys[ys.length - 1];
  const px = (s: number) => L + ((s - x0) / (x1 - x0)) * pw;
  const py = (v: number) => T + ph - ((v - y0) / (y1 - y0)) * ph;
  const f = (n: number) => n.toFixed(1);

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L + pw / 2}" y="20" text-anchor="middle" font-size="14">${esc(`${result.task}: ${yName} vs sparsity (${result.select})`)}</text>`,
  ];
  // Grid and ticks.
  for (const v of xs) {
    out.push(`<line x1="${f(px(v))}" y1="${T}" x2="${f(px(v))}" y2="${T + ph}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${f(px(v))}" y="${T + ph + 18}" text-anchor="middle">${tickLabel(v * 100)}</text>`);
  }
  for (const v of ys) {
    out.push(`<line x1="${L}" y1="${f(py(v))}" x2="${L + pw}" y2="${f(py(v))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${L - 6}" y="${f(py(v) + 4)}" text-anchor="end">${tickLabel(v)}</text>`);
  }
  // Axes.
  out.push(`<line x1="${L}" y1="${T + ph}" x2="${L + pw}" y2="${T + ph}" stroke="black"/>`);
  out.push(`<line x1="${L}" y1="${T}" x2="${L}" y2="${T + ph}" stroke="black"/>`);
  out.push(`<text x="${L + pw / 2}" y="${H - 12}" text-anchor="middle">sparsity (%)</text>`);
  out.push(`<text x="16" y="${T + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${T + ph / 2})">${esc(yName)}</text>`);

  // One line per method; the legend lists them in the same order.
  methodRows(result).forEach((m, i) => {
    const color = COLORS[i % COLORS.length];
    const cells = result.cells.filter((c) => c.method === m).sort((a, b) => a.sparsity - b.sparsity);
    if (m === 'dense') {
      const y = f(py(value(cells[0])));
      out.push(`<line x1="${L}" y1="${y}" x2="${L + pw}" y2="${y}" stroke="${color}" stroke-dasharray="6 4"/>`);
    } else {
      const pts = cells.map((c) => `${f(px(c.sparsity))},${f(py(value(c)))}`).join(' ');
      out.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="2"/>`);
      for (const c of cells) out.push(`<circle cx="${f(px(c.sparsity))}" cy="${f(py(value(c)))}" r="3" fill="${color}"/>`);
    }
    const ly = T + 10 + i * 20;
    out.push(`<line x1="${L + pw + 16}" y1="${ly}" x2="${L + pw + 40}" y2="${ly}" stroke="${color}" stroke-width="2"${m === 'dense' ? ' stroke-dasharray="6 4"' : ''}/>`);
    out.push(`<text x="${L + pw + 46}" y="${ly + 4}">${esc(m)}</text>`);
  });
  out.push('</svg>', '');
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------------------

/** Writes <prefix>.md, <prefix>.json and <prefix>.svg; returns the three paths. */
export function writeReports(prefix: string, result: SweepResult, meta: ReportMeta): string[] {
  const dir = path.dirname(prefix);
  fs.mkdirSync(dir, { recursive: true });
  const files: [string, string][] = [
    [`${prefix}.md`, markdownTable(result)],
    [`${prefix}.json`, reportJson(result, meta)],
    [`${prefix}.svg`, svgPlot(result)],
  ];
  for (const [file, text] of files) fs.writeFileSync(file, text);
  return files.map(([file]) => file);
}
