// Text <-> token ids for Llama-family checkpoints.
//
// Encoding and decoding are delegated to @huggingface/tokenizers (a pure-JS port of HF `tokenizers`), so a
// checkpoint's own tokenizer.json is the source of truth. This module adds what the library leaves out:
// BOS/EOS policy from tokenizer_config.json, chat templates (@huggingface/jinja), the per-token byte view the
// streaming detokenizer needs, and a tokenizer.json synthesised from GGUF `tokenizer.ggml.*` metadata.

import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import type { TokenizerFiles } from './loaders/types.js';

export interface EncodeOptions {
  /** Add BOS/EOS as the model expects (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, chat markers) from the text (default false, as in HF). */
  skipSpecialTokens?: boolean;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  /** Append the header that starts the assistant's turn (default true). */
  addGenerationPrompt?: boolean;
  /**
   * When the model ships no chat template, use SIMPLE_CHAT_TEMPLATE instead of throwing. Off by default:
   * a base model never saw that format, so using it silently would hide a real mismatch.
   */
  allowFallback?: boolean;
  /** Extra variables for the template (e.g. `tools`, `date_string`). */
  variables?: Record<string, unknown>;
}

/**
 * The fallback chat format used only when a caller opts in (`allowFallback`): plain "Role: text" turns
 * separated by blank lines, ending with "Assistant:" when a generation prompt is requested.
 */
export const SIMPLE_CHAT_TEMPLATE =
  "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}" +
  '{% if add_generation_prompt %}Assistant:{% endif %}';

/**
 * How a stream of ids turns into text, as read from tokenizer.json's decoder:
 * - `sentencepiece`: "▁" is a space, `<0xNN>` pieces are raw bytes (byte fallback), and the decoder may strip
 *   one leading space of the whole text.
 * - `byte-level`: every character of a piece stands for one byte (GPT-2 byte-to-unicode table).
 * - `text`: anything else; only whole-sequence decode() is trusted.
 */
export type StreamDecoding =
  | { kind: 'sentencepiece'; byteFallback: boolean; stripLeadingSpace: boolean }
  | { kind: 'byte-level' }
  | { kind: 'text' };

export interface WinaTokenizerOptions {
  /** More end-of-generation ids, e.g. from generation_config.json or the model config (`<|eot_id|>`). */
  eosTokenIds?: number[];
}

type Json = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------------
// WinaTokenizer
// ---------------------------------------------------------------------------------------------------------

export class WinaTokenizer {
  readonly bosId: number | null;
  readonly eosIds: number[];
  /** Number of ids the tokenizer can produce (model vocabulary plus added tokens). */
  readonly vocabSize: number;
  readonly streamDecoding: StreamDecoding;

  readonly #tok: Tokenizer;
  readonly #config: Json;
  readonly #addBos: boolean | null;
  readonly #addEos: boolean | null;
  readonly #cleanUpSpaces: boolean;
  readonly #specialIds: Set<number>;
  readonly #addedIds: Set<number>;
  readonly #chatTemplate: string | null;
  #template: Template | null = null;
  #byteCache: (Uint8Array | undefined)[] = [];

  constructor(files: TokenizerFiles, options: WinaTokenizerOptions = {}) {
    const json = files.json;
    const config = files.config;
    if (!isObject(json.model)) throw new Error('tokenizer.json: field "model" is missing or not an object');
    if (!Array.isArray(json.added_tokens)) {
      // The library iterates added_tokens unconditionally; an older file may omit it.
      files = { json: { ...json, added_tokens: [] }, config };
    }
    this.#tok = new Tokenizer(files.json, config);
    this.#config = config;

    const vocab = this.#tok.model.vocab as string[];
    this.vocabSize = vocab.length;

    this.#specialIds = new Set();
    this.#addedIds = new Set();
    for (const [id, token] of this.#tok.get_added_tokens_decoder()) {
      this.#addedIds.add(id);
      if (token.special) this.#specialIds.add(id);
    }

    this.bosId = this.#tokenIdOf(config.bos_token);
    const eos = this.#tokenIdOf(config.eos_token);
    const eosIds = eos === null ? [] : [eos];
    for (const id of options.eosTokenIds ?? []) {
      if (!eosIds.includes(id)) eosIds.push(id);
    }
    this.eosIds = eosIds;

    // tokenizer_config.json's add_bos_token/add_eos_token override the post-processor when present, as
    // transformers' LlamaTokenizerFast does; otherwise the post-processor alone decides.
    this.#addBos = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : null;
    this.#addEos = typeof config.add_eos_token === 'boolean' ? config.add_eos_token : null;
    // transformers >= 4.45 defaults this to false; the JS library would default to true.
    this.#cleanUpSpaces = config.clean_up_tokenization_spaces === true;
    this.#chatTemplate = pickChatTemplate(config.chat_template);
    this.streamDecoding = describeDecoder(json.decoder);
  }

