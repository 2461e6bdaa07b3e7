// `wina` command line: generate, bench, calibrate, transform, eval.
import { Command, InvalidArgumentError, Option } from 'commander';

import { loadModel, DEFAULT_MODEL_PATH, type LoadOptions } from './model.js';
import type { DtypeName } from './tensor.js';
import type { Method, Selection, SparsityOptions } from './sparsity/plan.js';
import { WinaLoadError } from './errors.js';
import { generateWithStats, type GenerationStats } from './generate.js';

function int(name: string, min = 0) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

function float(name: string, min = -Infinity, max = Infinity) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
    return n;
  };
}

/** Options shared by every command that loads a model. */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option('--model <path>', 'Hugging Face folder or .gguf file (default: the embedded tiny-en-llama)')
    .addOption(new Option('--dtype <dtype>', 'weight dtype in memory').choices(['f32', 'bf16', 'f16']))
    .option('--threads <n>', 'compute threads (default: all cores)', int('threads', 1))
    .option('--calibration <file>', 'calibration file from `wina calibrate` (thresholds, greedy levels)');
}

export function addSparsityOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--method <method>', 'sparse activation method').choices(['dense', 'teal', 'wina', 'wina-all']).default('dense'))
    .option('--sparsity <s>', 'fraction of inputs dropped per matrix', float('sparsity', 0, 0.99), 0.5)
    .addOption(new Option('--select <mode>', 'exact top-k or calibrated thresholds').choices(['topk', 'threshold']))
    .option('--greedy', 'per-matrix levels from the calibration\'s greedy table')
    .addOption(new Option('--prefill <mode>', 'sparsify prompt tokens too').choices(['dense', 'sparse', 'eval']).default('dense'));
}

export function sparsityFrom(o: Record<string, unknown>): SparsityOptions | null {
  if (!o.method || o.method === 'dense') return null;
  return {
    method: o.method as Method,
    sparsity: o.sparsity as number,
    select: o.select as Selection | undefined,
    greedy: Boolean(o.greedy),
    prefill: o.prefill as SparsityOptions['prefill'],
  };
}

export function loadOptionsFrom(o: Record<string, unknown>): LoadOptions {
  return {
    dtype: o.dtype as DtypeName | undefined,
    threads: o.threads as number | undefined,
    calibration: o.calibration as string | undefined,
  };
}

async function runGenerate(promptArg: string | undefined, o: Record<string, unknown>): Promise<void> {
  const prompt = promptArg ?? 'The President said';
  const model = await loadModel((o.model as string | undefined) ?? DEFAULT_MODEL_PATH, { ...loadOptionsFrom(o), sparsity: sparsityFrom(o) ?? undefined });
  try {
    model.plan(model.defaultSparsity); // validates the sparsity options before any output
  } catch (e) {
    model.dispose();
    throw e;
  }
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  try {
    const gen = {
      maxTokens: o.maxTokens as number,
      temperature: o.temperature as number | undefined,
      topK: o.topK as number | undefined,
      topP: o.topP as number | undefined,
      minP: o.minP as number | undefined,
      repetitionPenalty: o.repetitionPenalty as number | undefined,
      seed: o.seed as number | undefined,
      stop: o.stop as string[] | undefined,
      chat: Boolean(o.chat),
      signal: controller.signal,
    };
    if (o.json) {
      const r = await model.complete(prompt, gen);
      process.stdout.write(JSON.stringify({ prompt, text: r.text, tokenIds: r.tokenIds, finishReason: r.finishReason, stats: r.stats,
        model: model.path, dtype: model.dtype, sparsity: sparsityFrom(o) }) + '\n');
      return;
    }
    if (!o.chat) process.stdout.write(prompt);
    let done: { finishReason: string; stats: GenerationStats } | null = null;
    for await (const piece of generateWithStats(model, prompt, gen, (r) => (done = r))) process.stdout.write(piece.text);
    process.stdout.write('\n');
    const d = done as unknown as { finishReason: string; stats: GenerationStats };
    process.stderr.write(`[${d.stats.promptTokens} prompt tokens, ${d.stats.generatedTokens} generated, ` +
      `prefill ${d.stats.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${d.stats.decodeTokensPerSecond.toFixed(1)} tok/s, ${d.finishReason}]\n`);
  } finally {
    process.off('SIGINT', onSigint);
    model.dispose();
  }
}

