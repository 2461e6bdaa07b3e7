import { describe, expect, it } from 'vitest';
import { Sampler, argmax, type SamplerOptions } from '../lib/sampling.js';

function logitsOf(probs: number[]): Float32Array {
  return Float32Array.from(probs, (p) => Math.log(p));
}

/** Frequencies of each id over `draws` samples. */
function frequencies(options: SamplerOptions, logits: Float32Array, draws: number, history: number[] = []): number[] {
  const sampler = new Sampler(options);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[sampler.sample(logits, history)]++;
  return counts.map((c) => c / draws);
}

function softmax(values: number[]): number[] {
  const max = values.reduce((a, b) => Math.max(a, b), -Infinity);
  const e = values.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** A deterministic pseudo-random vocabulary of logits (LCG), shaped like a real model's: a few large values. */
function bigVocab(n: number, seed: number): Float32Array {
  let s = seed;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = s / 2 ** 32;
    out[i] = -8 + 4 * u + (u > 0.9995 ? 12 * u : 0);
  }
  return out;
}

/** Reference nucleus by a full sort, written independently of the implementation. */
function referenceNucleus(logits: Float32Array, topP: number): Set<number> {
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
  const probs = softmax(Array.from(logits));
  const kept = new Set<number>();
  let above = 0;
  for (const id of order) {
    if (above >= topP && kept.size > 0) break;
    kept.add(id);
    above += probs[id];
  }
  return kept;
}

describe('argmax', () => {
  it('returns the lowest index on ties and ignores NaN', () => {
    expect(argmax(Float32Array.of(1, 3, 3, 2))).toBe(1);
    expect(argmax(Float32Array.of(NaN, -1, NaN))).toBe(1);
    expect(argmax(Float32Array.of(-Infinity))).toBe(-1);
  });
});

