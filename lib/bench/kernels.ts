// `wina bench kernels`: the kernel microbenchmark through the addon (the same kernels and thread pool
// the engine uses). Dense and sparse GEMV over input-major weights far larger than L3, at several
// densities, thread counts and dtypes, against the read bandwidth measured in the same run; plus the
// cost of threshold and top-k selection relative to the GEMV they feed. Medians of interleaved trials.
import { native } from '../native.js';
import { InputMajorMatrix, gatingScores, setThreads, getThreads } from '../kernels.js';
import { Tensor, dtypeCode, dtypeBytes, type DtypeName } from '../tensor.js';
import { median } from './stats.js';

const SHAPES: [number, number][] = [[4096, 4096], [4096, 14336], [14336, 4096], [2048, 8192]]; // [in, out]
const DENSITIES = [1.0, 0.75, 0.6, 0.5, 0.35, 0.2];


function randomMatrix(nIn: number, out: number, dtype: DtypeName): InputMajorMatrix {
  const t = Tensor.alloc(dtype, nIn * out);
  const d = t.data;
  let x = 0x12345;
  if (dtype === 'f32') {
    const f = d as Float32Array;
    for (let i = 0; i < f.length; i++) { x = (x * 1103515245 + 12345) >>> 0; f[i] = (x / 4294967296 - 0.5) * 0.04; }
  } else {
    const u = d as Uint16Array;
    // bf16 / f16 bit patterns of small random values (timing does not depend on the values).
    for (let i = 0; i < u.length; i++) { x = (x * 1103515245 + 12345) >>> 0; u[i] = dtype === 'bf16' ? 0x3c00 + (x >>> 25) : 0x2000 + (x >>> 22); }
  }
  return new InputMajorMatrix(t, nIn, out);
}

/** Indices of a density-d selection with a realistic spread (every input equally likely). */
function selection(nIn: number, density: number, seed: number): Int32Array {
  const keep: number[] = [];
  let x = seed >>> 0 || 1;
  for (let i = 0; i < nIn; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    if (x / 4294967296 < density) keep.push(i);
  }
  return Int32Array.from(keep);
}

