// A Session: one KV cache over a shared Model, and the forward pass over it.
import { native, type NativePlan, type SessionHandle, type ForwardStats } from './native.js';
import type { Model } from './model.js';
import type { SparsityOptions } from './sparsity/plan.js';

export type LogitsMode = 'none' | 'last' | 'all';
const LOGITS: Record<LogitsMode, number> = { none: 0, last: 1, all: 2 };

export interface ForwardResult {
  /** vocab floats ('last'), T * vocab ('all') or empty ('none'). */
  logits: Float32Array;
  stats: ForwardStats;
}

export class Session {
  readonly model: Model;
  readonly contextLength: number;
  #handle: SessionHandle | null;
  #onDispose: () => void;
  #busy = false;

  /** @internal use model.createSession() */
  constructor(model: Model, contextLength: number, plan: NativePlan | null, onDispose: () => void) {
    this.model = model;
    this.contextLength = contextLength;
    this.#handle = native.sessionCreate(model.handle, contextLength);
    this.#onDispose = onDispose;
    if (plan) native.sessionSetPlan(this.#handle, plan);
  }

  #h(): SessionHandle {
    if (!this.#handle) throw new TypeError('the session is disposed');
    return this.#handle;
  }

  /** Tokens in the KV cache. */
  get position(): number {
    return native.sessionPos(this.#h());
  }

  /** Forget everything after the first `pos` tokens (reuse a shared prompt prefix). */
  rewind(pos = 0): void {
    native.sessionSetPos(this.#h(), pos);
  }

  /** Sparsity of the following forward calls (null = dense). */
  setSparsity(opts: SparsityOptions | null): void {
    native.sessionSetPlan(this.#h(), this.model.plan(opts));
  }

  /** Runs tokens through the model at the next positions, off the JS thread. */
  async forward(tokens: ArrayLike<number>, opts: { logits?: LogitsMode; into?: Float32Array } = {}): Promise<ForwardResult> {
    const h = this.#h();
    if (this.#busy) throw new Error('the session is busy: await the previous forward()');
    const ids = Int32Array.from(tokens);
    if (ids.length === 0) throw new RangeError('tokens must not be empty');
    const vocab = this.model.config.vocabSize;
    for (let i = 0; i < ids.length; i++)
      if (!(ids[i] >= 0 && ids[i] < vocab) || ids[i] !== tokens[i])
        throw new RangeError(`tokens[${i}] = ${tokens[i]} is not a token id in [0, ${vocab})`);
    const mode = opts.logits ?? 'last';
    if (!(mode in LOGITS)) throw new TypeError(`logits must be 'none', 'last' or 'all', got ${JSON.stringify(mode)}`);
    if (this.position + ids.length > this.contextLength)
      throw new RangeError(`context overflow: ${this.position} + ${ids.length} tokens > contextLength ${this.contextLength}`);
    const need = mode === 'none' ? 0 : mode === 'last' ? vocab : vocab * ids.length;
    const logits = opts.into ?? new Float32Array(need);
    if (logits.length < need) throw new RangeError(`into must hold ${need} floats`);
    this.#busy = true;
    try {
      const stats = await native.forwardAsync(h, ids, LOGITS[mode], need ? logits : null);
      return { logits, stats };
    } finally {
      this.#busy = false;
    }
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  dispose(): void {
    if (!this.#handle) return;
    if (this.#busy) throw new Error('the session is busy: await the running forward() before dispose()');
    native.sessionDispose(this.#handle);
    this.#handle = null;
    this.#onDispose();
  }
}
