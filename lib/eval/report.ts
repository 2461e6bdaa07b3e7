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

interface Panel {
  x: number;
  y: number;
  w: number;
  h: number;
  title: string;
  yName: string;
  value: (c: SweepCell) => number;
}

/** A panel's curves: one polyline per sparse method (from the dense point at 0), dense dashed. */
function drawPanel(result: SweepResult, p: Panel, colorOf: (m: string) => string, out: string[]): void {
  const cols = sparsityColumns(result);
  const xs = niceTicks(0, Math.max(...cols, 0.1), 7).filter((v) => v >= 0);
  const values = result.cells.map(p.value);
  // 4% headroom so that no curve (often dense, the best value) lies on the frame; but a non-negative
  // quantity (KL) keeps 0 as its floor.
  const lo = Math.min(...values), hi = Math.max(...values), pad = (hi - lo) * 0.04;
  const ys = niceTicks(lo >= 0 && lo - pad < 0 ? 0 : lo - pad, hi + pad, 5);
  const x0 = xs[0], x1 = xs[xs.length - 1], y0 = ys[0], y1 = ys[ys.length - 1];
  const px = (s: number) => p.x + ((s - x0) / (x1 - x0)) * p.w;
  const py = (v: number) => p.y + p.h - ((v - y0) / (y1 - y0)) * p.h;
  const f = (n: number) => n.toFixed(1);

  out.push(`<text x="${f(p.x + p.w / 2)}" y="${p.y - 10}" text-anchor="middle" font-size="13">${esc(p.title)}</text>`);
  for (const v of xs) {
    out.push(`<line x1="${f(px(v))}" y1="${p.y}" x2="${f(px(v))}" y2="${p.y + p.h}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${f(px(v))}" y="${p.y + p.h + 16}" text-anchor="middle">${tickLabel(v * 100)}</text>`);
  }
  for (const v of ys) {
    out.push(`<line x1="${p.x}" y1="${f(py(v))}" x2="${p.x + p.w}" y2="${f(py(v))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${p.x - 5}" y="${f(py(v) + 4)}" text-anchor="end">${tickLabel(v)}</text>`);
  }
  out.push(`<line x1="${p.x}" y1="${p.y + p.h}" x2="${p.x + p.w}" y2="${p.y + p.h}" stroke="black"/>`);
  out.push(`<line x1="${p.x}" y1="${p.y}" x2="${p.x}" y2="${p.y + p.h}" stroke="black"/>`);
  out.push(`<text x="${f(p.x + p.w / 2)}" y="${p.y + p.h + 36}" text-anchor="middle">sparsity (%)</text>`);
  const ly = p.y + p.h / 2;
  out.push(`<text x="${p.x - 50}" y="${f(ly)}" text-anchor="middle" transform="rotate(-90 ${p.x - 50} ${f(ly)})">${esc(p.yName)}</text>`);

  const dense = result.cells.find((c) => c.method === 'dense');
  for (const m of methodRows(result)) {
    const color = colorOf(m);
    if (m === 'dense') {
      const y = f(py(p.value(dense!)));
      out.push(`<line x1="${p.x}" y1="${y}" x2="${p.x + p.w}" y2="${y}" stroke="${color}" stroke-dasharray="6 4"/>`);
      continue;
    }
    const cells = result.cells.filter((c) => c.method === m).sort((a, b) => a.sparsity - b.sparsity);
    const pts = cells.map((c) => [c.sparsity, p.value(c)]);
    // Every method is the dense model at 0%: start the curve there when level 0 was not asked for.
    if (dense && cells[0]?.sparsity !== 0) pts.unshift([0, p.value(dense)]);
    out.push(`<polyline points="${pts.map(([s, v]) => `${f(px(s))},${f(py(v))}`).join(' ')}" fill="none" stroke="${color}" stroke-width="2"/>`);
    for (const c of cells) out.push(`<circle cx="${f(px(c.sparsity))}" cy="${f(py(p.value(c)))}" r="3" fill="${color}"/>`);
  }
}

/**
 * Two panels against sparsity: the task metric (perplexity, or accuracy in %) and the mean KL from
 * dense; one line per method, dense as a dashed reference.
 */
export function svgPlot(result: SweepResult): string {
  const W = 900, H = 400;
  const top = 56, ph = 280, pw = 300, gap = 90, left = 70;
  const methods = methodRows(result);
  const colorOf = (m: string) => COLORS[methods.indexOf(m) % COLORS.length];
  const metric = result.task === 'ppl' ? 'perplexity' : 'accuracy (%)';
  const title = `${result.task}: ${metric} and KL from dense vs sparsity (${result.select}${result.greedy ? ', greedy levels' : ''})`;

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>`,
  ];
  drawPanel(result, {
    x: left, y: top, w: pw, h: ph, title: metric, yName: metric,
    value: (c) => (result.task === 'ppl' ? c.metrics.ppl : c.metrics.acc * 100),
  }, colorOf, out);
  drawPanel(result, {
    x: left + pw + gap, y: top, w: pw, h: ph, title: 'mean KL(dense || sparse)', yName: 'KL (nats)', value: (c) => c.kl,
  }, colorOf, out);
  // Legend, in the order the methods were asked for.
  const lx = left + 2 * pw + gap + 24;
  methods.forEach((m, i) => {
    const ly = top + 10 + i * 20;
    out.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 24}" y2="${ly}" stroke="${colorOf(m)}" stroke-width="2"${m === 'dense' ? ' stroke-dasharray="6 4"' : ''}/>`);
    out.push(`<text x="${lx + 30}" y="${ly + 4}">${esc(m)}</text>`);
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
