import { describe, expect, it } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import llama3Tokenizer from 'llama3-tokenizer-js';
import {
  WinaTokenizer,
  mergesFromSentencePiece,
  tokenizerFilesFromGguf,
  SUPPORTED_GGUF_PRE_TOKENIZERS,
} from '../lib/tokenizer.js';
import { readGgufHeader } from '../lib/loaders/gguf.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const hasShared = fs.existsSync(shared);
const tinyDir = path.join(shared, 'models/tiny-en-llama');

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
}

function tinyTokenizerFiles() {
  return { json: readJson(path.join(tinyDir, 'tokenizer.json')), config: readJson(path.join(tinyDir, 'tokenizer_config.json')) };
}

function validLines(): string[] {
  const text = fs.readFileSync(path.join(shared, 'data/tiny-en-valid/valid.txt'), 'utf8');
  return text.split('\n').filter((l) => l.length > 0);
}

const EDGE_CASES = [
  '',
  ' ',
  'Hello world',
  'Hello  world, double  spaces',
  '   leading and trailing   ',
  'line one\nline two\n\nafter a blank line',
  '\ttab\tseparated',
  'digits 0123456789 and 3.14159 and 1,000,000',
  '日本語のテキスト、中文字符',
  'emoji 😀🦙👩‍👩‍👧 mixed',
  'accents: café naïve Ångström',
  "it's they're we'll I'D",
];

function ggufMetadata(file: string): Map<string, unknown> {
  return readGgufHeader(file).metadata;
}

describe.skipIf(!hasShared)('tiny-en-llama tokenizer.json (needs ../shared)', () => {
  const tok = hasShared ? new WinaTokenizer(tinyTokenizerFiles()) : (null as unknown as WinaTokenizer);
  const reference = hasShared
    ? (readJson(path.join(tinyDir, 'reference.json')).references as {
        prompt: string;
        prompt_ids: number[];
        greedy_ids: number[];
        full_text: string;
      }[])
    : [];

  it('reads special ids and sizes from the files', () => {
    expect(tok.bosId).toBe(1);
    expect(tok.eosIds).toEqual([2]);
    expect(tok.vocabSize).toBe(4096);
    expect(tok.idToToken(1)).toBe('<s>');
    expect(tok.tokenToId('</s>')).toBe(2);
    expect(tok.isSpecial(1)).toBe(true);
    expect(tok.isSpecial(349)).toBe(false);
    expect(tok.streamDecoding).toEqual({ kind: 'sentencepiece', byteFallback: true, stripLeadingSpace: true });
  });

  it('encodes every reference prompt to its prompt_ids (BOS included)', () => {
    expect(reference.length).toBe(4);
    for (const r of reference) expect(tok.encode(r.prompt)).toEqual(r.prompt_ids);
  });

  it('decodes prompt_ids + greedy_ids to full_text', () => {
    for (const r of reference) {
      expect(tok.decode([...r.prompt_ids, ...r.greedy_ids], { skipSpecialTokens: true })).toBe(r.full_text);
    }
  });

  it('adds BOS only when asked, and keeps special tokens in decode unless skipped', () => {
    const ids = tok.encode('The President said', { addSpecialTokens: false });
    expect(ids).toEqual(reference[0].prompt_ids.slice(1));
    expect(tok.decode([1, ...ids])).toBe('<s> The President said');
    expect(tok.decode([])).toBe('');
    expect(() => tok.decode([4096])).toThrow(RangeError);
  });

  it('round-trips the validation text', () => {
    for (const line of validLines().slice(0, 200)) {
      expect(tok.decode(tok.encode(line), { skipSpecialTokens: true })).toBe(line);
    }
  });

  it('gives byte-fallback pieces as single bytes', () => {
    const ids = tok.encode('😀', { addSpecialTokens: false });
    const bytes = ids.flatMap((id) => Array.from(tok.tokenBytes(id)));
    // "▁" then the 4 UTF-8 bytes of U+1F600 through <0xNN> pieces.
    expect(bytes).toEqual([0x20, 0xf0, 0x9f, 0x98, 0x80]);
  });

  it('refuses a chat template the model does not have, and uses the fallback only on request', () => {
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
    ];
    expect(tok.hasChatTemplate).toBe(false);
    expect(() => tok.applyChatTemplate(messages)).toThrow(/no chat template/);
    expect(tok.applyChatTemplate(messages, { allowFallback: true })).toBe('System: Be brief.\n\nUser: Hi\n\nAssistant:');
    expect(tok.applyChatTemplate(messages, { allowFallback: true, addGenerationPrompt: false })).toBe(
      'System: Be brief.\n\nUser: Hi\n\n',
    );
  });

  it("renders the model's own chat template with the special tokens", () => {
    const files = tinyTokenizerFiles();
    files.config.chat_template =
      "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}" +
      "{% if add_generation_prompt %}[assistant]{% endif %}";
    const chat = new WinaTokenizer(files);
    expect(chat.applyChatTemplate([{ role: 'user', content: 'Hello' }])).toBe('<s>[user] Hello</s>[assistant]');
    files.config.chat_template = "{{ raise_exception('only user turns') }}";
    expect(() => new WinaTokenizer(files).applyChatTemplate([])).toThrow(/only user turns/);
  });

  it('honours add_bos_token / add_eos_token from tokenizer_config.json over the post-processor', () => {
    const files = tinyTokenizerFiles();
    files.config.add_bos_token = false;
    files.config.add_eos_token = true;
    const t = new WinaTokenizer(files, { eosTokenIds: [2, 3] });
    expect(t.eosIds).toEqual([2, 3]);
    expect(t.encode('The President said')).toEqual([349, 1432, 599, 2]);
  });
});

