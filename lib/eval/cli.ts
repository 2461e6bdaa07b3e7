// `wina eval`: parse the command's options, read the data, run the sweep, print and write the reports.
import cliProgress from 'cli-progress';
import fs from 'node:fs';
import path from 'node:path';

import { loadOptionsFrom } from '../cli.js';
import { loadModel, DEFAULT_MODEL_PATH, type Model } from '../model.js';
import { native, packageRoot } from '../native.js';
import { METHODS, type Method, type Selection } from '../sparsity/plan.js';
import { EvalDataError, readArc, readBoolq, readHellaswag, readPiqa, readTextFile } from './data.js';
import { arcRequests, boolqRequests, hellaswagRequests, piqaRequests, type MultipleChoiceRequest } from './requests.js';
import { markdownTable, reportJson, writeReports, type ReportMeta } from './report.js';
import { runSweep, TASKS, type SweepResult, type Task } from './run.js';

/** "dense,teal,wina" -> methods, refusing unknown names (commander only sees a string). */
export function parseMethods(list: string): Method[] {
  const methods = list.split(',').map((s) => s.trim()).filter(Boolean);
  for (const m of methods) if (!(METHODS as readonly string[]).includes(m)) throw new TypeError(`--method: unknown method '${m}' (expected ${METHODS.join(', ')})`);
  if (methods.length === 0) throw new TypeError('--method: give at least one method');
  return [...new Set(methods)] as Method[];
}

/** "0,0.25,0.5" -> levels in [0, 1). */
export function parseSparsities(list: string): number[] {
  const levels = list.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  for (const s of levels) if (!(s >= 0 && s < 1)) throw new RangeError(`--sparsity: levels must be numbers in [0, 1), got '${list}'`);
  if (levels.length === 0) throw new RangeError('--sparsity: give at least one level');
  return [...new Set(levels)].sort((a, b) => a - b);
}

/** PIQA keeps its labels beside the questions: valid.jsonl -> valid-labels.lst. */
export function piqaLabelsFile(jsonlFile: string): string {
  const labels = jsonlFile.replace(/\.jsonl$/, '') + '-labels.lst';
  if (!fs.existsSync(labels)) throw new TypeError(`--data ${jsonlFile}: PIQA needs its labels file beside it, ${path.basename(labels)} (valid.jsonl -> valid-labels.lst)`);
  return labels;
}

/** The sweep's input for a task: the text for ppl, the lm-eval requests otherwise. */
export async function loadTaskData(task: Task, file: string): Promise<string | MultipleChoiceRequest[]> {
  switch (task) {
    case 'ppl': return (await readTextFile(file)).text;
    case 'piqa': return piqaRequests(await readPiqa(file, piqaLabelsFile(file)));
    case 'arc-easy':
    case 'arc-challenge': return arcRequests(await readArc(file));
    case 'hellaswag': return hellaswagRequests(await readHellaswag(file));
    case 'boolq': return boolqRequests(await readBoolq(file));
  }
}

function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function metaFor(o: Record<string, unknown>, model: Model): ReportMeta {
  return {
    // As the user gave it: an absolute path would record where this machine keeps its files.
    model: (o.model as string | undefined) ?? 'embedded tiny-en-llama',
    data: path.basename(o.data as string),
    versions: { wina: packageVersion(), node: process.version, isa: native.isa(), dtype: model.dtype, threads: String(native.threads()) },
    date: new Date().toISOString(),
  };
}

/** A progress bar on a terminal; nothing when stderr is a pipe or a file. */
function progressBar(label: string): { update(done: number, total: number): void; stop(): void } {
  if (!process.stderr.isTTY) return { update() {}, stop() {} };
  let bar: cliProgress.SingleBar | null = null;
  return {
    update(done, total) {
      if (!bar) {
        bar = new cliProgress.SingleBar({ stream: process.stderr, format: `${label} {bar} {percentage}% | {value}/{total} passes | {eta_formatted}` },
          cliProgress.Presets.shades_classic);
        bar.start(total, 0);
      }
      bar.update(done);
    },
    stop() {
      bar?.stop();
    },
  };
}

/** The `eval` command (options as declared in lib/cli.ts). */
export async function runEval(o: Record<string, unknown>): Promise<void> {
  const task = o.task as Task;
  if (!(TASKS as readonly string[]).includes(task)) throw new TypeError(`--task must be one of ${TASKS.join(', ')}`);
  const methods = parseMethods(String(o.method ?? 'dense,teal,wina'));
  const sparsities = parseSparsities(String(o.sparsity ?? '0,0.25,0.4,0.5,0.65'));
  const dataFile = o.data as string;
  if (!fs.existsSync(dataFile)) throw new TypeError(`--data: ${dataFile} does not exist`);

  let data: string | MultipleChoiceRequest[];
  try {
    data = await loadTaskData(task, dataFile);
  } catch (e) {
    // The command line reports TypeErrors as one line (file:line: what is wrong) instead of a stack.
    if (e instanceof EvalDataError) throw new TypeError(e.message);
    throw e;
  }
  const model = await loadModel((o.model as string | undefined) ?? DEFAULT_MODEL_PATH, loadOptionsFrom(o));
  const bar = progressBar(`eval ${task}`);
  let result: SweepResult;
  try {
    result = await runSweep({
      model, task, data, methods, sparsities,
      select: (o.select as Selection | undefined) ?? 'topk',
      greedy: Boolean(o.greedy),
      limit: o.limit as number | undefined,
      seqLen: o.seqLen as number | undefined,
      stride: o.stride as number | undefined,
      onProgress: (done, total) => bar.update(done, total),
    });
  } finally {
    bar.stop();
    model.dispose();
  }
  const meta = metaFor(o, model);
  if (o.out) writeReports(o.out as string, result, meta);
  process.stdout.write(o.json ? reportJson(result, meta) : markdownTable(result));
}
