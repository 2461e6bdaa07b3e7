// Zero-shot multiple-choice requests with lm-evaluation-harness' prompts, and their scoring.
//
// Templates, from lm-eval's task YAMLs (target_delimiter " ", so every choice is scored as " " + answer):
//   piqa       doc_to_text "Question: {{goal}}\nAnswer:"                      choices [sol1, sol2]
//   arc_*      doc_to_text "Question: {{question}}\nAnswer:"                  choices choices.text
//   hellaswag  query = preprocess(activity_label + ": " + ctx)              choices preprocess(endings)
//   boolq      doc_to_text "{{passage}}\nQuestion: {{question}}?\nAnswer:"  choices ["no", "yes"]
// One known difference on HellaSwag: lm-eval builds ctx as ctx_a + " " + ctx_b.capitalize(), while the
// llama.cpp-format file stores ctx_a and ctx_b already joined and does not capitalise ctx_b; that split is
// lost, so contexts such as "... on a roof. he" keep the lower case.

import type { ArcItem, BoolqItem, HellaswagItem, PiqaItem } from './data.js';

export interface MultipleChoiceRequest {
  /** The prompt every choice is appended to. */
  context: string;
  /** Continuations exactly as scored, each starting with the target delimiter " ". */
  choices: string[];
  /** Index of the right choice. */
  gold: number;
}

/** lm-eval's target_delimiter: the separator between the context and every answer. */
export const TARGET_DELIMITER = ' ';

function continuations(answers: string[]): string[] {
  return answers.map((a) => TARGET_DELIMITER + a);
}

export function piqaRequests(items: readonly PiqaItem[]): MultipleChoiceRequest[] {
  return items.map((it) => ({
    context: `Question: ${it.goal}\nAnswer:`,
    choices: continuations([it.sol1, it.sol2]),
    gold: it.label,
  }));
}

export function arcRequests(items: readonly ArcItem[]): MultipleChoiceRequest[] {
  return items.map((it) => ({
    context: `Question: ${it.question}\nAnswer:`,
    choices: continuations(it.choices.map((c) => c.text)),
    gold: it.gold,
  }));
}

/**
 * lm-eval's hellaswag `preprocess`: WikiHow's " [title]" becomes ". ", other bracketed tags go, double
 * spaces become single. The llama.cpp-format file is already preprocessed; applying it again is harmless.
 */
export function hellaswagPreprocess(text: string): string {
  return text.trim().replaceAll(' [title]', '. ').replace(/\[.*?\]/g, '').replaceAll('  ', ' ');
}

export function hellaswagRequests(items: readonly HellaswagItem[]): MultipleChoiceRequest[] {
  return items.map((it) => ({
    context: hellaswagPreprocess(it.context),
    choices: continuations(it.endings.map(hellaswagPreprocess)),
    gold: it.label,
  }));
}

export function boolqRequests(items: readonly BoolqItem[]): MultipleChoiceRequest[] {
  return items.map((it) => ({
    context: `${it.passage}\nQuestion: ${it.question}?\nAnswer:`,
    choices: continuations(['no', 'yes']),
    gold: it.label ? 1 : 0,
  }));
}

// ---------------------------------------------------------------------------------------------------------
// Scoring
// ---------------------------------------------------------------------------------------------------------

export interface ScoreOptions {
  /**
   * Unit of the answer length that acc_norm divides by. 'chars' (default) is lm-eval's code:
   * `len(choice)` in Python, i.e. Unicode code points of the answer without the target delimiter.
   * 'bytes' uses the answer's UTF-8 byte length instead (the same for ASCII text).
   */
  lengthUnit?: 'chars' | 'bytes';
}

/** Mean accuracy over items (fractions in [0, 1]). */
export interface MultipleChoiceScore {
  acc: number;
  /** Accuracy when each choice's log-likelihood is divided by its answer length (lm-eval's acc_norm). */
  accNorm: number;
  count: number;
}

/** One item's scores under lm-eval's metric names: 1 when the argmax is the gold choice, else 0. */
export interface ItemScore {
  acc: 0 | 1;
  acc_norm: 0 | 1;
}

export type Loglikelihood = (context: string, continuation: string) => number;

const utf8 = new TextEncoder();

function answerLength(continuation: string, unit: 'chars' | 'bytes'): number {
  const answer = continuation.startsWith(TARGET_DELIMITER) ? continuation.slice(TARGET_DELIMITER.length) : continuation;
  if (unit === 'bytes') return utf8.encode(answer).length;
  return Array.from(answer).length; // code points, like Python's len()
}

/** numpy.argmax: the first index of the maximum (NaN is never the maximum here). */
function firstMax(values: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Scores one request from the log-likelihoods of its choices, in order. */
export function scoreItem(request: MultipleChoiceRequest, logliks: readonly number[], options: ScoreOptions = {}): ItemScore {
  const n = request.choices.length;
  if (logliks.length !== n) throw new RangeError(`expected ${n} log-likelihoods (one per choice), got ${logliks.length}`);
  if (!Number.isInteger(request.gold) || request.gold < 0 || request.gold >= n) {
    throw new RangeError(`gold index ${request.gold} is outside the ${n} choices`);
  }
  const unit = options.lengthUnit ?? 'chars';
  const normalised = logliks.map((ll, i) => {
    const length = answerLength(request.choices[i], unit);
    if (length === 0) throw new RangeError(`choice ${i} ${JSON.stringify(request.choices[i])} has an empty answer`);
    return ll / length;
  });
  return {
    acc: firstMax(logliks) === request.gold ? 1 : 0,
    acc_norm: firstMax(normalised) === request.gold ? 1 : 0,
  };
}

/**
 * acc and acc_norm over requests, calling `loglik(context, continuation)` for every choice (the summed
 * log-probability of the continuation's tokens given the context).
 */
export function scoreMultipleChoice(
  requests: readonly MultipleChoiceRequest[],
  loglik: Loglikelihood,
  options?: ScoreOptions,
): MultipleChoiceScore;
/** One request from precomputed log-likelihoods of its choices (same as scoreItem). */
export function scoreMultipleChoice(
  request: MultipleChoiceRequest,
  logliks: readonly number[],
  options?: ScoreOptions,
): ItemScore;
export function scoreMultipleChoice(
  requests: readonly MultipleChoiceRequest[] | MultipleChoiceRequest,
  loglik: Loglikelihood | readonly number[],
  options: ScoreOptions = {},
): MultipleChoiceScore | ItemScore {
  if (!Array.isArray(requests)) {
    if (typeof loglik === 'function') throw new TypeError('a single request needs its log-likelihoods as numbers');
    return scoreItem(requests as MultipleChoiceRequest, loglik, options);
  }
  if (typeof loglik !== 'function') throw new TypeError('scoring a list of requests needs a loglik function');
  const list = requests as readonly MultipleChoiceRequest[];
  if (list.length === 0) throw new RangeError('no requests to score');
  let acc = 0;
  let accNorm = 0;
  for (const r of list) {
    const s = scoreItem(r, r.choices.map((c) => loglik(r.context, c)), options);
    acc += s.acc;
    accNorm += s.acc_norm;
  }
  return { acc: acc / list.length, accNorm: accNorm / list.length, count: list.length };
}
