import { afterAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  EvalDataError,
  readArc,
  readBoolq,
  readHellaswag,
  readPiqa,
  readTextFile,
} from '../lib/eval/data.js';
import {
  arcRequests,
  boolqRequests,
  hellaswagPreprocess,
  hellaswagRequests,
  piqaRequests,
  scoreItem,
  scoreMultipleChoice,
  type MultipleChoiceRequest,
} from '../lib/eval/requests.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');
const hasShared = fs.existsSync(shared);
const data = (rel: string) => path.join(shared, 'data', rel);

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'wina-eval-data-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

function fixture(name: string, content: string | Uint8Array): string {
  const file = path.join(scratch, name);
  fs.writeFileSync(file, content);
  return file;
}

async function failure(promise: Promise<unknown>): Promise<EvalDataError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(EvalDataError);
  return error as EvalDataError;
}

describe.skipIf(!hasShared)('evaluation sets in ../shared/data (needs ../shared)', () => {
  it('reads PIQA validation: 1838 items with 0/1 labels', async () => {
    const items = await readPiqa(data('piqa/valid.jsonl'), data('piqa/valid-labels.lst'));
    expect(items.length).toBe(1838);
    expect(items[0].goal).toBe("How do I ready a guinea pig cage for it's new occupants?");
    expect(items[0].label).toBe(0);
    expect(items[1].label).toBe(1);
    const requests = piqaRequests(items);
    expect(requests[0].context).toBe("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:");
    expect(requests[0].choices[0]).toBe(' ' + items[0].sol1);
    expect(requests[0].choices.length).toBe(2);
  });

  it('reads ARC-Easy (2376) and ARC-Challenge (1170), letter and digit answer keys', async () => {
    const easy = await readArc(data('arc/ARC-Easy-Test.jsonl'));
    const challenge = await readArc(data('arc/ARC-Challenge-Test.jsonl'));
    expect(easy.length).toBe(2376);
    expect(challenge.length).toBe(1170);
    for (const item of [...easy, ...challenge]) {
      expect(item.choices[item.gold].label).toBe(item.answerKey);
    }
    const digits = easy.filter((i) => /^[0-9]$/.test(i.answerKey));
    expect(digits.length).toBeGreaterThan(50);
    expect(easy.some((i) => i.choices.length === 5)).toBe(true);
    const [first] = arcRequests(easy);
    expect(first.context).toBe(
      'Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:',
    );
    expect(first.choices[0]).toBe(' Sunlight is the source of energy for nearly all ecosystems.');
    expect(first.gold).toBe(0);
  });

  it('reads HellaSwag validation: 10042 items of 4 endings', async () => {
    const items = await readHellaswag(data('hellaswag/hellaswag_val_full.txt'));
    expect(items.length).toBe(10042);
    expect(items[0]).toEqual({
      context: 'Roof shingle removal: A man is sitting on a roof. he',
      endings: [
        'is using wrap to wrap a pair of skis.',
        'is ripping level tiles off.',
        "is holding a rubik's cube.",
        'starts pulling up roofing on a roof.',
      ],
      label: 3,
    });
    const requests = hellaswagRequests(items);
    expect(requests[0].choices[3]).toBe(' starts pulling up roofing on a roof.');
    // The file is already preprocessed; lm-eval's preprocess leaves nearly every context unchanged.
    const changed = items.filter((it) => hellaswagPreprocess(it.context) !== it.context).length;
    expect(changed / items.length).toBeLessThan(0.01);
  });

  it('reads BoolQ validation: 3270 items, 2033 true', async () => {
    const items = await readBoolq(data('boolq/val.jsonl'));
    expect(items.length).toBe(3270);
    expect(items.filter((i) => i.label).length).toBe(2033);
    const [first] = boolqRequests(items);
    expect(first.context.startsWith('Ethanol fuel -- All biomass')).toBe(true);
    expect(first.context.endsWith('\nQuestion: does ethanol take more energy make that produces?\nAnswer:')).toBe(true);
    expect(first.choices).toEqual([' no', ' yes']);
    expect(first.gold).toBe(items[0].label ? 1 : 0);
  });

  it('reads WikiText-2 with CRLF line ends normalised, and tiny-en valid', async () => {
    const wiki = await readTextFile(data('wikitext-2-raw/wiki.test.raw'));
    expect(wiki.text).not.toContain('\r');
    expect(wiki.lines.length).toBe(2891);
    expect(wiki.lines[0].trim()).toBe('= Robert Boulter =');
    const tiny = await readTextFile(data('tiny-en-valid/valid.txt'));
    expect(tiny.lines.length).toBe(1101);
  });
});

