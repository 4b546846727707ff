// Waiting out a Temporal that is away: one status line on stderr, probes with backoff, and the work taken up
// again when it answers. Durable work never depends on this process, so giving up (--wait) or Ctrl-C only
// stops the waiting: the command says how to reattach, and exits 3 or 130.
import { Connection } from '@temporalio/client';
import type { TemporalSecurity } from '../temporal/connection';
import { quietIpServerNameWarning } from '../fleet/tls';
import { UsageError } from './args';
import { ServiceUnreachableError } from './errors';

const UNITS_MS: Record<string, number> = { '': 1_000, s: 1_000, m: 60_000, h: 3_600_000 };

/** --wait's value in milliseconds: `30`, `30s`, `5m`, `1h`, `0`; Infinity when not given. */
export function parseWait(value: string | undefined): number {
  if (value === undefined) return Number.POSITIVE_INFINITY;
  const match = /^(\d+(?:\.\d+)?)(s|m|h)?$/.exec(value.trim());
  if (!match) throw new UsageError(`--wait: ${JSON.stringify(value.slice(0, 40))} is not a duration; want e.g. 0, 30, 30s, 5m or 1h`);
  return Number(match[1]) * UNITS_MS[match[2] ?? ''];
}

/** gRPC's UNAVAILABLE: the server could not be reached (refused, reset, no route). */
const GRPC_UNAVAILABLE = 14;
const UNREACHABLE_MESSAGE = /UNAVAILABLE|ECONNREFUSED|ECONNRESET|tcp connect error|Connection refused|No connection established|Failed to connect before the deadline|is Temporal's frontend running/i;

