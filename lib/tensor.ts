// Tensors in 64-byte-aligned native memory, visible to JS as typed arrays without copies.
// dispose() releases the memory at once (the typed array views become empty); otherwise the GC
// releases it when the tensor is unreachable.
import { native, DTYPE_BF16, DTYPE_F16, DTYPE_F32, type Dtype } from './native.js';

export type DtypeName = 'f32' | 'bf16' | 'f16';

export function dtypeCode(name: DtypeName, argName = 'dtype'): Dtype {
  switch (name) {
    case 'f32': return DTYPE_F32;
    case 'bf16': return DTYPE_BF16;
    case 'f16': return DTYPE_F16;
    default: throw new TypeError(`${argName} must be 'f32', 'bf16' or 'f16', got ${JSON.stringify(name)}`);
  }
}

export function dtypeBytes(name: DtypeName): number {
  return name === 'f32' ? 4 : 2;
}

export class Tensor {
  readonly dtype: DtypeName;
  readonly length: number;
  #buffer: ArrayBuffer | null;
  #view: Float32Array | Uint16Array;

  private constructor(dtype: DtypeName, length: number) {
    this.dtype = dtype;
    this.length = length;
    this.#buffer = native.alloc(length * dtypeBytes(dtype));
    this.#view = dtype === 'f32' ? new Float32Array(this.#buffer) : new Uint16Array(this.#buffer);
  }

  /** A zero-filled tensor of `length` elements. */
  static alloc(dtype: DtypeName, length: number): Tensor {
    dtypeCode(dtype);
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`length must be a non-negative integer, got ${length}`);
    return new Tensor(dtype, length);
  }

  /** A tensor holding a copy of `values` (converted to bf16/f16 with round-to-nearest-even). */
  static from(values: Float32Array | number[], dtype: DtypeName = 'f32'): Tensor {
    const src = values instanceof Float32Array ? values : Float32Array.from(values);
    const t = Tensor.alloc(dtype, src.length);
    if (dtype === 'f32') (t.data as Float32Array).set(src);
    else native.convertF32(src, dtypeCode(dtype), t.data as Uint16Array);
    return t;
  }

  /** The elements (f32: Float32Array; bf16/f16: their raw 16-bit patterns). */
  get data(): Float32Array | Uint16Array {
    if (!this.#buffer) throw new TypeError('tensor is disposed');
    return this.#view;
  }

  get disposed(): boolean {
    return this.#buffer === null;
  }

  /** Releases the native memory now. Views taken earlier become zero-length. Idempotent. */
  dispose(): void {
    if (!this.#buffer) return;
    native.detach(this.#buffer);
    this.#buffer = null;
  }
}