export function buildProgram(): Command {
  const program = new Command('wina')
    .description('Fast CPU inference for Llama-family models with training-free sparse activation (WINA)')
    .showHelpAfterError();

  const gen = program.command('generate')
    .description('generate text (default model: the embedded tiny-en-llama)')
    .argument('[prompt]', 'prompt text', undefined)
    .option('--max-tokens <n>', 'tokens to generate', int('max-tokens'), 64)
    .option('--temperature <t>', '0 = greedy', float('temperature', 0))
    .option('--top-k <k>', 'sample from the k most likely tokens', int('top-k', 1))
    .option('--top-p <p>', 'nucleus sampling', float('top-p', 0, 1))
    .option('--min-p <p>', 'drop tokens below p x the top probability', float('min-p', 0, 1))
    .option('--repetition-penalty <r>', 'penalise repeated tokens', float('repetition-penalty', 0))
    .option('--seed <s>', 'random seed', int('seed'))
    .option('--stop <strings...>', 'stop strings')
    .option('--chat', 'format the prompt with the model\'s chat template')
    .option('--json', 'print one JSON object with the text and statistics');
  addSparsityOptions(addModelOptions(gen)).action(runGenerate);

  const bench = program.command('bench').description('benchmarks');
  const benchDecode = bench.command('decode')
    .description('prefill and decode speed on a checkpoint or a random-weight model of a real shape')
    .option('--shape <name>', 'llama-3.2-1b | qwen2.5-0.5b | llama-2-7b | llama-3-8b | mistral-7b')
    .option('--prompt-tokens <n>', 'prompt length', int('prompt-tokens', 1), 64)
    .option('--tokens <n>', 'tokens to decode', int('tokens', 1), 32)
    .option('--repeats <n>', 'alternating repeats', int('repeats', 1), 3)
    .option('--compare <engine>', 'also run llama.cpp (node-llama-cpp) on the same weights')
    .option('--cache-dir <dir>', 'where random-weight models are written')
    .option('--transformed', 'with --shape: a `wina transform`-style model (untied, residual rotations)')
    .option('--json', 'one JSON object per line');
  addSparsityOptions(addModelOptions(benchDecode)).action(async (o) => {
    const { runBenchDecode } = await import('./bench/decode.js');
    await runBenchDecode(o);
  });
  bench.command('kernels')
    .description('kernel microbenchmark through the addon (the native one: npm run bench:native)')
    .option('--json', 'one JSON object per case')
    .option('--quick', 'fewer shapes and repeats')
    .option('--threads <list>', 'comma-separated thread counts', '1,2')
    .action(async (o) => {
      const { runBenchKernels } = await import('./bench/kernels.js');
      await runBenchKernels(o);
    });

  const cal = program.command('calibrate')
    .description('score distributions and thresholds (and the greedy allocation) on calibration text')
    .requiredOption('--text <file>', 'calibration text file')
    .requiredOption('--out <file>', 'output calibration file (JSON)')
    .addOption(new Option('--method <method>', 'method whose greedy table to build').choices(['teal', 'wina', 'wina-all']).default('wina'))
    .option('--greedy', 'also run the block-wise greedy allocation')
    .option('--tokens <n>', 'calibration tokens', int('tokens', 16), 8192)
    .option('--seq-len <n>', 'tokens per sequence', int('seq-len', 2), 256)
    .option('--target <s>', 'greedy: highest layer sparsity to reach', float('target', 0, 0.99), 0.7)
    .option('--step <s>', 'greedy: base step size', float('step', 0.001, 0.5), 0.025);
  addModelOptions(cal).action(async (o) => {
    const { runCalibrate } = await import('./sparsity/calibrate-cli.js');
    await runCalibrate(o);
  });

  const tr = program.command('transform')
    .description('write the column-orthogonalised checkpoint of the paper (rotations folded into the weights)')
    .requiredOption('--out <dir>', 'output folder')
    .addOption(new Option('--dtype <dtype>', 'output dtype (default: the source\'s)').choices(['f32', 'bf16', 'f16']))
    .option('--model <path>', 'source checkpoint (default: the embedded model)');
  tr.action(async (o) => {
    const { runTransform } = await import('./sparsity/transform-cli.js');
    await runTransform(o);
  });

  const ev = program.command('eval')
    .description('perplexity / multiple-choice accuracy / KL versus dense, swept over methods and sparsities')
    .addOption(new Option('--task <task>', 'task').choices(['ppl', 'piqa', 'arc-easy', 'arc-challenge', 'hellaswag', 'boolq']).makeOptionMandatory())
    .requiredOption('--data <file>', 'data file')
    .option('--method <list>', 'comma-separated methods', 'dense,teal,wina')
    .option('--sparsity <list>', 'comma-separated sparsities', '0,0.25,0.4,0.5,0.65')
    .addOption(new Option('--select <mode>', 'selection').choices(['topk', 'threshold']).default('topk'))
    .option('--greedy', 'per-matrix greedy levels from the calibration')
    .option('--limit <n>', 'items (or ppl windows)', int('limit', 1))
    .option('--seq-len <n>', 'ppl window length', int('seq-len', 8))
    .option('--stride <n>', 'ppl window stride', int('stride', 1))
    .option('--out <prefix>', 'write <prefix>.md, <prefix>.json and <prefix>.svg')
    .option('--json', 'print the results as JSON');
  addModelOptions(ev).action(async (o) => {
    const { runEval } = await import('./eval/cli.js');
    await runEval(o);
  });
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    if (e instanceof WinaLoadError || e instanceof RangeError || e instanceof TypeError) {
      process.stderr.write(`wina: ${(e as Error).message}\n`);
      process.exitCode = 1;
      return;
    }
    throw e;
  }
}