describe('readers on malformed input name the file and line', () => {
  it('PIQA: bad JSON, missing field, bad label, count mismatch', async () => {
    const labels = fixture('labels.lst', '0\n1\n');
    let e = await failure(readPiqa(fixture('bad.jsonl', '{"goal":"g","sol1":"a","sol2":"b"}\n{"goal": oops}\n'), labels));
    expect(e.line).toBe(2);
    expect(e.message).toMatch(/bad\.jsonl:2: invalid JSON/);
    e = await failure(readPiqa(fixture('nosol.jsonl', '{"goal":"g","sol1":"a","sol2":"b"}\n{"goal":"g","sol1":"a"}\n'), labels));
    expect(e.message).toMatch(/nosol\.jsonl:2: field "sol2" should be a string, found nothing/);
    const good = fixture('good.jsonl', '{"goal":"g","sol1":"a","sol2":"b"}\n{"goal":"g","sol1":"a","sol2":"b"}\n');
    e = await failure(readPiqa(good, fixture('badlabel.lst', '0\n2\n')));
    expect(e.message).toMatch(/badlabel\.lst:2: expected 0 or 1/);
    e = await failure(readPiqa(good, fixture('short.lst', '0\n')));
    expect(e.message).toMatch(/short\.lst: has 1 labels but .*good\.jsonl has 2 items/);
    expect(await readPiqa(good, labels)).toEqual([
      { goal: 'g', sol1: 'a', sol2: 'b', label: 0 },
      { goal: 'g', sol1: 'a', sol2: 'b', label: 1 },
    ]);
  });

  it('ARC: answer key not among the labels; digit key mapped onto letter labels', async () => {
    const row = (key: string, labels = ['A', 'B', 'C']) =>
      JSON.stringify({
        id: 'x',
        question: { stem: 'Q?', choices: labels.map((l, i) => ({ label: l, text: `t${i}` })) },
        answerKey: key,
      });
    const e = await failure(readArc(fixture('arc-bad.jsonl', `${row('A')}\n${row('E')}\n`)));
    expect(e.message).toMatch(/arc-bad\.jsonl:2: answerKey "E" is not one of the labels A, B, C/);
    const items = await readArc(fixture('arc-mixed.jsonl', `${row('2')}\n${row('C', ['1', '2', '3'])}\n${row('3', ['1', '2', '3'])}\n`));
    expect(items.map((i) => i.gold)).toEqual([1, 2, 2]);
    const noChoices = await failure(readArc(fixture('arc-nochoice.jsonl', '{"question":{"stem":"Q","choices":[]},"answerKey":"A"}\n')));
    expect(noChoices.message).toMatch(/arc-nochoice\.jsonl:1: .*at least 2 choices/);
  });

  it('HellaSwag: truncated item and bad gold label', async () => {
    const item = 'Ctx: something\n2\na\nb\nc\nd\n';
    let e = await failure(readHellaswag(fixture('hs-short.txt', item + 'Ctx: more\n1\na\n')));
    expect(e.message).toMatch(/hs-short\.txt:9: has 9 lines, not a multiple of 6/);
    e = await failure(readHellaswag(fixture('hs-label.txt', item + 'Ctx: more\nx\na\nb\nc\nd\n')));
    expect(e.line).toBe(8);
    expect(e.message).toMatch(/expected a gold label 0-3, found "x"/);
    expect(await readHellaswag(fixture('hs-ok.txt', item.replaceAll('\n', '\r\n')))).toEqual([
      { context: 'Ctx: something', endings: ['a', 'b', 'c', 'd'], label: 2 },
    ]);
  });

  it('BoolQ: label that is not a boolean', async () => {
    const e = await failure(
      readBoolq(fixture('boolq.jsonl', '{"question":"q","passage":"p","label":"true"}\n{"question":"q","passage":"p","label":"maybe"}\n')),
    );
    expect(e.message).toMatch(/boolq\.jsonl:2: field "label" should be true or false/);
  });

  it('text files: invalid UTF-8 names its line; an empty file is refused', async () => {
    const bytes = new Uint8Array([...Buffer.from('fine\nstill fine\nbad '), 0xc3, 0x28, 0x0a]);
    const e = await failure(readTextFile(fixture('bad-utf8.txt', bytes)));
    expect(e.message).toMatch(/bad-utf8\.txt:3: not valid UTF-8/);
    await failure(readTextFile(fixture('empty.txt', '\n\n')));
    expect((await readTextFile(fixture('crlf.txt', 'a\r\nb\r\n'))).lines).toEqual(['a', 'b']);
  });
});