function timeMs(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

export async function runBenchKernels(o: Record<string, unknown>): Promise<void> {
  const json = Boolean(o.json);
  const quick = Boolean(o.quick);
  const threadList = String(o.threads ?? '1,2').split(',').map(Number).filter((n) => n > 0);
  const shapes = quick ? SHAPES.slice(0, 2) : SHAPES;
  const dtypes: DtypeName[] = ['f32', 'bf16'];
  const trials = quick ? 5 : 11;
  const print = (row: Record<string, unknown>) => {
    if (json) process.stdout.write(JSON.stringify(row) + '\n');
  };
  const saved = getThreads();
  const rows: Record<string, unknown>[] = [];
  try {
    for (const threads of threadList) {
      setThreads(threads);
      const bw = native.readBandwidth(1 << 30, quick ? 3 : 7);
      const bwRow = { kernel: 'read_bandwidth', dtype: 'f32', rows: 0, cols: 0, density: 1, threads, ms: 0, gbps: +bw.toFixed(2), bw_ratio: 1, speedup: 1 };
      print(bwRow);
      rows.push(bwRow);
      for (const dtype of dtypes) {
        for (const [nIn, out] of shapes) {
          const m = randomMatrix(nIn, out, dtype);
          const x = Float32Array.from({ length: nIn }, (_, i) => Math.sin(i));
          const y = new Float32Array(out);
          const sels = DENSITIES.map((d, i) => selection(nIn, d, 17 + i));
          const times = DENSITIES.map(() => [] as number[]);
          const w = m.tensor.data;
          const dt = dtypeCode(dtype);
          // Interleave densities within each trial so host noise hits them alike.
          for (let t = 0; t < trials + 1; t++) {
            DENSITIES.forEach((d, j) => {
              const ms = d === 1
                ? timeMs(() => native.linearDense(dt, w, m.ld, nIn, out, x, y))
                : timeMs(() => native.linearSparse(dt, w, m.ld, nIn, out, x, sels[j], sels[j].length, y));
              if (t > 0) times[j].push(ms); // trial 0 warms caches and pages
            });
          }
          const denseMs = median(times[0]);
          DENSITIES.forEach((d, j) => {
            const ms = median(times[j]);
            const bytes = sels[j].length * out * dtypeBytes(dtype);
            const gbps = bytes / (ms / 1000) / 1e9;
            const row = {
              kernel: d === 1 ? 'gemv_dense' : 'gemv_sparse', dtype, rows: out, cols: nIn, density: d, threads,
              ms: +ms.toFixed(3), gbps: +gbps.toFixed(2), bw_ratio: +(gbps / bw).toFixed(3),
              speedup: +(denseMs / ms).toFixed(3), target_speedup: +(0.9 / d).toFixed(3),
            };
            print(row);
            rows.push(row);
          });
          m.dispose();
        }
      }
    }
    // Selection cost against the GEMV it feeds: 14336 inputs (the down projection of an 8B model).
    setThreads(saved);
    const n = 14336;
    const xs = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)));
    const c = Float32Array.from({ length: n }, (_, i) => 0.5 + (i % 13) / 13);
    const m = randomMatrix(n, 4096, 'bf16');
    const sel = selection(n, 0.5, 5);
    const y = new Float32Array(4096);
    const gemv: number[] = [], thr: number[] = [], topk: number[] = [];
    let t50 = 0;
    {
      const s = gatingScores(xs, c);
      t50 = [...s].sort((a, b) => a - b)[n / 2];
    }
    // Preallocated buffers and the native calls themselves: what the engine pays per matrix per token
    // (scores + selection), without the JS API's allocation of result arrays.
    const s = new Float32Array(n);
    const idx = new Int32Array(n);
    const isa = native.isa();
    for (let t = 0; t < trials * 3; t++) {
      gemv.push(timeMs(() => native.linearSparse(1, m.tensor.data, m.ld, n, 4096, xs, sel, sel.length, y)));
      thr.push(timeMs(() => { native.gatingScores(isa, xs, c, s); native.selectThreshold(isa, s, t50, idx); }));
      topk.push(timeMs(() => { native.gatingScores(isa, xs, c, s); native.selectTopk(isa, s, n / 2, idx); }));
    }
    m.dispose();
    const g = median(gemv);
    for (const [kernel, arr, target] of [['select_threshold', thr, 0.02], ['select_topk', topk, 0.05]] as const) {
      const row = { kernel, dtype: 'f32', rows: 0, cols: n, density: 0.5, threads: getThreads(), ms: +median(arr).toFixed(4),
        gbps: 0, bw_ratio: 0, speedup: 0, fraction_of_gemv: +(median(arr) / g).toFixed(4), target_fraction: target, gemv_ms: +g.toFixed(3) };
      print(row);
      rows.push(row);
    }
  } finally {
    setThreads(saved);
  }
  if (json) return;
  console.log('kernel        dtype  in->out        density threads      ms    GB/s  of-bw  speedup  (target)');
  for (const r of rows) {
    if (r.kernel === 'read_bandwidth') {
      console.log(`read bandwidth, ${r.threads} thread(s): ${r.gbps} GB/s`);
      continue;
    }
    if (String(r.kernel).startsWith('select')) {
      console.log(`${String(r.kernel).padEnd(16)} n=${r.cols}: ${r.ms} ms = ${(Number(r.fraction_of_gemv) * 100).toFixed(2)}% of the ${r.gemv_ms} ms GEMV it feeds (target <= ${Number(r.target_fraction) * 100}%)`);
      continue;
    }
    console.log(`${String(r.kernel).padEnd(13)} ${String(r.dtype).padEnd(5)} ${`${r.cols}->${r.rows}`.padEnd(14)} ${String(r.density).padStart(7)} ${String(r.threads).padStart(7)} ` +
      `${String(r.ms).padStart(7)} ${String(r.gbps).padStart(7)} ${String(r.bw_ratio).padStart(6)} ${String(r.speedup).padStart(8)}  (${r.target_speedup})`);
  }
}
