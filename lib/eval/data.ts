// Readers for the evaluation sets in their published file formats. Each returns typed items and refuses a
// malformed file with an EvalDataError that names the file and the 1-based line.

import { readFile } from 'node:fs/promises';

export class EvalDataError extends Error {
  readonly file: string;
  /** 1-based line number, or null when the problem is the file as a whole. */
  readonly line: number | null;

  constructor(file: string, line: number | null, message: string) {
    super(`${line === null ? file : `${file}:${line}`}: ${message}`);
    this.name = 'EvalDataError';
    this.file = file;
    this.line = line;
  }
}

/** A plain-text corpus (WikiText-2 raw, tiny-en valid), line endings normalised to "\n". */
export interface TextFile {
  file: string;
  text: string;
  /** The lines of `text`, without a final empty line after a trailing newline. */
  lines: string[];
}

/** PIQA: a goal and two solutions; label is the index of the right one. */
export interface PiqaItem {
  goal: string;
  sol1: string;
  sol2: string;
  label: number;
}

/** ARC (Easy or Challenge): `gold` is the index into `choices` of `answerKey`. */
export interface ArcItem {
  id: string;
  question: string;
  choices: { label: string; text: string }[];
  answerKey: string;
  gold: number;
}

/** HellaSwag in llama.cpp's text format: context (activity label + ": " + ctx), four endings, gold label. */
export interface HellaswagItem {
  context: string;
  endings: string[];
  label: number;
}

/** BoolQ (SuperGLUE packaging): passage is "Title -- text". */
export interface BoolqItem {
  question: string;
  passage: string;
  label: boolean;
  idx: number | null;
}

// ---------------------------------------------------------------------------------------------------------
// File helpers
// ---------------------------------------------------------------------------------------------------------

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

async function readText(file: string): Promise<string> {
  const bytes = await readFile(file);
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    throw new EvalDataError(file, lineOfInvalidUtf8(bytes), 'not valid UTF-8');
  }
  // A byte-order mark is not text; Windows line endings are not part of the content.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  return text.replace(/\r\n?/g, '\n');
}

function lineOfInvalidUtf8(bytes: Uint8Array): number {
  let line = 1;
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i === bytes.length || bytes[i] === 0x0a) {
      try {
        strictUtf8.decode(bytes.subarray(start, i));
      } catch {
        return line;
      }
      line++;
      start = i + 1;
    }
  }
  return line;
}

function splitLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

type JsonObject = Record<string, unknown>;

