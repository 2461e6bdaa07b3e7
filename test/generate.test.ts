// The decoding loop on the embedded model: streaming equals complete(), seeds reproduce, stop strings
// and stop tokens end generation, AbortSignal stops it, sessions share one model, bad options throw.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, type Model } from '../lib/model.js';

let model: Model;
beforeAll(async () => {
  model = await loadModel(undefined, { progress: false });
});
afterAll(() => model?.dispose());

describe('generate / complete', () => {
  it('streams the same text and ids that complete() returns', async () => {
    const opts = { maxTokens: 20, temperature: 0.8, seed: 3 };
    const r = await model.complete('In the beginning', opts);
    let text = '';
    const ids: number[] = [];
    for await (const c of model.generate('In the beginning', opts)) {
      text += c.text;
      ids.push(...c.tokenIds);
    }
    expect(text).toBe(r.text);
    expect(ids).toEqual(r.tokenIds);
    // The pieces continue the prompt: prompt text + pieces == decode(prompt ids + generated ids).
    const promptIds = model.tokenizer!.encode('In the beginning');
    expect('In the beginning' + r.text).toBe(model.tokenizer!.decode([...promptIds, ...r.tokenIds], { skipSpecialTokens: true }));
  });

  it('a seed reproduces sampling; another seed differs', async () => {
    const a = await model.complete('In the beginning', { maxTokens: 24, temperature: 1, topP: 0.95, seed: 7 });
    const b = await model.complete('In the beginning', { maxTokens: 24, temperature: 1, topP: 0.95, seed: 7 });
    const c = await model.complete('In the beginning', { maxTokens: 24, temperature: 1, topP: 0.95, seed: 8 });
    expect(a.tokenIds.length).toBeGreaterThan(3);
    expect(a.tokenIds).toEqual(b.tokenIds);
    expect(c.tokenIds).not.toEqual(a.tokenIds);
  });

  it('reports statistics', async () => {
    const r = await model.complete('The President said', { maxTokens: 10, temperature: 0, stopTokens: [] });
    expect(r.stats.promptTokens).toBe(4);
    expect(r.stats.generatedTokens).toBe(r.tokenIds.length);
    expect(r.stats.decodeTokensPerSecond).toBeGreaterThan(0);
    expect(r.stats.prefillTokensPerSecond).toBeGreaterThan(0);
  });

  it('maxTokens bounds the output', async () => {
    const r = await model.complete('The people of the United States', { maxTokens: 5, temperature: 0 });
    expect(r.tokenIds.length).toBe(5);
    expect(r.finishReason).toBe('length');
  });

  it('a stop string ends generation and is not returned', async () => {
    // Greedy continuation of this prompt is "are in the United States, and the people of the United States, ..."
    const full = await model.complete('The people of the United States', { maxTokens: 20, temperature: 0 });
    expect(full.text).toContain(', and');
    const r = await model.complete('The people of the United States', { maxTokens: 20, temperature: 0, stop: [', and'] });
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(full.text.slice(0, full.text.indexOf(', and')));
  });

  it('EOS ends generation unless it is not a stop token', async () => {
    // "The President said" reaches EOS (id 2) at step 28 of its greedy continuation.
    const r = await model.complete('The President said', { maxTokens: 40, temperature: 0 });
    expect(r.finishReason).toBe('eos');
    expect(r.tokenIds).not.toContain(2);
  });

  it('an AbortSignal stops generation', async () => {
    const ac = new AbortController();
    const got: string[] = [];
    for await (const c of model.generate('In the beginning', { maxTokens: 100, temperature: 0, signal: ac.signal })) {
      got.push(c.text);
      if (got.length === 3) ac.abort();
    }
    expect(got.length).toBeLessThan(6);
  });

  it('several sessions share one model concurrently', async () => {
    const [a, b] = await Promise.all([
      model.complete('Call me Ishmael.', { maxTokens: 12, temperature: 0 }),
      model.complete('In the beginning', { maxTokens: 12, temperature: 0 }),
    ]);
    const a2 = await model.complete('Call me Ishmael.', { maxTokens: 12, temperature: 0 });
    const b2 = await model.complete('In the beginning', { maxTokens: 12, temperature: 0 });
    expect(a.tokenIds).toEqual(a2.tokenIds);
    expect(b.tokenIds).toEqual(b2.tokenIds);
  });

  it('bad options throw RangeError / TypeError naming the option', async () => {
    await expect(model.complete('x', { maxTokens: -1 })).rejects.toThrow(/maxTokens/);
    await expect(model.complete('x', { temperature: -1 })).rejects.toThrow(RangeError);
    await expect(model.complete([999999], { maxTokens: 1 })).rejects.toThrow(RangeError);
    await expect(model.complete('x', { chat: true })).rejects.toThrow(/chat template/i);
  });

  it('a session rejects context overflow and can rewind', async () => {
    const s = model.createSession({ contextLength: 4 });
    await s.forward([1, 349, 1432]);
    await expect(s.forward([599, 5])).rejects.toThrow(/context overflow/);
    s.rewind(1);
    expect(s.position).toBe(1);
    const { logits } = await s.forward([349, 1432, 599]);
    expect(logits.length).toBe(model.config.vocabSize);
    s.dispose();
    await expect(s.forward([1])).rejects.toThrow(/disposed/);
  });
});
