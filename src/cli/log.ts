// The command's log file: the Temporal SDK's and its Rust core's lines go there, never to the terminal,
// whose stderr is for the command's own messages (docs/cli.md, "Logs and stuck workflows").
import { appendFileSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';
import { commandLogFile } from '../embedded/paths';

export const LOG_LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The level `--log-level` set (through NOISESEARCH_LOG_LEVEL), else `fallback`; a level it does not know is the fallback too. */
export function commandLogLevel(fallback: LogLevel = 'INFO'): LogLevel {
  const asked = process.env.NOISESEARCH_LOG_LEVEL?.trim().toUpperCase();
  return (LOG_LEVELS as readonly string[]).includes(asked ?? '') ? (asked as LogLevel) : fallback;
}

/** Errors as their name, message and stack (JSON.stringify would write `{}`); a cycle as a marker, not a throw. */
function metaJson(meta: Record<string, unknown>): string {
  const seen = new WeakSet<object>();
  return JSON.stringify(meta, (_key, value: unknown) => {
    if (typeof value === 'bigint') return value.toString();
    if (value instanceof Error) return { name: value.name, message: value.message, stack: value.stack };
    if (typeof value === 'object' && value !== null) {
      if (seen.has(value)) return '[cycle]';
      seen.add(value);
    }
    return value;
  });
}

let folderMade = false;
/** Whether this process wrote to the log: only then has it details to point at. */
let wroteEntries = false;

/**
 * Appends one entry: ISO time, level, message, and its meta as JSON. Synchronous, so that a line logged just
 * before `process.exit` is not lost; a log that cannot be written never fails the command.
 */
export function writeLogEntry(level: string, message: string, meta?: Record<string, unknown>, time = new Date()): void {
  const file = commandLogFile();
  try {
    if (!folderMade) mkdirSync(path.dirname(file), { recursive: true });
    folderMade = true;
    const details = meta && Object.keys(meta).length > 0 ? ` ${metaJson(meta)}` : '';
    appendFileSync(file, `${time.toISOString()} ${level.padEnd(5)} ${message.replace(/\n/g, '\\n')}${details}\n`);
    wroteEntries = true;
  } catch {
    // A read-only or full state folder: the command's own output still says what matters.
  }
}

let hinted = false;

/**
 * ` (details: LOG)` the first time a command says something went wrong, '' afterwards: the log's path is
 * worth one mention per command, not one per line. '' as well when this process logged nothing (a command
 * that never talked to Temporal through the SDK's worker runtime): the log has nothing on its trouble.
 */
export function logHint(): string {
  if (hinted || !wroteEntries) return '';
  hinted = true;
  return ` (details: ${commandLogFile()})`;
}