describe('lm-eval prompts and scoring', () => {
  it('builds the BoolQ and HellaSwag prompts with lm-eval preprocessing', () => {
    expect(boolqRequests([{ question: 'is it', passage: 'T -- text', label: false, idx: 0 }])[0]).toEqual({
      context: 'T -- text\nQuestion: is it?\nAnswer:',
      choices: [' no', ' yes'],
      gold: 0,
    });
    // Same order as lm-eval's Python (strip first), so a removed trailing tag leaves its space.
    expect(hellaswagPreprocess('  Home: How to x [title] Do y. [step] Then  z [header] ')).toBe('Home: How to x. Do y. Then z ');
  });

  it('acc_norm divides by the answer length and can disagree with acc', () => {
    // Choice 1 is longer: lower total log-likelihood, higher per character.
    const requests: MultipleChoiceRequest[] = [
      { context: 'Q1', choices: [' ab', ' abcdefgh'], gold: 1 },
      { context: 'Q2', choices: [' yes', ' no'], gold: 0 },
    ];
    const table: Record<string, number> = {
      'Q1| ab': -4, // -2 per char
      'Q1| abcdefgh': -8, // -1 per char
      'Q2| yes': -3, // -1 per char
      'Q2| no': -2.5, // -1.25 per char
    };
    const calls: string[] = [];
    const loglik = (context: string, continuation: string) => {
      calls.push(`${context}|${continuation}`);
      return table[`${context}|${continuation}`];
    };
    expect(scoreMultipleChoice(requests, loglik)).toEqual({ acc: 0, accNorm: 1, count: 2 });
    expect(calls).toEqual(Object.keys(table));
    expect(scoreItem(requests[0], [-4, -8])).toEqual({ acc: 0, acc_norm: 1 });
    expect(scoreMultipleChoice(requests[1], [-3, -2.5])).toEqual({ acc: 0, acc_norm: 1 });
  });

  it('counts code points (chars) by default and UTF-8 bytes on request; ties go to the first choice', () => {
    // "é" is 1 char and 2 bytes: per char " é" = -2 beats " ab" = -2.5; per byte -1 vs -1.25.
    const request = { context: 'c', choices: [' ab', ' é'], gold: 1 };
    expect(scoreItem(request, [-5, -2])).toEqual({ acc: 1, acc_norm: 1 });
    const tricky = { context: 'c', choices: [' éé', ' abc'], gold: 0 };
    // per char: -3/2 = -1.5 vs -4.4/3 = -1.47 -> choice 1; per byte: -3/4 = -0.75 vs -1.47 -> choice 0
    expect(scoreItem(tricky, [-3, -4.4]).acc_norm).toBe(0);
    expect(scoreItem(tricky, [-3, -4.4], { lengthUnit: 'bytes' }).acc_norm).toBe(1);
    expect(scoreItem({ context: 'c', choices: [' a', ' b'], gold: 0 }, [-1, -1])).toEqual({ acc: 1, acc_norm: 1 });
    expect(() => scoreItem(request, [-1])).toThrow(RangeError);
    expect(() => scoreMultipleChoice([], () => 0)).toThrow(RangeError);
  });
});
