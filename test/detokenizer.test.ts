import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import llama3Tokenizer from 'llama3-tokenizer-js';
import { StreamDetokenizer, StopMatcher } from '../lib/detokenizer.js';
import { WinaTokenizer, tokenizerFilesFromGguf } from '../lib/tokenizer.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const hasShared = fs.existsSync(shared);
const tinyDir = path.join(shared, 'models/tiny-en-llama');

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
}

function tinyFiles() {
  return {
    json: readJson(path.join(tinyDir, 'tokenizer.json')),
    config: readJson(path.join(tinyDir, 'tokenizer_config.json')),
  };
}

function stream(tok: WinaTokenizer, ids: number[], skipSpecialTokens = true): string[] {
  const detok = new StreamDetokenizer(tok, { skipSpecialTokens });
  const pieces = ids.map((id) => detok.push(id));
  pieces.push(detok.flush());
  return pieces;
}

const TEXTS = [
  'Hello world',
  '  two leading spaces',
  'emoji 😀🦙 and family 👩‍👩‍👧 end',
  '日本語のテキスト、中文字符 Ångström',
  'line\n\nbreaks\tand tabs',
  '3.14159 1,000,000',
];

describe.skipIf(!hasShared)('StreamDetokenizer on tiny-en-llama, SentencePiece + byte fallback (needs ../shared)', () => {
  const tok = hasShared ? new WinaTokenizer(tinyFiles()) : (null as unknown as WinaTokenizer);
  const reference = hasShared
    ? (readJson(path.join(tinyDir, 'reference.json')).references as {
        prompt_ids: number[];
        greedy_ids: number[];
        full_text: string;
      }[])
    : [];

  it('streams prompt + greedy ids (with an EOS/BOS pair inside) to full_text', () => {
    for (const r of reference) {
      expect(stream(tok, [...r.prompt_ids, ...r.greedy_ids]).join('')).toBe(r.full_text);
    }
  });

  it('keeps special tokens when asked, exactly like decode()', () => {
    for (const r of reference) {
      const ids = [...r.prompt_ids, ...r.greedy_ids];
      expect(stream(tok, ids, false).join('')).toBe(tok.decode(ids));
    }
  });

  it('holds byte-fallback bytes until the character is complete', () => {
    const ids = tok.encode('😀', { addSpecialTokens: false });
    expect(ids.length).toBe(5); // "▁" + four <0xNN> pieces
    const pieces = stream(tok, [1, ...ids]);
    expect(pieces).toEqual(['', '', '', '', '', '😀', '']);
  });

  it('never emits U+FFFD for valid text and always equals decode()', () => {
    for (const text of TEXTS) {
      const ids = tok.encode(text);
      const pieces = stream(tok, ids);
      for (const p of pieces) expect(p).not.toContain('\uFFFD');
      expect(pieces.join('')).toBe(tok.decode(ids, { skipSpecialTokens: true }));
      expect(pieces.join('')).toBe(text);
    }
  });

  it('strips only the first leading space of the sequence, and resets after flush', () => {
    const detok = new StreamDetokenizer(tok);
    const [the, president] = tok.encode('The President', { addSpecialTokens: false });
    expect(detok.push(1)).toBe('');
    expect(detok.push(the)).toBe('The');
    expect(detok.push(president)).toBe(' President');
    expect(detok.flush()).toBe('');
    expect(detok.push(the)).toBe('The');
  });

  it('ends an unfinished character as U+FFFD on flush', () => {
    const ids = tok.encode('😀', { addSpecialTokens: false });
    const detok = new StreamDetokenizer(tok);
    for (const id of ids.slice(0, 3)) expect(detok.push(id)).toBe('');
    expect(detok.flush()).toBe('\uFFFD');
  });

  it('falls back to windowed decode() for decoders without a byte view', () => {
    const files = tinyFiles();
    files.json.decoder = { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] };
    const plain = new WinaTokenizer(files);
    expect(plain.streamDecoding.kind).toBe('text');
    for (const text of TEXTS) {
      const ids = plain.encode(text);
      const pieces = stream(plain, ids);
      for (const p of pieces) expect(p).not.toContain('\uFFFD');
      expect(pieces.join('')).toBe(plain.decode(ids, { skipSpecialTokens: true }));
    }
  });

  it('rejects ids outside the vocabulary', () => {
    expect(() => new StreamDetokenizer(tok).push(4096)).toThrow(RangeError);
  });
});

