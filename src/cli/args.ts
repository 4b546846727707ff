// Flag values checked the way a user can act on: one line naming the flag and what would be right. Parsing
// itself (which flags exist, help) is commander's: src/cli/program.ts.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A flag's value as an error quotes it: escaped (a line break shows as \\n) and cut short, so the error stays one line. */
function quoted(value: string): string {
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
}

export function wholeNumber(flag: string, value: string | undefined, options: { min?: number } = {}): number | undefined {
  if (value === undefined) return undefined;
  const min = options.min ?? 0;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) < min) {
    throw new UsageError(`--${flag}: ${quoted(value)} is not a whole number of at least ${min}`);
  }
  return Number(value);
}

export function finiteNumber(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new UsageError(`--${flag}: ${quoted(value)} is not a finite number`);
  return n;
}

export function positiveNumber(flag: string, value: string | undefined, unit: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) throw new UsageError(`--${flag}: ${quoted(value)} is not a number of ${unit} above 0`);
  return n;
}

export function oneOf<T extends string>(flag: string, value: string | undefined, allowed: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!allowed.includes(value as T)) throw new UsageError(`--${flag}: ${quoted(value)} is not one of ${allowed.join(', ')}`);
  return value as T;
}