/** Non-blank lines of a JSONL file, parsed, with their line numbers. */
async function readJsonl(file: string): Promise<{ value: JsonObject; line: number }[]> {
  const lines = splitLines(await readText(file));
  const out: { value: JsonObject; line: number }[] = [];
  lines.forEach((text, i) => {
    if (text.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new EvalDataError(file, i + 1, `invalid JSON (${(e as Error).message})`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new EvalDataError(file, i + 1, 'expected a JSON object');
    }
    out.push({ value: value as JsonObject, line: i + 1 });
  });
  if (out.length === 0) throw new EvalDataError(file, null, 'no items');
  return out;
}

function stringField(obj: JsonObject, key: string, file: string, line: number): string {
  const value = obj[key];
  if (typeof value !== 'string') {
    throw new EvalDataError(file, line, `field "${key}" should be a string, found ${describe(value)}`);
  }
  return value;
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  return Array.isArray(value) ? 'an array' : `${typeof value} ${JSON.stringify(value)}`.slice(0, 80);
}

// ---------------------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------------------

export async function readTextFile(file: string): Promise<TextFile> {
  const text = await readText(file);
  if (text.trim() === '') throw new EvalDataError(file, null, 'the file is empty');
  return { file, text, lines: splitLines(text) };
}

/** PIQA: `{"goal","sol1","sol2"}` per line, and the labels file with one 0/1 per line, aligned. */
export async function readPiqa(jsonlFile: string, labelsFile: string): Promise<PiqaItem[]> {
  const rows = await readJsonl(jsonlFile);
  const labelLines = splitLines(await readText(labelsFile));
  const labels: { label: number; line: number }[] = [];
  labelLines.forEach((text, i) => {
    const t = text.trim();
    if (t === '') return;
    if (t !== '0' && t !== '1') throw new EvalDataError(labelsFile, i + 1, `expected 0 or 1, found ${JSON.stringify(t)}`);
    labels.push({ label: Number(t), line: i + 1 });
  });
  if (labels.length !== rows.length) {
    throw new EvalDataError(labelsFile, null, `has ${labels.length} labels but ${jsonlFile} has ${rows.length} items`);
  }
  return rows.map(({ value, line }, i) => ({
    goal: stringField(value, 'goal', jsonlFile, line),
    sol1: stringField(value, 'sol1', jsonlFile, line),
    sol2: stringField(value, 'sol2', jsonlFile, line),
    label: labels[i].label,
  }));
}

/**
 * ARC in the official JSONL schema: `{"id", "question": {"stem", "choices": [{"text","label"}]}, "answerKey"}`.
 * Labels are letters (A-E) or digits (1-5) and answerKey uses the same scheme; an answerKey in the other
 * scheme is mapped by position (A = 1).
 */
export async function readArc(jsonlFile: string): Promise<ArcItem[]> {
  return (await readJsonl(jsonlFile)).map(({ value, line }) => {
    const question = value.question;
    if (typeof question !== 'object' || question === null || Array.isArray(question)) {
      throw new EvalDataError(jsonlFile, line, `field "question" should be an object, found ${describe(question)}`);
    }
    const q = question as JsonObject;
    const stem = stringField(q, 'stem', jsonlFile, line);
    if (!Array.isArray(q.choices) || q.choices.length < 2) {
      throw new EvalDataError(jsonlFile, line, `field "question.choices" should list at least 2 choices`);
    }
    const choices = q.choices.map((c: unknown, i: number) => {
      if (typeof c !== 'object' || c === null) throw new EvalDataError(jsonlFile, line, `choice ${i} is not an object`);
      const choice = c as JsonObject;
      return { label: stringField(choice, 'label', jsonlFile, line), text: stringField(choice, 'text', jsonlFile, line) };
    });
    const answerKey = stringField(value, 'answerKey', jsonlFile, line);
    const gold = arcGold(choices.map((c) => c.label), answerKey);
    if (gold < 0) {
      throw new EvalDataError(
        jsonlFile,
        line,
        `answerKey ${JSON.stringify(answerKey)} is not one of the labels ${choices.map((c) => c.label).join(', ')}`,
      );
    }
    const id = typeof value.id === 'string' ? value.id : String(line);
    return { id, question: stem, choices, answerKey, gold };
  });
}

function arcGold(labels: string[], answerKey: string): number {
  const direct = labels.indexOf(answerKey);
  if (direct >= 0) return direct;
  const letters = 'ABCDEFGH';
  if (/^[1-9]$/.test(answerKey) && labels.every((l) => letters.includes(l))) {
    return labels.indexOf(letters[Number(answerKey) - 1]);
  }
  if (letters.includes(answerKey) && labels.every((l) => /^[1-9]$/.test(l))) {
    return labels.indexOf(String(letters.indexOf(answerKey) + 1));
  }
  return -1;
}

/** HellaSwag in llama.cpp's `--hellaswag` format: 6 lines per item (context, gold 0-3, four endings). */
export async function readHellaswag(txtFile: string): Promise<HellaswagItem[]> {
  const lines = splitLines(await readText(txtFile));
  if (lines.length === 0) throw new EvalDataError(txtFile, null, 'no items');
  if (lines.length % 6 !== 0) {
    throw new EvalDataError(
      txtFile,
      lines.length,
      `has ${lines.length} lines, not a multiple of 6 (context, label, 4 endings per item)`,
    );
  }
  const items: HellaswagItem[] = [];
  for (let at = 0; at < lines.length; at += 6) {
    const context = lines[at];
    if (context.trim() === '') throw new EvalDataError(txtFile, at + 1, 'empty context line');
    const labelText = lines[at + 1].trim();
    if (!/^[0-3]$/.test(labelText)) {
      throw new EvalDataError(txtFile, at + 2, `expected a gold label 0-3, found ${JSON.stringify(labelText)}`);
    }
    items.push({ context, endings: lines.slice(at + 2, at + 6), label: Number(labelText) });
  }
  return items;
}

/** BoolQ JSONL: `{"question","passage","idx","label"}`, label true/false as a boolean, string or 0/1. */
export async function readBoolq(jsonlFile: string): Promise<BoolqItem[]> {
  return (await readJsonl(jsonlFile)).map(({ value, line }) => {
    const raw = value.label;
    let label: boolean;
    if (raw === true || raw === 'true' || raw === 1) label = true;
    else if (raw === false || raw === 'false' || raw === 0) label = false;
    else throw new EvalDataError(jsonlFile, line, `field "label" should be true or false, found ${describe(raw)}`);
    return {
      question: stringField(value, 'question', jsonlFile, line),
      passage: stringField(value, 'passage', jsonlFile, line),
      label,
      idx: typeof value.idx === 'number' ? value.idx : null,
    };
  });
}
