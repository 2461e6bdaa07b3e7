#!/usr/bin/env node
// The `wina` command. The TypeScript sources compile to dist/ (npm ci runs `prepare`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  process.stderr.write('wina: dist/ is missing; run `npm run build:ts` (or `npm ci`, which runs it) first.\n');
  process.exit(1);
}
const { main } = await import(cli.href);
await main(process.argv);