describe('Sampler', () => {
  it('is greedy at temperature 0 (lowest index on ties) and never touches the logits', () => {
    const logits = Float32Array.of(0.5, 2, 2, -1);
    const copy = logits.slice();
    const sampler = new Sampler({ temperature: 0, topK: 1, seed: 1 });
    expect(sampler.sample(logits)).toBe(1);
    expect(new Sampler({ temperature: 0, repetitionPenalty: 2 }).sample(logits, [1])).toBe(2);
    expect(logits).toEqual(copy);
  });

  it('applies the repetition penalty by the CTRL rule: divide positive logits, multiply negative ones', () => {
    const greedy = (logits: number[], history: number[], options: SamplerOptions = {}) =>
      new Sampler({ temperature: 0, repetitionPenalty: 1.5, ...options }).sample(Float32Array.from(logits), history);
    expect(greedy([2.0, 1.5], [0])).toBe(1); // 2 / 1.5 = 1.33 < 1.5
    expect(greedy([2.0, 1.2], [0])).toBe(0); // 1.33 > 1.2
    expect(greedy([-1.0, -1.2], [0])).toBe(1); // -1 * 1.5 = -1.5 < -1.2
    expect(greedy([-1.0, -1.6], [0])).toBe(0);
    // Repeated ids are penalised once; the window only looks at the latest tokens.
    expect(greedy([2.0, 1.5], [0, 0, 0])).toBe(1);
    expect(greedy([2.0, 1.5], [0, 1], { repetitionWindow: 1 })).toBe(0);
    expect(greedy([2.0, 1.5], [0, 1], { repetitionWindow: 2 })).toBe(0); // both penalised: 1.33 vs 1.0
    expect(greedy([2.0, 1.5], [0], { repetitionWindow: 0 })).toBe(0);
  });

  it('gives the same ids for the same seed, and different ids for another seed', () => {
    const logits = bigVocab(1000, 7);
    const run = (seed: number) => {
      const sampler = new Sampler({ temperature: 1.5, seed });
      return Array.from({ length: 200 }, () => sampler.sample(logits));
    };
    expect(run(42)).toEqual(run(42));
    expect(run(42)).not.toEqual(run(43));
    expect(run(2 ** 40 + 5)).toEqual(run(2 ** 40 + 5));
    expect(new Sampler({ seed: 9 }).seed).toBe(9);
    expect(Number.isSafeInteger(new Sampler().seed)).toBe(true);
  });

  it('samples in proportion to softmax(logits / temperature)', () => {
    const base = [0.5, 0.3, 0.15, 0.05];
    const logits = logitsOf(base);
    const plain = frequencies({ seed: 3 }, logits, 40000);
    plain.forEach((f, i) => expect(f).toBeCloseTo(base[i], 1.5));
    const cold = frequencies({ temperature: 0.5, seed: 4 }, logits, 40000);
    softmax(Array.from(logits, (v) => v * 2)).forEach((p, i) => expect(cold[i]).toBeCloseTo(p, 1.5));
  });

  it('top-k keeps the k most likely tokens and every token tied with the k-th', () => {
    const f = frequencies({ topK: 2, seed: 5 }, logitsOf([0.1, 0.4, 0.2, 0.3]), 20000);
    expect(f[0]).toBe(0);
    expect(f[2]).toBe(0);
    expect(f[1]).toBeCloseTo(4 / 7, 1.5);
    const tied = frequencies({ topK: 2, seed: 6 }, Float32Array.of(1, 1, 0, 1), 9000);
    expect(tied[2]).toBe(0);
    for (const i of [0, 1, 3]) expect(tied[i]).toBeCloseTo(1 / 3, 1.5);
  });

  it('top-p keeps tokens while the mass above them is below topP', () => {
    const logits = logitsOf([0.5, 0.3, 0.15, 0.05]);
    const narrow = frequencies({ topP: 0.75, seed: 7 }, logits, 20000);
    expect(narrow[2] + narrow[3]).toBe(0);
    expect(narrow[0]).toBeCloseTo(5 / 8, 1.5);
    const wide = frequencies({ topP: 0.85, seed: 8 }, logits, 20000);
    expect(wide[3]).toBe(0);
    expect(wide[2]).toBeGreaterThan(0.1);
  });

  it('applies top-p to the distribution renormalised after top-k', () => {
    // After top-k=2: [0.571, 0.429]; top-p 0.5 then keeps only the first. On the raw distribution it would
    // keep both (mass above the second is 0.4 < 0.5).
    const f = frequencies({ topK: 2, topP: 0.5, seed: 9 }, logitsOf([0.4, 0.3, 0.2, 0.1]), 2000);
    expect(f[0]).toBe(1);
  });

  it('min-p drops tokens below minP times the top probability (after temperature)', () => {
    const logits = logitsOf([0.5, 0.3, 0.06, 0.04, 0.1]);
    const f = frequencies({ minP: 0.1, seed: 10 }, logits, 20000);
    expect(f[3]).toBe(0); // 0.04 < 0.05
    expect(f[2]).toBeGreaterThan(0); // 0.06 >= 0.05
    const withTopK = frequencies({ minP: 0.1, topK: 4, seed: 11 }, logits, 20000);
    expect(withTopK[3]).toBe(0);
    expect(withTopK[2]).toBeGreaterThan(0);
    // Temperature 2 flattens: 0.04 becomes sqrt(0.04/0.5) = 0.28 of the top, kept.
    const hot = frequencies({ minP: 0.1, temperature: 2, seed: 12 }, logits, 20000);
    expect(hot[3]).toBeGreaterThan(0);
  });

  it('finds the exact nucleus of a 150K vocabulary without top-k', () => {
    // Peaked: the nucleus is a few dozen tokens, found in the first candidate set.
    const peaked = bigVocab(150_000, 1);
    const small = referenceNucleus(peaked, 0.6);
    const sampler = new Sampler({ topP: 0.6, seed: 13 });
    const seen = new Set<number>();
    for (let i = 0; i < 300; i++) seen.add(sampler.sample(peaked));
    expect(seen.size).toBeGreaterThan(1);
    for (const id of seen) expect(small.has(id)).toBe(true);
    // Flat: the nucleus holds tens of thousands of tokens, so the candidate set has to grow.
    const flat = Float32Array.from(bigVocab(150_000, 2), (v) => Math.min(v, -4) / 2);
    const large = referenceNucleus(flat, 0.3);
    expect(large.size).toBeGreaterThan(10_000);
    const byRank = Array.from(flat.keys()).sort((a, b) => flat[b] - flat[a] || a - b);
    const rank = new Map(byRank.map((id, r) => [id, r]));
    const flatSampler = new Sampler({ topP: 0.3, seed: 14 });
    let deepest = 0;
    for (let i = 0; i < 300; i++) {
      const id = flatSampler.sample(flat);
      expect(large.has(id)).toBe(true);
      deepest = Math.max(deepest, rank.get(id)!);
    }
    expect(deepest).toBeGreaterThan(256);
  });

  it('never samples -Infinity (masked) logits and refuses all-masked ones', () => {
    const logits = Float32Array.of(-Infinity, 0, -Infinity, 0);
    for (const options of [{}, { topK: 3 }, { topP: 0.99 }, { minP: 0.5 }] as SamplerOptions[]) {
      const f = frequencies({ ...options, seed: 14 }, logits, 1000);
      expect(f[0] + f[2]).toBe(0);
    }
    expect(() => new Sampler().sample(Float32Array.of(-Infinity, -Infinity))).toThrow(RangeError);
    expect(() => new Sampler().sample(new Float32Array(0))).toThrow(RangeError);
  });

  it('rejects bad options with a RangeError naming the option', () => {
    const bad: [SamplerOptions, string][] = [
      [{ temperature: -0.1 }, 'temperature'],
      [{ temperature: NaN }, 'temperature'],
      [{ topK: 1.5 }, 'topK'],
      [{ topK: -1 }, 'topK'],
      [{ topP: 0 }, 'topP'],
      [{ topP: 1.1 }, 'topP'],
      [{ minP: -0.1 }, 'minP'],
      [{ minP: 2 }, 'minP'],
      [{ repetitionPenalty: 0 }, 'repetitionPenalty'],
      [{ repetitionPenalty: Infinity }, 'repetitionPenalty'],
      [{ repetitionWindow: -1 }, 'repetitionWindow'],
      [{ seed: -1 }, 'seed'],
      [{ seed: 0.5 }, 'seed'],
    ];
    for (const [options, name] of bad) {
      expect(() => new Sampler(options), JSON.stringify(options)).toThrow(RangeError);
      expect(() => new Sampler(options)).toThrow(new RegExp(`^${name} `));
    }
    expect(() => new Sampler({ repetitionPenalty: 1.2 }).sample(Float32Array.of(1, 2), [5])).toThrow(/history\[0\]/);
  });
});
