// Incremental text output for generation: token ids in, text pieces out.
//
// Decoding each token on its own is wrong in two ways: a character outside the vocabulary arrives as several
// byte-fallback tokens (<0xF0><0x9F><0x98><0x80>) that are not text until the last one, and a SentencePiece
// decoder strips the leading space of the *whole* text, not of every token. StreamDetokenizer keeps a UTF-8
// byte stream per sequence so that the concatenation of its pieces equals tokenizer.decode(allIds).

import type { WinaTokenizer } from './tokenizer.js';

export interface StreamDetokenizerOptions {
  /** Leave special tokens (BOS, EOS, chat markers) out of the text (default true). */
  skipSpecialTokens?: boolean;
}

export class StreamDetokenizer {
  readonly #tokenizer: WinaTokenizer;
  readonly #skipSpecial: boolean;
  // TextDecoder in stream mode holds an incomplete UTF-8 sequence until its last byte arrives.
  #decoder = new TextDecoder('utf-8', { fatal: false });
  #atStart = true;
  // Fallback for decoders without a byte view: re-decode a short window and emit what it adds.
  #ids: number[] = [];
  #prefixOffset = 0;
  #readOffset = 0;

  constructor(tokenizer: WinaTokenizer, options: StreamDetokenizerOptions = {}) {
    this.#tokenizer = tokenizer;
    this.#skipSpecial = options.skipSpecialTokens ?? true;
  }

  /** Adds one token; returns the text it completes (often '', e.g. for the first bytes of a character). */
  push(id: number): string {
    const tok = this.#tokenizer;
    const decoding = tok.streamDecoding;
    if (decoding.kind === 'text') return this.#pushWindowed(id);
    if (this.#skipSpecial && tok.isSpecial(id)) {
      tok.tokenBytes(id); // validates the id like any other token
      return '';
    }
    let bytes = tok.tokenBytes(id);
    if (this.#atStart && bytes.length > 0) {
      // The decoder's Strip removes one leading space of the whole text: only the first bytes can lose it.
      if (decoding.kind === 'sentencepiece' && decoding.stripLeadingSpace && bytes[0] === 0x20) {
        bytes = bytes.subarray(1);
      }
      this.#atStart = false;
    }
    return this.#decoder.decode(bytes, { stream: true });
  }

  /** Ends the sequence: bytes of an unfinished character come out as U+FFFD. Resets for a new sequence. */
  flush(): string {
    let text = '';
    if (this.#tokenizer.streamDecoding.kind === 'text') {
      text = this.#decodeWindow(this.#prefixOffset).slice(this.#decodeWindow(this.#prefixOffset, this.#readOffset).length);
    } else {
      text = this.#decoder.decode();
    }
    this.reset();
    return text;
  }

  reset(): void {
    this.#decoder = new TextDecoder('utf-8', { fatal: false });
    this.#atStart = true;
    this.#ids = [];
    this.#prefixOffset = 0;
    this.#readOffset = 0;
  }

  // The window method (as in HF text-generation-inference): decode ids[prefix..] and ids[prefix..read] and
  // emit the difference once it no longer ends in U+FFFD (an incomplete character).
  #pushWindowed(id: number): string {
    this.#tokenizer.tokenBytes(id);
    this.#ids.push(id);
    const before = this.#decodeWindow(this.#prefixOffset, this.#readOffset);
    const after = this.#decodeWindow(this.#prefixOffset);
    if (after.length > before.length && !after.endsWith('\uFFFD')) {
      this.#prefixOffset = this.#readOffset;
      this.#readOffset = this.#ids.length;
      return after.slice(before.length);
    }
    return '';
  }

  #decodeWindow(from: number, to = this.#ids.length): string {
    return this.#tokenizer.decode(this.#ids.slice(from, to), { skipSpecialTokens: this.#skipSpecial });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Stop strings
// ---------------------------------------------------------------------------------------------------------

export interface StopResult {
  /** Text that is safe to show now. */
  text: string;
  /** True once a stop string appeared; `text` then ends right before it and nothing more is accepted. */
  stopped: boolean;
  /** The stop string that matched, when stopped. */
  stop?: string;
}

/**
 * Cuts generated text at the first stop string. Text that could still become a stop string is held back
 * (the longest tail of the buffer that is a prefix of some stop string), so a stop split across tokens never
 * leaks its first characters.
 */
export class StopMatcher {
  readonly #stops: string[];
  #held = '';
  #stopped = false;

  constructor(stopStrings: readonly string[]) {
    for (const s of stopStrings) {
      if (typeof s !== 'string' || s.length === 0) throw new RangeError('stop strings must be non-empty strings');
    }
    this.#stops = [...stopStrings];
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  push(text: string): StopResult {
    if (this.#stopped) return { text: '', stopped: true };
    const buffer = this.#held + text;
    let cut = -1;
    let matched: string | undefined;
    for (const stop of this.#stops) {
      const at = buffer.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        matched = stop;
      }
    }
    if (matched !== undefined) {
      this.#stopped = true;
      this.#held = '';
      return { text: buffer.slice(0, cut), stopped: true, stop: matched };
    }
    const keep = this.#partialStopLength(buffer);
    this.#held = buffer.slice(buffer.length - keep);
    return { text: buffer.slice(0, buffer.length - keep), stopped: false };
  }

  /** The text held back at the end of generation (it never became a stop string). */
  flush(): string {
    const held = this.#held;
    this.#held = '';
    return held;
  }

  #partialStopLength(buffer: string): number {
    let longest = 0;
    for (const stop of this.#stops) {
      const max = Math.min(stop.length - 1, buffer.length);
      for (let n = max; n > longest; n--) {
        if (buffer.endsWith(stop.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }
}
