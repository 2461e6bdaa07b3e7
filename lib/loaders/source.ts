// Random-access byte sources for the header parsers. Parsers only ever ask for byte ranges, so the
// same code reads a file on disk (positional reads, never the whole file) or a buffer in memory (the
// fuzz tests mutate headers thousands of times without touching the disk).

import * as fs from 'node:fs';
import { WinaLoadError } from '../errors.js';

export interface ByteSource {
  /** Used in error messages: the file path. */
  readonly name: string;
  readonly size: number;
  /** Exactly `length` bytes at `position`; callers keep position + length <= size. */
  read(position: number, length: number): Uint8Array;
}

const MAX_READ = 1 << 30;

/** Reads `length` bytes at `position` of an open file into `into` (or a new buffer). */
export function readFully(fd: number, file: string, position: number, length: number, into?: Uint8Array): Uint8Array {
  const out = into ?? Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    // One read call is capped below 2 GiB by Node; a 128k-vocab F32 embedding is larger.
    const n = fs.readSync(fd, out, done, Math.min(length - done, MAX_READ), position + done);
    if (n === 0) break;
    done += n;
  }
  if (done < length) {
    throw new WinaLoadError({
      file,
      expected: `${length} bytes at offset ${position}`,
      found: `${done} bytes (the file shrank while reading)`,
      fixes: ['Make sure no other process is writing the file while it is loaded.'],
    });
  }
  return out;
}

/** A file opened for positional reads; call close() when done. */
export interface FileSource extends ByteSource {
  close(): void;
}

export function openFileSource(file: string): FileSource {
  const fd = openForReading(file);
  const size = fs.fstatSync(fd).size;
  return {
    name: file,
    size,
    read: (position, length) => readFully(fd, file, position, length),
    close: () => fs.closeSync(fd),
  };
}

export function openForReading(file: string): number {
  try {
    return fs.openSync(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'an error';
    throw new WinaLoadError({
      file,
      expected: 'a readable file',
      found: code,
      fixes: ['Check the path and the file permissions.'],
      cause: err,
    });
  }
}

/**
 * An in-memory source. `size` may exceed bytes.length: the rest reads as zeros, which lets a test
 * present a real header followed by gigabytes of "data" without allocating them.
 */
export function bufferSource(name: string, bytes: Uint8Array, size = bytes.length): ByteSource {
  return {
    name,
    size,
    read: (position, length) => {
      const out = new Uint8Array(length);
      if (position < bytes.length) out.set(bytes.subarray(position, Math.min(bytes.length, position + length)));
      return out;
    },
  };
}