  /**
   * Text to ids. Special-token text inside `text` (e.g. "<s>", "<|eot_id|>") becomes that token, as with
   * HF tokenizers' default; chat templates rely on it.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecial = options.addSpecialTokens ?? true;
    if (!addSpecial) return this.#tok.encode(text, { add_special_tokens: false }).ids;
    if (this.#addBos === null && this.#addEos === null) {
      return this.#tok.encode(text, { add_special_tokens: true }).ids;
    }
    const ids = this.#tok.encode(text, { add_special_tokens: false }).ids;
    const eos = this.eosIds[0];
    if (this.#addBos && this.bosId !== null) ids.unshift(this.bosId);
    if (this.#addEos && eos !== undefined) ids.push(eos);
    return ids;
  }

  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    const list = Array.from(ids);
    for (const id of list) this.#checkId(id);
    return this.#tok.decode(list, {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.#cleanUpSpaces,
    });
  }

  idToToken(id: number): string | undefined {
    return this.#tok.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.#tok.token_to_id(token);
  }

  isSpecial(id: number): boolean {
    return this.#specialIds.has(id);
  }

  isEos(id: number): boolean {
    return this.eosIds.includes(id);
  }

  /**
   * The bytes one token contributes to the decoded text, before any leading-space strip. Special tokens give
   * their text. Only meaningful when streamDecoding.kind is not 'text'.
   */
  tokenBytes(id: number): Uint8Array {
    this.#checkId(id);
    const cached = this.#byteCache[id];
    if (cached !== undefined) return cached;
    const piece = this.#tok.id_to_token(id) ?? '';
    let bytes: Uint8Array;
    const decoding = this.streamDecoding;
    if (this.#addedIds.has(id) || decoding.kind === 'text') {
      bytes = utf8.encode(piece);
    } else if (decoding.kind === 'byte-level') {
      bytes = byteLevelToBytes(piece);
    } else {
      const byte = decoding.byteFallback ? byteFallbackValue(piece) : null;
      bytes = byte !== null ? Uint8Array.of(byte) : utf8.encode(piece.replaceAll('\u2581', ' '));
    }
    this.#byteCache[id] = bytes;
    return bytes;
  }

  get hasChatTemplate(): boolean {
    return this.#chatTemplate !== null;
  }

  /**
   * Renders messages with the model's chat template, like transformers' apply_chat_template(tokenize=False).
   * The text already holds the template's BOS when it writes one: encode it with addSpecialTokens: false.
   */
  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    return this.#templateFor(options.allowFallback ?? false).render({
      ...this.#specialTokenVariables(),
      ...options.variables,
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? true,
    });
  }

  #templateFor(allowFallback: boolean): Template {
    if (this.#chatTemplate !== null) return (this.#template ??= new Template(this.#chatTemplate));
    if (!allowFallback) {
      throw new Error(
        'This model has no chat template (tokenizer_config.json has no "chat_template"). ' +
          'Fixes: prompt it with plain text, or pass { allowFallback: true } to use the simple ' +
          '"User: ...\\n\\nAssistant:" format.',
      );
    }
    return (fallbackTemplate ??= new Template(SIMPLE_CHAT_TEMPLATE));
  }

  #specialTokenVariables(): Record<string, string> {
    const vars: Record<string, string> = {};
    for (const name of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const content = tokenContent(this.#config[name]);
      if (content !== null) vars[name] = content;
    }
    return vars;
  }

  #tokenIdOf(value: unknown): number | null {
    const content = tokenContent(value);
    if (content === null) return null;
    return this.#tok.token_to_id(content) ?? null;
  }

  #checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside the vocabulary [0, ${this.vocabSize})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers shared by the class and the GGUF conversion
// ---------------------------------------------------------------------------------------------------------

const utf8 = new TextEncoder();
let fallbackTemplate: Template | null = null;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** tokenizer_config.json writes special tokens either as a string or as an AddedToken object. */
function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (isObject(value) && typeof value.content === 'string') return value.content;
  return null;
}