describe('StreamDetokenizer on a byte-level BPE vocabulary (Llama 3)', () => {
  const tokens = llama3Tokenizer.vocabById;
  const merges = [...llama3Tokenizer.merges.entries()].sort((a, b) => a[1] - b[1]).map(([pair]) => pair);
  const tok = new WinaTokenizer(
    tokenizerFilesFromGguf(
      new Map<string, unknown>([
        ['tokenizer.ggml.model', 'gpt2'],
        ['tokenizer.ggml.pre', 'llama-bpe'],
        ['tokenizer.ggml.tokens', tokens],
        ['tokenizer.ggml.token_type', tokens.map((_, id) => (id < 128000 ? 1 : 3))],
        ['tokenizer.ggml.merges', merges],
        ['tokenizer.ggml.bos_token_id', 128000],
        ['tokenizer.ggml.eos_token_id', 128001],
      ]),
    ),
  );

  it('equals decode() and holds partial UTF-8 sequences', () => {
    for (const text of [...TEXTS, '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙋ']) {
      const ids = tok.encode(text);
      const pieces = stream(tok, ids);
      for (const p of pieces) expect(p).not.toContain('\uFFFD');
      expect(pieces.join('')).toBe(text);
      expect(stream(tok, ids, false).join('')).toBe(tok.decode(ids));
    }
  });

  it('splits a character across tokens and emits it once complete', () => {
    // 🦙 is 4 UTF-8 bytes that Llama 3 spells with more than one token.
    const ids = tok.encode('🦙', { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(1);
    const pieces = stream(tok, ids);
    expect(pieces.slice(0, -2).every((p) => p === '')).toBe(true);
    expect(pieces.join('')).toBe('🦙');
  });
});

describe('StopMatcher', () => {
  it('holds back a possible stop prefix and releases it when it turns out not to be one', () => {
    const m = new StopMatcher(['\nUser:']);
    expect(m.push('Hello')).toEqual({ text: 'Hello', stopped: false });
    expect(m.push(' there\nUs')).toEqual({ text: ' there', stopped: false });
    expect(m.push('ually')).toEqual({ text: '\nUsually', stopped: false });
    expect(m.flush()).toBe('');
  });

  it('stops on a stop string split across pushes and emits only the text before it', () => {
    const m = new StopMatcher(['</answer>', 'STOP']);
    expect(m.push('42 </ans')).toEqual({ text: '42 ', stopped: false });
    expect(m.push('wer> trailing')).toEqual({ text: '', stopped: true, stop: '</answer>' });
    expect(m.stopped).toBe(true);
    expect(m.push('more')).toEqual({ text: '', stopped: true });
  });

  it('picks the earliest stop when several match in one push', () => {
    const m = new StopMatcher(['bbb', 'ab']);
    expect(m.push('xxabbbb')).toEqual({ text: 'xx', stopped: true, stop: 'ab' });
  });

  it('gives back held text at the end of generation', () => {
    const m = new StopMatcher(['###']);
    expect(m.push('end #')).toEqual({ text: 'end ', stopped: false });
    expect(m.flush()).toBe('#');
  });

  it('cuts at the first stop whatever the chunking (seeded random chunks)', () => {
    let state = 12345;
    const rand = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const stops = ['\n\n', 'END', 'ENDING'];
    const texts = ['alpha beta\n gamma EN DING\n\nrest', 'no stop here at all E', 'x END y', '\n\n'];
    for (const text of texts) {
      const firstStop = Math.min(...stops.map((s) => text.indexOf(s)).filter((i) => i >= 0), text.length);
      for (let trial = 0; trial < 50; trial++) {
        const m = new StopMatcher(stops);
        let out = '';
        let at = 0;
        while (at < text.length && !m.stopped) {
          const n = 1 + Math.floor(rand() * 4);
          out += m.push(text.slice(at, at + n)).text;
          at += n;
        }
        if (!m.stopped) out += m.flush();
        expect(out).toBe(text.slice(0, firstStop));
      }
    }
  });

  it('rejects empty stop strings', () => {
    expect(() => new StopMatcher([''])).toThrow(RangeError);
  });
});