describe.skipIf(!hasShared)('GGUF tokenizer.ggml.* metadata, SentencePiece vocabulary (needs ../shared)', () => {
  const metadata = hasShared ? ggufMetadata(path.join(tinyDir, 'gguf/tiny-en-llama-q8_0.gguf')) : new Map();
  const files = hasShared ? tokenizerFilesFromGguf(metadata) : (null as never);
  const fromGguf = hasShared ? new WinaTokenizer(files) : (null as unknown as WinaTokenizer);
  const fromJson = hasShared ? new WinaTokenizer(tinyTokenizerFiles()) : (null as unknown as WinaTokenizer);

  it('builds the same tokenizer from the f32, bf16 and q8_0 files', () => {
    for (const name of ['tiny-en-llama-f32.gguf', 'tiny-en-llama-bf16.gguf']) {
      expect(tokenizerFilesFromGguf(ggufMetadata(path.join(tinyDir, 'gguf', name)))).toEqual(files);
    }
  });

  it('derives exactly the merges of the HF tokenizer.json', () => {
    const expected = (tinyTokenizerFiles().json.model as { merges: [string, string][] }).merges;
    const model = files.json.model as { merges: [string, string][]; vocab: Record<string, number> };
    expect(model.merges.length).toBe(expected.length);
    expect(model.merges).toEqual(expected);
    expect(model.vocab).toEqual((tinyTokenizerFiles().json.model as { vocab: unknown }).vocab);
  });

  it('encodes every validation line and the edge cases to the same ids as tokenizer.json', () => {
    const lines = [...validLines(), ...EDGE_CASES];
    expect(lines.length).toBeGreaterThan(1000);
    for (const line of lines) expect(fromGguf.encode(line), line).toEqual(fromJson.encode(line));
  });

  it('decodes like tokenizer.json and has the same special tokens', () => {
    expect(fromGguf.bosId).toBe(1);
    expect(fromGguf.eosIds).toEqual([2]);
    expect(fromGguf.vocabSize).toBe(4096);
    expect(fromGguf.streamDecoding).toEqual(fromJson.streamDecoding);
    for (const line of [...validLines().slice(0, 100), ...EDGE_CASES]) {
      const ids = fromJson.encode(line);
      expect(fromGguf.decode(ids)).toBe(fromJson.decode(ids));
      expect(fromGguf.decode(ids, { skipSpecialTokens: true })).toBe(fromJson.decode(ids, { skipSpecialTokens: true }));
    }
  });

  it('matches known Llama-2 ids with the vocab-only ggml-vocab-llama.gguf', () => {
    const llama2 = new WinaTokenizer(
      tokenizerFilesFromGguf(ggufMetadata(path.join(shared, 'models/gguf-vocab-llama/ggml-vocab-llama.gguf'))),
    );
    expect(llama2.vocabSize).toBe(32000);
    expect(llama2.encode('Once upon a time, there was a little girl named Lily.')).toEqual([
      1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889,
    ]);
    // Known answers from llama-tokenizer-js's test suite (verified there against the reference tokenizer).
    const known: [string, number[]][] = [
      ['grabbed', [1, 2646, 1327, 287]],
      [' grabbed', [1, 29871, 2646, 1327, 287]],
      ['           grabbed', [1, 9651, 2646, 1327, 287]],
      ['\n', [1, 29871, 13]],
      [' \n', [1, 259, 13]],
      ['\ttabs\t\t\t\tout here', [1, 29871, 12, 21175, 12, 12, 12, 12, 449, 1244]],
      ['ax\n####\nboo', [1, 4853, 13, 4136, 13, 833, 29877]],
      ['镇', [1, 29871, 30411]],
      ['🦙', [1, 29871, 243, 162, 169, 156]],
    ];
    for (const [text, ids] of known) {
      expect(llama2.encode(text), JSON.stringify(text)).toEqual(ids);
      expect(llama2.decode(ids, { skipSpecialTokens: true })).toBe(text);
    }
  });
});