/** Whether `error` (or one of its causes) says Temporal could not be reached, rather than that it refused the call. */
export function isUnreachable(error: unknown): boolean {
  for (let e = error as { code?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; e = e.cause as typeof e, depth++) {
    if (e.code === GRPC_UNAVAILABLE) return true;
    if (typeof e.message === 'string' && UNREACHABLE_MESSAGE.test(e.message)) return true;
  }
  return false;
}

/** Whether a fresh connection to the Temporal at `address` answers, within two seconds. */
export async function temporalAnswers(address: string, security: TemporalSecurity = {}): Promise<boolean> {
  // As connectTemporal does: Node's warning on an IP address as TLS server name is not the user's to read.
  if (security.tls || security.apiKey) quietIpServerNameWarning();
  try {
    const connection = await Connection.connect({ address, ...security, connectTimeout: 2_000 });
    await connection.close();
    return true;
  } catch {
    return false;
  }
}

/** The user pressed Ctrl-C while the command waited on durable work. */
export class Interrupted extends Error {
  constructor() {
    super('interrupted');
    this.name = 'Interrupted';
  }
}

/** Ctrl-C as a promise that rejects with Interrupted, and a signal; dispose() stops listening. */
export function interruption(): { signal: AbortSignal; promise: Promise<never>; dispose(): void } {
  const controller = new AbortController();
  let reject: (error: Error) => void = () => {};
  const promise = new Promise<never>((_, r) => (reject = r));
  promise.catch(() => {});
  const onSigint = () => {
    controller.abort();
    reject(new Interrupted());
  };
  process.on('SIGINT', onSigint);
  return { signal: controller.signal, promise, dispose: () => process.off('SIGINT', onSigint) };
}

export function seconds(ms: number): string {
  return `${Math.round(ms / 1000)} s`;
}

function clock(at: number): string {
  return new Date(at).toTimeString().slice(0, 8);
}

export interface OutageOptions {
  /** What is away, as the status line names it ("Temporal"). */
  what: string;
  address: string;
  /** What brings it back, for the status line ("restart it: noisesearch server start"). */
  hint: string;
  /** How long to wait before giving up (Infinity: for ever). */
  waitMs: number;
  /** The end of the give-up line: that the work goes on and how to reattach. */
  reattach: string;
  /** Whether it answers again. */
  probe: () => Promise<boolean>;
  signal?: AbortSignal;
  out?: NodeJS.WriteStream;
}

const FIRST_PROBE_MS = 500;
const LAST_PROBE_MS = 5_000;

/**
 * One outage at a time, shared by every caller that found Temporal away (the result, the progress queries,
 * the worker): they all wait on the same status line and go on together when it answers.
 */
export class Outage {
  private waiting: Promise<void> | null = null;
  private gaveUp: ServiceUnreachableError | null = null;
  private rejectFailure: (error: Error) => void = () => {};
  /** Rejects when the wait is given up (--wait) or interrupted: race the work against it. */
  readonly failure: Promise<never>;

  constructor(private readonly options: OutageOptions) {
    this.failure = new Promise<never>((_, reject) => (this.rejectFailure = reject));
    this.failure.catch(() => {});
  }

  /** Calls `call`, waiting out every outage it meets; other errors go to the caller. */
  async retrying<T>(call: () => Promise<T>): Promise<T> {
    for (;;) {
      try {
        return await call();
      } catch (error) {
        if (!isUnreachable(error) || this.options.signal?.aborted) throw error;
        await this.waitUntilBack();
      }
    }
  }

  /**
   * After a call failed in a way that may or may not be an outage (a deadline, a retry still going on in the
   * client): probes, and waits if Temporal is away. Never throws; the work's own wait reports giving up.
   */
  async checkAfter(error: unknown): Promise<void> {
    if (this.options.signal?.aborted) return;
    if (isUnreachable(error) || !(await this.options.probe())) await this.waitUntilBack().catch(() => {});
  }

  /** Like retrying, after a probe: a connection to a Temporal that is away fails only at the SDK's 10 s deadline. */
  async connecting<T>(connect: () => Promise<T>): Promise<T> {
    if (!(await this.options.probe())) {
      // A Temporal that refuses this client (its TLS, its key) fails the probe too, and is no outage to wait
      // out: the connection's own error tells the two apart (src/temporal/connection.ts) and is thrown.
      const attempt = await connect().then((connection) => ({ connection }), (error: unknown) => ({ error }));
      if ('connection' in attempt) return attempt.connection;
      if (!isUnreachable(attempt.error)) throw attempt.error;
      await this.waitUntilBack();
    }
    return this.retrying(connect);
  }

  /** Resolves when Temporal answers again; throws ServiceUnreachableError past --wait, Interrupted on Ctrl-C. */
  waitUntilBack(): Promise<void> {
    if (this.gaveUp) return Promise.reject(this.gaveUp);
    this.waiting ??= this.wait().finally(() => (this.waiting = null));
    return this.waiting;
  }

  private async wait(): Promise<void> {
    const { what, address, hint, waitMs, reattach, probe, signal } = this.options;
    const out = this.options.out ?? process.stderr;
    const since = Date.now();
    const line = () => `waiting for ${what} at ${address} since ${clock(since)}, ${seconds(Date.now() - since)} (${hint})`;
    const tty = Boolean(out.isTTY);
    // A log gets the line once, without a count of seconds that would be stale as soon as it is read.
    out.write(tty ? `\r\x1b[2K${line()}` : `waiting for ${what} at ${address} since ${clock(since)} (${hint})\n`);
    const ticker = tty ? setInterval(() => out.write(`\r\x1b[2K${line()}`), 1_000) : null;
    try {
      for (let delay = FIRST_PROBE_MS; ; delay = Math.min(delay * 2, LAST_PROBE_MS)) {
        const left = since + waitMs - Date.now();
        await pause(Math.max(0, Math.min(delay, left)), signal);
        if (signal?.aborted) throw this.fail(new Interrupted());
        if (await probe()) break;
        if (Date.now() - since >= waitMs) {
          throw this.fail(new ServiceUnreachableError(`${what} at ${address} unreachable for ${seconds(Date.now() - since)} (--wait); ${reattach}`));
        }
      }
    } finally {
      if (ticker) clearInterval(ticker);
      if (tty) out.write('\r\x1b[2K');
    }
    out.write(`${what} at ${address} is back after ${seconds(Date.now() - since)}\n`);
  }

  private fail(error: Error): Error {
    if (error instanceof ServiceUnreachableError) this.gaveUp = error;
    this.rejectFailure(error);
    return error;
  }
}

function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