/** chat_template is a string, or a list of named templates of which "default" is the chat one. */
function pickChatTemplate(value: unknown): string | null {
  if (typeof value === 'string' && value.length > 0) return value;
  if (Array.isArray(value)) {
    const named = value.filter(isObject);
    const chosen = named.find((t) => t.name === 'default') ?? named[0];
    if (chosen && typeof chosen.template === 'string') return chosen.template;
  }
  return null;
}

function byteFallbackValue(piece: string): number | null {
  const match = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
  return match ? parseInt(match[1], 16) : null;
}

function decoderSteps(decoder: unknown): Json[] {
  if (!isObject(decoder)) return [];
  if (decoder.type === 'Sequence' && Array.isArray(decoder.decoders)) return decoder.decoders.filter(isObject);
  return [decoder];
}

function describeDecoder(decoder: unknown): StreamDecoding {
  const steps = decoderSteps(decoder);
  if (steps.some((s) => s.type === 'ByteLevel')) return { kind: 'byte-level' };
  const replacesMetaspace = steps.some(
    (s) => s.type === 'Replace' && isObject(s.pattern) && s.pattern.String === '\u2581' && s.content === ' ',
  );
  const metaspace = steps.find((s) => s.type === 'Metaspace');
  if (!replacesMetaspace && !metaspace) return { kind: 'text' };
  const strip = steps.some((s) => s.type === 'Strip' && s.content === ' ' && Number(s.start) >= 1);
  const metaspaceStrips =
    metaspace !== undefined &&
    (metaspace.add_prefix_space === true || metaspace.prepend_scheme === 'always' || metaspace.prepend_scheme === 'first');
  return {
    kind: 'sentencepiece',
    byteFallback: steps.some((s) => s.type === 'ByteFallback'),
    stripLeadingSpace: strip || metaspaceStrips,
  };
}

/**
 * GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100...
 * so that every byte is a visible character in a byte-level vocabulary.
 */
const BYTE_TO_CHAR: string[] = (() => {
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
})();

const CHAR_TO_BYTE = new Map(BYTE_TO_CHAR.map((ch, b) => [ch, b]));

function byteLevelToBytes(piece: string): Uint8Array {
  const out: number[] = [];
  for (const ch of piece) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b !== undefined) out.push(b);
    else out.push(...utf8.encode(ch));
  }
  return Uint8Array.from(out);
}

// ---------------------------------------------------------------------------------------------------------
// GGUF tokenizer.ggml.* -> tokenizer.json + tokenizer_config.json
// ---------------------------------------------------------------------------------------------------------

/** llama.cpp token types (gguf-py `TokenType`). */
const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

// Pre-tokenizer regexes as in the models' own tokenizer.json files (llama.cpp hand-expands `(?i:...)`; the
// JS library translates it, so the originals are kept).
const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

interface PreTokenizerSpec {
  normalizer: Json | null;
  preTokenizer: Json;
  ignoreMerges: boolean;
  addBos: boolean;
}

function byteLevel(useRegex: boolean): Json {
  return { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex };
}

function splitThenByteLevel(regex: string): Json {
  return {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      byteLevel(false),
    ],
  };
}

/** `tokenizer.ggml.pre` values (llama.cpp's names) grouped by the HF pre-tokenizer they stand for. */
const PRE_TOKENIZERS: { names: string[]; spec: PreTokenizerSpec }[] = [
  {
    // Llama 3 / 3.1 / 3.2 and models that reuse its tokenizer; llama.cpp sets ignore_merges and BOS for these.
    names: ['llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'pixtral'],
    spec: { normalizer: null, preTokenizer: splitThenByteLevel(LLAMA3_REGEX), ignoreMerges: true, addBos: true },
  },
  {
    names: ['dbrx', 'smaug-bpe'],
    spec: { normalizer: null, preTokenizer: splitThenByteLevel(LLAMA3_REGEX), ignoreMerges: false, addBos: false },
  },
  {
    // Qwen2 / Qwen2.5 (and DeepSeek-R1 distills of Qwen): NFC normalizer, single digits.
    names: ['qwen2', 'deepseek-r1-qwen', 'megrez'],
    spec: {
      normalizer: { type: 'NFC' },
      preTokenizer: splitThenByteLevel(QWEN2_REGEX),
      ignoreMerges: false,
      addBos: false,
    },
  },
  {
    names: ['gpt-2', 'phi-2', 'mpt', 'olmo'],
    spec: { normalizer: null, preTokenizer: byteLevel(true), ignoreMerges: false, addBos: false },
  },
  {
    // StarCoder / SmolLM: every digit is its own pre-token, then GPT-2's split.
    names: ['starcoder', 'smollm', 'refact', 'codeshell'],
    spec: {
      normalizer: null,
      preTokenizer: {
        type: 'Sequence',
        pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)],
      },
      ignoreMerges: false,
      addBos: false,
    },
  },
];

