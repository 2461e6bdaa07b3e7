// Errors a user can act on. A bad checkpoint produces a WinaLoadError whose message names the file,
// the tensor or field, what was expected and what was found, followed by the fixes to try.

export interface WinaLoadErrorInit {
  /** The file (or folder) that is wrong. */
  file: string;
  /** The tensor or field at fault, when there is one. */
  what?: string;
  expected: string;
  found: string;
  /** Things the user can do about it; appended to the message. */
  fixes?: string[];
  cause?: unknown;
}

export class WinaLoadError extends Error {
  readonly file: string;
  readonly what: string | undefined;
  readonly expected: string;
  readonly found: string;
  readonly fixes: string[] | undefined;

  constructor(init: WinaLoadErrorInit) {
    super(formatLoadError(init), init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'WinaLoadError';
    this.file = init.file;
    this.what = init.what;
    this.expected = init.expected;
    this.found = init.found;
    this.fixes = init.fixes;
  }
}

function formatLoadError(init: WinaLoadErrorInit): string {
  const where = init.what === undefined ? init.file : `${init.file}: ${init.what}`;
  let message = `${where}: expected ${init.expected}, found ${init.found}`;
  if (init.fixes !== undefined && init.fixes.length > 0) {
    message += '\nPossible fixes:\n' + init.fixes.map((fix) => `  - ${fix}`).join('\n');
  }
  return message;
}

/**
 * A short printable form of a value found in a file, for error messages. Values come from untrusted
 * files (a corrupted header may hold a megabyte string), so the text is capped.
 */
export function describeFound(value: unknown, maxChars = 80): string {
  let text: string;
  if (value === undefined) text = 'nothing';
  else if (typeof value === 'bigint') text = `${value}`;
  else if (typeof value === 'string') text = JSON.stringify(value);
  else {
    try {
      text = JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? `${v}` : v)) ?? String(value);
    } catch {
      text = String(value);
    }
  }
  return text.length > maxChars ? `${text.slice(0, maxChars)}...` : text;
}