describe('GGUF tokenizer.ggml.* metadata, byte-level BPE vocabulary', () => {
  // The Llama 3 vocabulary and merges of llama3-tokenizer-js (an independent implementation), laid out as
  // llama.cpp's converter writes them for tokenizer.ggml.model = "gpt2", pre = "llama-bpe".
  function llama3Metadata(): Map<string, unknown> {
    const tokens = llama3Tokenizer.vocabById;
    const merges = [...llama3Tokenizer.merges.entries()].sort((a, b) => a[1] - b[1]).map(([pair]) => pair);
    const baseVocab = 128000;
    return new Map<string, unknown>([
      ['tokenizer.ggml.model', 'gpt2'],
      ['tokenizer.ggml.pre', 'llama-bpe'],
      ['tokenizer.ggml.tokens', tokens],
      ['tokenizer.ggml.token_type', tokens.map((_, id) => (id < baseVocab ? 1 : 3))],
      ['tokenizer.ggml.merges', merges],
      ['tokenizer.ggml.bos_token_id', 128000],
      ['tokenizer.ggml.eos_token_id', 128001],
    ]);
  }
  const tok = new WinaTokenizer(tokenizerFilesFromGguf(llama3Metadata()), { eosTokenIds: [128009] });
  const texts = [
    ...EDGE_CASES,
    'Hello world!',
    'numbers 1234567 should split in threes',
    "Don't you DARE say 'Ve",
    'trailing newlines\n\n\n',
    '    indented code();\n\tmore',
    ...(hasShared ? validLines().slice(0, 300) : []),
  ];

  it('adds <|begin_of_text|> as llama.cpp does for llama-bpe', () => {
    expect(tok.bosId).toBe(128000);
    expect(tok.eosIds).toEqual([128001, 128009]);
    expect(tok.encode('Hello world!')).toEqual([128000, 9906, 1917, 0]);
    expect(tok.streamDecoding).toEqual({ kind: 'byte-level' });
  });

  it('encodes like llama3-tokenizer-js', () => {
    for (const text of texts) {
      expect(tok.encode(text, { addSpecialTokens: false }), JSON.stringify(text)).toEqual(
        llama3Tokenizer.encode(text, { bos: false, eos: false }),
      );
    }
  });

  it('matches special tokens inside the text and decodes back', () => {
    const ids = tok.encode('<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>', { addSpecialTokens: false });
    expect(ids).toEqual([128006, 882, 128007, 271, 13347, 128009]);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('user\n\nHi');
    for (const text of texts) expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
  });

  it("renders a Llama 3 Instruct chat template carried in tokenizer.chat_template", () => {
    const metadata = llama3Metadata();
    metadata.set(
      'tokenizer.chat_template',
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + " +
        "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}" +
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}" +
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    );
    const chat = new WinaTokenizer(tokenizerFilesFromGguf(metadata));
    const text = chat.applyChatTemplate([{ role: 'user', content: ' Hi ' }]);
    expect(text).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    expect(chat.encode(text, { addSpecialTokens: false })).toEqual([128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271]);
  });

  it('wires the other pre-tokenizers: qwen2 (single digits, NFC, no BOS), gpt-2, starcoder', () => {
    const withPre = (pre: string) => {
      const metadata = llama3Metadata();
      metadata.set('tokenizer.ggml.pre', pre);
      return new WinaTokenizer(tokenizerFilesFromGguf(metadata));
    };
    const digits = (t: WinaTokenizer, text: string) => t.encode(text, { addSpecialTokens: false }).map((id) => t.idToToken(id));
    expect(digits(tok, '12345')).toEqual(['123', '45']);
    const qwen = withPre('qwen2');
    expect(digits(qwen, '12345')).toEqual(['1', '2', '3', '4', '5']);
    expect(qwen.encode('caf\u0065\u0301')).toEqual(qwen.encode('caf\u00e9')); // NFC before splitting
    expect(qwen.encode('Hello world!')).toEqual([9906, 1917, 0]); // no BOS unless the metadata asks
    expect(digits(withPre('starcoder'), 'x 2024')).toEqual(['x', 'Ġ', '2', '0', '2', '4']);
    // GPT-2's split keeps a run of digits and a leading space together; the BPE merges then split it.
    expect(digits(withPre('gpt-2'), 'x 2024').join('')).toBe('xĠ2024');
  });

  it('rejects pre-tokenizers it does not know, naming the supported ones', () => {
    const metadata = llama3Metadata();
    metadata.set('tokenizer.ggml.pre', 'deepseek-coder');
    expect(() => tokenizerFilesFromGguf(metadata)).toThrow(/deepseek-coder.*llama-bpe/s);
    expect(SUPPORTED_GGUF_PRE_TOKENIZERS).toContain('qwen2');
    metadata.set('tokenizer.ggml.model', 'bert');
    expect(() => tokenizerFilesFromGguf(metadata)).toThrow(/"bert" is not supported/);
  });
});

describe('mergesFromSentencePiece', () => {
  it('orders merges by the merged piece score, then by left and right id', () => {
    const tokens = ['a', 'b', 'c', 'ab', 'bc', 'abc'];
    const scores = [0, 0, 0, -2, -1, -3];
    expect(mergesFromSentencePiece(tokens, scores)).toEqual([
      ['b', 'c'],
      ['a', 'b'],
      ['a', 'bc'],
      ['ab', 'c'],
    ]);
  });
});