/** Names accepted for `tokenizer.ggml.pre` when `tokenizer.ggml.model` is "gpt2". */
export const SUPPORTED_GGUF_PRE_TOKENIZERS: readonly string[] = PRE_TOKENIZERS.flatMap((p) => p.names);

function metaArray(metadata: Map<string, unknown>, key: string, required: boolean): ArrayLike<unknown> | null {
  const value = metadata.get(key);
  if (value === undefined) {
    if (required) throw new Error(`GGUF metadata: "${key}" is missing`);
    return null;
  }
  if (Array.isArray(value) || ArrayBuffer.isView(value)) return value as unknown as ArrayLike<unknown>;
  throw new Error(`GGUF metadata: "${key}" should be an array, found ${typeof value}`);
}

function metaNumber(metadata: Map<string, unknown>, key: string): number | null {
  const value = metadata.get(key);
  if (value === undefined) return null;
  if (typeof value === 'number' || typeof value === 'bigint') return Number(value);
  throw new Error(`GGUF metadata: "${key}" should be a number, found ${typeof value}`);
}

function metaBoolean(metadata: Map<string, unknown>, key: string): boolean | null {
  const value = metadata.get(key);
  if (value === undefined) return null;
  if (typeof value === 'boolean') return value;
  throw new Error(`GGUF metadata: "${key}" should be a boolean, found ${typeof value}`);
}

function metaString(metadata: Map<string, unknown>, key: string): string | null {
  const value = metadata.get(key);
  if (value === undefined) return null;
  if (typeof value === 'string') return value;
  throw new Error(`GGUF metadata: "${key}" should be a string, found ${typeof value}`);
}

interface GgufVocab {
  tokens: string[];
  types: number[];
  scores: number[] | null;
}

function readGgufVocab(metadata: Map<string, unknown>): GgufVocab {
  const rawTokens = metaArray(metadata, 'tokenizer.ggml.tokens', true)!;
  const tokens = Array.from(rawTokens, (t, i) => {
    if (typeof t !== 'string') throw new Error(`GGUF metadata: tokenizer.ggml.tokens[${i}] is not a string`);
    return t;
  });
  const rawTypes = metaArray(metadata, 'tokenizer.ggml.token_type', false);
  const types = rawTypes ? Array.from(rawTypes, Number) : tokens.map(() => TOKEN_TYPE.normal);
  const rawScores = metaArray(metadata, 'tokenizer.ggml.scores', false);
  const scores = rawScores ? Array.from(rawScores, Number) : null;
  for (const [name, list] of [['token_type', types], ['scores', scores]] as const) {
    if (list && list.length !== tokens.length) {
      throw new Error(
        `GGUF metadata: tokenizer.ggml.${name} has ${list.length} entries, tokenizer.ggml.tokens has ${tokens.length}`,
      );
    }
  }
  return { tokens, types, scores };
}

function vocabObject(tokens: string[]): Record<string, number> {
  const vocab: Record<string, number> = {};
  tokens.forEach((token, id) => {
    // A duplicated piece keeps its first id, the one a lookup by text finds in llama.cpp too.
    if (!Object.hasOwn(vocab, token)) vocab[token] = id;
  });
  return vocab;
}

