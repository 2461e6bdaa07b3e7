// The kernel API: column norms, gating scores, selection and (sparse) GEMV over input-major
// matrices. Every argument is checked here, with its name, before it reaches native code.
import { native, type Isa } from './native.js';
import { Tensor, dtypeCode, type DtypeName } from './tensor.js';

export interface KernelOptions {
  /** Run one ISA's single-threaded kernel (tests); default: the active ISA on the thread pool. */
  isa?: Isa;
}

/**
 * A linear layer y = W x (W is [out, in]) stored input-major: row i of `tensor` (ld elements, ld >= out)
 * holds column i of W, so one selected input is one contiguous run of weights.
 */
export class InputMajorMatrix {
  readonly tensor: Tensor;
  readonly nIn: number;
  readonly out: number;
  readonly ld: number;

  constructor(tensor: Tensor, nIn: number, out: number, ld = out) {
    if (!(tensor instanceof Tensor)) throw new TypeError('tensor must be a Tensor');
    for (const [name, v] of [['nIn', nIn], ['out', out], ['ld', ld]] as const)
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer, got ${v}`);
    if (ld < out) throw new RangeError(`ld (${ld}) must be >= out (${out})`);
    if (tensor.length < nIn * ld) throw new RangeError(`tensor has ${tensor.length} elements, needs nIn * ld = ${nIn * ld}`);
    this.tensor = tensor;
    this.nIn = nIn;
    this.out = out;
    this.ld = ld;
  }

  get dtype(): DtypeName {
    return this.tensor.dtype;
  }

  /** Repacks a row-major W[out][in] (PyTorch order) into input-major storage of `dtype`. */
  static fromRowMajor(w: Float32Array, out: number, nIn: number, dtype: DtypeName = 'f32', ld = out): InputMajorMatrix {
    if (!(w instanceof Float32Array)) throw new TypeError('w must be a Float32Array');
    if (w.length !== out * nIn) throw new RangeError(`w has ${w.length} elements, expected out * in = ${out * nIn}`);
    const t = new Float32Array(nIn * ld);
    for (let o = 0; o < out; o++) for (let i = 0; i < nIn; i++) t[i * ld + o] = w[o * nIn + i];
    return new InputMajorMatrix(Tensor.from(t, dtype), nIn, out, ld);
  }

  dispose(): void {
    this.tensor.dispose();
  }
}

function f32(v: unknown, name: string): Float32Array {
  if (!(v instanceof Float32Array)) throw new TypeError(`${name} must be a Float32Array`);
  return v;
}

function matrix(m: unknown, name = 'matrix'): InputMajorMatrix {
  if (!(m instanceof InputMajorMatrix)) throw new TypeError(`${name} must be an InputMajorMatrix`);
  if (m.tensor.disposed) throw new TypeError(`${name} is disposed`);
  return m;
}

function isaOf(opts: KernelOptions | undefined): Isa | null {
  const isa = opts?.isa;
  if (isa === undefined) return null;
  if (isa !== 'scalar' && isa !== 'avx2' && isa !== 'avx512') throw new TypeError(`isa must be 'scalar', 'avx2' or 'avx512', got ${JSON.stringify(isa)}`);
  return isa;
}

/** ISAs this CPU (and OS) can run, lowest first. */
export function supportedIsas(): Isa[] {
  const f = native.cpuFeatures();
  return (['scalar', 'avx2', 'avx512'] as const).filter((_, i) => (f & (1 << i)) !== 0);
}

/** The ISA chosen at load (WINA_ISA may force a lower one). */
export function activeIsa(): Isa {
  return native.isa();
}

export function setThreads(n: number): number {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`threads must be a non-negative integer (0 = all cores), got ${n}`);
  return native.setThreads(n);
}

export function getThreads(): number {
  return native.threads();
}

/** c[i] = ||W[:, i]||_2 for every input i. */
export function columnNorms(m: InputMajorMatrix, opts?: KernelOptions): Float32Array {
  matrix(m);
  const c = new Float32Array(m.nIn);
  native.colNorms(isaOf(opts) ?? native.isa(), dtypeCode(m.dtype), m.tensor.data, m.ld, m.nIn, m.out, c);
  return c;
}

/** s[i] = |x[i]| * norms[i] (WINA), or |x[i]| when norms is omitted (TEAL). */
export function gatingScores(x: Float32Array, norms?: Float32Array | null, opts?: KernelOptions): Float32Array {
  f32(x, 'x');
  if (norms != null) {
    f32(norms, 'norms');
    if (norms.length !== x.length) throw new RangeError(`norms.length (${norms.length}) must equal x.length (${x.length})`);
  }
  const s = new Float32Array(x.length);
  native.gatingScores(isaOf(opts), x, norms ?? null, s);
  return s;
}

/** Indices (ascending) of every score > threshold. */
export function selectThreshold(scores: Float32Array, threshold: number, opts?: KernelOptions): Int32Array {
  f32(scores, 'scores');
  if (typeof threshold !== 'number' || Number.isNaN(threshold)) throw new TypeError('threshold must be a number');
  const idx = new Int32Array(scores.length);
  const n = native.selectThreshold(isaOf(opts), scores, threshold, idx);
  return idx.slice(0, n);
}

/** Indices (ascending) of the k largest scores; ties go to the lower index. */
export function selectTopk(scores: Float32Array, k: number, opts?: KernelOptions): Int32Array {
  f32(scores, 'scores');
  if (!Number.isSafeInteger(k)) throw new TypeError(`k must be an integer, got ${k}`);
  if (k < 0 || k > scores.length) throw new RangeError(`k must be in [0, ${scores.length}], got ${k}`);
  const idx = new Int32Array(k);
  const n = native.selectTopk(isaOf(opts), scores, k, idx);
  return idx.slice(0, n);
}

function checkIndices(indices: unknown, nIn: number): Int32Array {
  if (!(indices instanceof Int32Array)) throw new TypeError('indices must be an Int32Array');
  for (let j = 0; j < indices.length; j++)
    if (indices[j] < 0 || indices[j] >= nIn) throw new RangeError(`indices[${j}] = ${indices[j]} is out of range [0, ${nIn})`);
  return indices;
}

function checkX(m: InputMajorMatrix, x: Float32Array): void {
  f32(x, 'x');
  if (x.length !== m.nIn) throw new RangeError(`x.length (${x.length}) must equal the matrix's nIn (${m.nIn})`);
}

/** y = W x over all inputs. */
export function gemvDense(m: InputMajorMatrix, x: Float32Array, opts?: KernelOptions): Float32Array {
  matrix(m);
  checkX(m, x);
  const y = new Float32Array(m.out);
  const isa = isaOf(opts);
  const dt = dtypeCode(m.dtype);
  if (isa) native.gemvDense(isa, dt, m.tensor.data, m.ld, m.nIn, m.out, x, y);
  else native.linearDense(dt, m.tensor.data, m.ld, m.nIn, m.out, x, y);
  return y;
}

/** y = sum over the selected inputs i of x[i] * W[:, i]. */
export function gemvSparse(m: InputMajorMatrix, x: Float32Array, indices: Int32Array, opts?: KernelOptions): Float32Array {
  matrix(m);
  checkX(m, x);
  checkIndices(indices, m.nIn);
  const y = new Float32Array(m.out);
  const isa = isaOf(opts);
  const dt = dtypeCode(m.dtype);
  if (isa) native.gemvSparse(isa, dt, m.tensor.data, m.ld, m.nIn, m.out, x, indices, indices.length, y);
  else native.linearSparse(dt, m.tensor.data, m.ld, m.nIn, m.out, x, indices, indices.length, y);
  return y;
}

/** gemvDense on the addon's thread pool, off the JS thread. */
export async function gemvDenseAsync(m: InputMajorMatrix, x: Float32Array): Promise<Float32Array> {
  matrix(m);
  checkX(m, x);
  const y = new Float32Array(m.out);
  await native.linearDenseAsync(dtypeCode(m.dtype), m.tensor.data, m.ld, m.nIn, m.out, x, y);
  return y;
}

/** gemvSparse on the addon's thread pool, off the JS thread. */
export async function gemvSparseAsync(m: InputMajorMatrix, x: Float32Array, indices: Int32Array): Promise<Float32Array> {
  matrix(m);
  checkX(m, x);
  checkIndices(indices, m.nIn);
  const y = new Float32Array(m.out);
  await native.linearSparseAsync(dtypeCode(m.dtype), m.tensor.data, m.ld, m.nIn, m.out, x, indices, indices.length, y);
  return y;
}