function addedTokens(vocab: GgufVocab): Json[] {
  const added: Json[] = [];
  vocab.types.forEach((type, id) => {
    const special = type === TOKEN_TYPE.control || type === TOKEN_TYPE.unknown;
    if (!special && type !== TOKEN_TYPE.userDefined) return;
    added.push({
      id,
      content: vocab.tokens[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special,
    });
  });
  return added;
}

/**
 * Merges of a SentencePiece BPE vocabulary, as transformers' SentencePieceExtractor derives them: every split
 * of a piece into two pieces that are both in the vocabulary is a merge; merges are ordered by the merged
 * piece's score (highest first, ties in id order), splits of one piece by (left id, right id).
 */
export function mergesFromSentencePiece(tokens: string[], scores: number[]): [string, string][] {
  const ids = new Map<string, number>();
  tokens.forEach((t, i) => {
    if (!ids.has(t)) ids.set(t, i);
  });
  const found: { left: string; right: string; leftId: number; rightId: number; score: number; order: number }[] = [];
  tokens.forEach((piece, pieceId) => {
    const chars = Array.from(piece);
    const local: typeof found = [];
    for (let cut = 1; cut < chars.length; cut++) {
      const left = chars.slice(0, cut).join('');
      const right = chars.slice(cut).join('');
      const leftId = ids.get(left);
      const rightId = ids.get(right);
      if (leftId !== undefined && rightId !== undefined) {
        local.push({ left, right, leftId, rightId, score: scores[pieceId], order: 0 });
      }
    }
    local.sort((a, b) => a.leftId - b.leftId || a.rightId - b.rightId);
    for (const m of local) {
      m.order = found.length;
      found.push(m);
    }
  });
  found.sort((a, b) => b.score - a.score || a.order - b.order);
  return found.map((m) => [m.left, m.right]);
}

function templateProcessing(bos: string | null, eos: string | null, bosId: number | null, eosId: number | null): Json {
  const single: Json[] = [];
  const pair: Json[] = [];
  const special: Json = {};
  if (bos !== null && bosId !== null) {
    single.push({ SpecialToken: { id: bos, type_id: 0 } });
    special[bos] = { id: bos, ids: [bosId], tokens: [bos] };
  }
  single.push({ Sequence: { id: 'A', type_id: 0 } });
  if (eos !== null && eosId !== null) {
    single.push({ SpecialToken: { id: eos, type_id: 0 } });
    special[eos] = { id: eos, ids: [eosId], tokens: [eos] };
  }
  // HF Llama layout for pairs: the single template again for B, with type id 1.
  const second = single.map((p) =>
    isObject(p.Sequence) ? { Sequence: { id: 'B', type_id: 1 } } : { SpecialToken: { ...(p.SpecialToken as Json), type_id: 1 } },
  );
  pair.push(...single, ...second);
  return { type: 'TemplateProcessing', single, pair, special_tokens: special };
}

function tokenAt(tokens: string[], id: number | null, key: string): string | null {
  if (id === null) return null;
  if (!Number.isInteger(id) || id < 0 || id >= tokens.length) {
    throw new Error(`GGUF metadata: ${key} = ${id} is outside the vocabulary of ${tokens.length} tokens`);
  }
  return tokens[id];
}

function configFor(
  metadata: Map<string, unknown>,
  vocab: GgufVocab,
  tokenizerClass: string,
  defaults: { addBos: boolean; addEos: boolean },
): Json {
  const bosId = metaNumber(metadata, 'tokenizer.ggml.bos_token_id');
  const eosId = metaNumber(metadata, 'tokenizer.ggml.eos_token_id');
  const unkId = metaNumber(metadata, 'tokenizer.ggml.unknown_token_id');
  const padId = metaNumber(metadata, 'tokenizer.ggml.padding_token_id');
  const addedDecoder: Json = {};
  for (const t of addedTokens(vocab)) {
    const { id, ...rest } = t;
    addedDecoder[String(id)] = rest;
  }
  const config: Json = {
    add_bos_token: metaBoolean(metadata, 'tokenizer.ggml.add_bos_token') ?? defaults.addBos,
    add_eos_token: metaBoolean(metadata, 'tokenizer.ggml.add_eos_token') ?? defaults.addEos,
    bos_token: tokenAt(vocab.tokens, bosId, 'tokenizer.ggml.bos_token_id'),
    eos_token: tokenAt(vocab.tokens, eosId, 'tokenizer.ggml.eos_token_id'),
    unk_token: tokenAt(vocab.tokens, unkId, 'tokenizer.ggml.unknown_token_id'),
    pad_token: tokenAt(vocab.tokens, padId, 'tokenizer.ggml.padding_token_id'),
    added_tokens_decoder: addedDecoder,
    clean_up_tokenization_spaces: false,
    tokenizer_class: tokenizerClass,
  };
  const chatTemplate = metaString(metadata, 'tokenizer.chat_template');
  if (chatTemplate !== null) config.chat_template = chatTemplate;
  return config;
}

function sentencePieceFiles(metadata: Map<string, unknown>): TokenizerFiles {
  const vocab = readGgufVocab(metadata);
  if (vocab.scores === null) {
    throw new Error('GGUF metadata: tokenizer.ggml.scores is missing; a "llama" (SentencePiece) vocabulary needs it');
  }
  const config = configFor(metadata, vocab, 'LlamaTokenizer', { addBos: true, addEos: false });
  // llama.cpp's default for SentencePiece vocabularies is to prepend "▁" (SentencePiece add_dummy_prefix).
  const addSpacePrefix = metaBoolean(metadata, 'tokenizer.ggml.add_space_prefix') ?? true;
  const bos = config.bos_token as string | null;
  const eos = config.eos_token as string | null;
  const unk = (config.unk_token as string | null) ?? (vocab.tokens.includes('<unk>') ? '<unk>' : null);
  const replaceSpace = { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' };
  const json: Json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(vocab),
    normalizer: addSpacePrefix
      ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, replaceSpace] }
      : replaceSpace,
    pre_tokenizer: null,
    post_processor: templateProcessing(
      config.add_bos_token ? bos : null,
      config.add_eos_token ? eos : null,
      metaNumber(metadata, 'tokenizer.ggml.bos_token_id'),
      metaNumber(metadata, 'tokenizer.ggml.eos_token_id'),
    ),
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: vocabObject(vocab.tokens),
      merges: mergesFromSentencePiece(vocab.tokens, vocab.scores),
    },
  };
  return { json, config };
}

function byteLevelFiles(metadata: Map<string, unknown>): TokenizerFiles {
  const pre = metaString(metadata, 'tokenizer.ggml.pre') ?? '(missing)';
  const entry = PRE_TOKENIZERS.find((p) => p.names.includes(pre));
  if (!entry) {
    throw new Error(
      `GGUF metadata: tokenizer.ggml.pre = "${pre}" is not supported for byte-level BPE vocabularies. ` +
        `Supported: ${SUPPORTED_GGUF_PRE_TOKENIZERS.join(', ')}. ` +
        'Fix: load the safetensors checkpoint with its tokenizer.json instead.',
    );
  }
  const spec = entry.spec;
  const vocab = readGgufVocab(metadata);
  const rawMerges = metaArray(metadata, 'tokenizer.ggml.merges', true)!;
  const merges = Array.from(rawMerges, (m, i) => {
    if (typeof m !== 'string' || m.indexOf(' ', 1) < 0) {
      throw new Error(`GGUF metadata: tokenizer.ggml.merges[${i}] should be "left right", found ${JSON.stringify(m)}`);
    }
    const cut = m.indexOf(' ', 1);
    return [m.slice(0, cut), m.slice(cut + 1)];
  });
  const config = configFor(metadata, vocab, 'PreTrainedTokenizerFast', { addBos: spec.addBos, addEos: false });
  const json: Json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens(vocab),
    normalizer: spec.normalizer,
    pre_tokenizer: spec.preTokenizer,
    post_processor: templateProcessing(
      config.add_bos_token ? (config.bos_token as string | null) : null,
      config.add_eos_token ? (config.eos_token as string | null) : null,
      metaNumber(metadata, 'tokenizer.ggml.bos_token_id'),
      metaNumber(metadata, 'tokenizer.ggml.eos_token_id'),
    ),
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: spec.ignoreMerges,
      vocab: vocabObject(vocab.tokens),
      merges,
    },
  };
  return { json, config };
}

/**
 * Builds tokenizer.json + tokenizer_config.json equivalents from GGUF `tokenizer.ggml.*` metadata.
 * Supports `tokenizer.ggml.model` "llama" (SentencePiece BPE with byte fallback, Llama 1/2, Mistral v0.1) and
 * "gpt2" (byte-level BPE, with the pre-tokenizers in SUPPORTED_GGUF_PRE_TOKENIZERS).
 */
export function tokenizerFilesFromGguf(metadata: Map<string, unknown>): TokenizerFiles {
  const model = metaString(metadata, 'tokenizer.ggml.model');
  if (model === 'llama') return sentencePieceFiles(metadata);
  if (model === 'gpt2') return byteLevelFiles(metadata);
  throw new Error(
    `GGUF metadata: tokenizer.ggml.model = ${JSON.stringify(model)} is not supported (supported: "llama", "gpt2")`,
  );
}
